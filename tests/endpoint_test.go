package tests

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// serveDaemon is `neonfs serve` run as a process.
type serveDaemon struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startServe(t *testing.T, c volumeCLI, runDir, logPath string) *serveDaemon {
	t.Helper()
	s := launchServe(t, exec.Command(c.bin, "serve", "--data", c.data, "--run-dir", runDir), runDir, logPath)
	waitFor(t, time.Minute, "neonfs serve to answer", func() bool {
		code, _, _ := c.run(t, "endpoint", "list")
		return code == 0
	})
	return s
}

// launchServe starts cmd (a `neonfs serve`) in its own process group,
// output appended to logPath, and stops it and unmounts what it left under
// runDir when the test ends.
func launchServe(t *testing.T, cmd *exec.Cmd, runDir, logPath string) *serveDaemon {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &serveDaemon{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(s.done) }()
	t.Cleanup(func() {
		s.stop(t)
		for _, m := range mountsUnder(runDir) {
			forceUnmount(m)
		}
	})
	return s
}

// stop sends SIGTERM and waits for a clean exit (SIGKILL after a minute).
func (s *serveDaemon) stop(t *testing.T) {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		if code := s.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("neonfs serve exited %d after SIGTERM", code)
		}
	case <-time.After(time.Minute):
		t.Errorf("neonfs serve did not exit a minute after SIGTERM")
		killProcessTree(s.cmd.Process.Pid, 10*time.Second)
		<-s.done
	}
}

type endpointLine struct {
	Branch     string `json:"branch"`
	State      string `json:"state"`
	Pid        int    `json:"pid"`
	ColdStarts int    `json:"cold_starts"`
	Address    string `json:"address"`
}

func endpointState(t *testing.T, c volumeCLI, branch string) endpointLine {
	t.Helper()
	var list []endpointLine
	c.json(t, &list, "endpoint", "list")
	for _, e := range list {
		if e.Branch == branch {
			return e
		}
	}
	t.Fatalf("endpoint list has no %s: %+v", branch, list)
	return endpointLine{}
}

// An endpoint on a fresh volume: initdb on the first connection through
// its port, suspend when idle (Postgres gone, branch unmounted), wake on
// the next connection with the data, and come back suspended after a
// daemon restart. Bad input is refused with one line and leaves nothing.
func TestEndpointScaleToZero(t *testing.T) {
	requireE2E(t)
	requirePostgres(t)
	if targetKind() != "neonfs" {
		t.Skip("endpoints are neonfs's")
	}
	dir := testDir(t, "endpoint")
	c := volumeCLI{bin: neonfsBinary(t), data: filepath.Join(dir, "volume")}
	runDir := filepath.Join(dir, "run")
	out, err := exec.Command(c.bin, "init", "--data", c.data).CombinedOutput()
	if err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	logPath := filepath.Join(dir, "serve.log")
	d := startServe(t, c, runDir, logPath)

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, busyPort, _ := net.SplitHostPort(busy.Addr().String())
	c.refused(t, `no branch "nosuch"`, "endpoint", "create", "nosuch")
	c.refused(t, "address already in use", "endpoint", "create", "main", "--port", busyPort)
	c.refused(t, "--auth", "endpoint", "create", "main", "--auth", "md5")
	c.refused(t, "postgres binary /nonexistent/bin/postgres", "endpoint", "create", "main", "--pg-bin", "/nonexistent/bin")
	port := freePort(t)
	url := strings.TrimSpace(c.ok(t, "endpoint", "create", "main", "--port", strconv.Itoa(port), "--suspend-after", "3s",
		"--pg-conf", "shared_buffers=32MB"))
	if !strings.HasPrefix(url, "postgres://postgres:") {
		t.Fatalf("endpoint create printed %q, want a connection string", url)
	}
	c.refused(t, "already has an endpoint", "endpoint", "create", "main")
	if got := strings.TrimSpace(c.ok(t, "connection-string", "main")); got != url {
		t.Errorf("connection-string %q, endpoint create said %q", got, url)
	}
	if e := endpointState(t, c, "main"); e.State != "suspended" {
		t.Fatalf("a new endpoint is %s", e.State)
	}
	if strings.Contains(readFile(t, logPath), strings.TrimPrefix(strings.Split(url, "@")[0], "postgres://postgres:")) {
		t.Error("the daemon's log holds the endpoint's password")
	}

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("first connection (initdb and start): %v\n%s", err, tailFile(logPath, 2000))
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	mnt := filepath.Join(runDir, "branches", "main")
	if !isMounted(mnt) {
		t.Errorf("%s not mounted while the endpoint is active", mnt)
	}
	waitFor(t, time.Minute, "the endpoint to suspend", func() bool { return endpointState(t, c, "main").State == "suspended" })
	if isMounted(mnt) {
		t.Errorf("%s still mounted after suspend", mnt)
	}

	read := func(when string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		defer conn.Close(ctx)
		var v int
		if err := conn.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 42 {
			t.Fatalf("%s: %d, %v", when, v, err)
		}
	}
	read("wake after suspend")
	if e := endpointState(t, c, "main"); e.State != "active" || e.ColdStarts != 2 {
		t.Errorf("after a wake: %+v", e)
	}

	d.stop(t)
	startServe(t, c, runDir, logPath)
	if e := endpointState(t, c, "main"); e.State != "suspended" || e.Address != "127.0.0.1:"+strconv.Itoa(port) {
		t.Errorf("after a daemon restart: %+v", e)
	}
	read("wake after a daemon restart")

	// A branch of a running database gets its own endpoint with the
	// parent's data and the parent's role password (its cluster's).
	c.ok(t, "branch", "create", "dev")
	devURL := strings.TrimSpace(c.ok(t, "endpoint", "create", "dev", "--suspend-after", "0"))
	dev, err := pgx.Connect(ctx, devURL)
	if err != nil {
		t.Fatalf("connect to the branch's endpoint: %v\n%s", err, tailFile(logPath, 2000))
	}
	defer dev.Close(ctx)
	var v int
	if err := dev.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 42 {
		t.Fatalf("branch endpoint: %d, %v", v, err)
	}
	if _, err := dev.Exec(ctx, "INSERT INTO t VALUES (43)"); err != nil {
		t.Fatalf("write on the branch: %v", err)
	}
	c.ok(t, "endpoint", "delete", "dev")
	c.ok(t, "endpoint", "delete", "main")
	c.refused(t, "no endpoint", "connection-string", "main")
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The endpoint commands around a running database: a branch with its own
// endpoint forked under load (after a checkpoint), eight clients waking a
// suspended endpoint once, stop and start (kept across restarts), and
// branch reset and delete refused while Postgres runs unless --force.
func TestEndpointLifecycle(t *testing.T) {
	requireE2E(t)
	requirePostgres(t)
	if targetKind() != "neonfs" {
		t.Skip("endpoints are neonfs's")
	}
	dir := testDir(t, "endpoint-life")
	c := volumeCLI{bin: neonfsBinary(t), data: filepath.Join(dir, "volume")}
	runDir := filepath.Join(dir, "run")
	if out, err := exec.Command(c.bin, "init", "--data", c.data).CombinedOutput(); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	logPath := filepath.Join(dir, "serve.log")
	d := startServe(t, c, runDir, logPath)
	ctx := context.Background()

	url := strings.TrimSpace(c.ok(t, "endpoint", "create", "main", "--suspend-after", "0", "--pg-conf", "shared_buffers=32MB"))
	main, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, tailFile(logPath, 2000))
	}
	if _, err := main.Exec(ctx, "CREATE TABLE t (v int)"); err != nil {
		t.Fatal(err)
	}
	// Load on the parent while the branch is made.
	stopLoad := make(chan struct{})
	loadDone := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stopLoad:
				loadDone <- nil
				return
			default:
			}
			if _, err := main.Exec(ctx, "INSERT INTO t SELECT generate_series(1, 100)"); err != nil {
				loadDone <- err
				return
			}
		}
	}()
	time.Sleep(500 * time.Millisecond)

	// Bad input leaves no branch behind.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, busyPort, _ := net.SplitHostPort(busy.Addr().String())
	c.refused(t, "address already in use", "branch", "create", "bad1", "--endpoint", "--port", busyPort)
	c.refused(t, "postgres binary /nonexistent/bin/postgres", "branch", "create", "bad2", "--endpoint", "--pg-bin", "/nonexistent/bin")
	for _, b := range c.list(t) {
		if strings.HasPrefix(b.Name, "bad") {
			t.Errorf("a refused branch create --endpoint left branch %s", b.Name)
		}
	}

	code, devOut, devErr := c.run(t, "branch", "create", "dev", "--endpoint", "--suspend-after", "0")
	if code != 0 {
		t.Fatalf("branch create --endpoint: exit %d\n%s%s", code, devOut, devErr)
	}
	close(stopLoad)
	if err := <-loadDone; err != nil {
		t.Fatalf("load on the parent: %v", err)
	}
	devURL := strings.TrimSpace(devOut)
	if !strings.HasPrefix(devURL, "postgres://postgres:") || !strings.Contains(devErr, "created branch dev from main") {
		t.Fatalf("branch create --endpoint printed %q, %q", devOut, devErr)
	}
	if !strings.Contains(readFile(t, logPath), "checkpointed before a fork") {
		t.Error("the parent's Postgres was not checkpointed before the fork")
	}
	dev, err := pgx.Connect(ctx, devURL)
	if err != nil {
		t.Fatalf("connect to the branch: %v\n%s", err, tailFile(logPath, 2000))
	}
	var n int
	if err := dev.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n == 0 {
		t.Fatalf("the branch has %d rows of the parent's (%v)", n, err)
	}
	if _, err := dev.Exec(ctx, "INSERT INTO t VALUES (-1)"); err != nil {
		t.Fatalf("write on the branch: %v", err)
	}

	// Reset and delete are refused while the branch's Postgres runs.
	c.refused(t, "the endpoint of branch dev runs Postgres", "branch", "reset", "dev")
	c.refused(t, "the endpoint of branch dev runs Postgres", "branch", "delete", "dev")
	c.ok(t, "branch", "reset", "dev", "--force", "--no-preserve")
	if e := endpointState(t, c, "dev"); e.State != "suspended" {
		t.Errorf("after reset --force the endpoint is %s", e.State)
	}
	dev.Close(ctx)
	dev, err = pgx.Connect(ctx, devURL)
	if err != nil {
		t.Fatalf("connect after reset: %v", err)
	}
	if err := dev.QueryRow(ctx, "SELECT count(*) FROM t WHERE v = -1").Scan(&n); err != nil || n != 0 {
		t.Errorf("after a reset to the parent the branch's own row is still there: %d, %v", n, err)
	}
	c.ok(t, "branch", "delete", "dev", "--force")
	dev.Close(ctx)
	for _, e := range c.list(t) {
		if e.Name == "dev" {
			t.Error("branch dev still listed after delete --force")
		}
	}
	var eps []endpointLine
	c.json(t, &eps, "endpoint", "list")
	if len(eps) != 1 || eps[0].Branch != "main" {
		t.Errorf("after deleting dev the endpoints are %+v", eps)
	}

	// Eight clients arriving while suspended wake Postgres once.
	main.Close(ctx)
	c.ok(t, "endpoint", "suspend", "main")
	before := endpointState(t, c, "main")
	if before.State != "suspended" {
		t.Fatalf("endpoint suspend: %+v", before)
	}
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			conn, err := pgx.Connect(ctx, url)
			if err == nil {
				var one int
				err = conn.QueryRow(ctx, "SELECT 1").Scan(&one)
				conn.Close(ctx)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Errorf("a client waking the endpoint: %v", err)
		}
	}
	if after := endpointState(t, c, "main"); after.ColdStarts != before.ColdStarts+1 {
		t.Errorf("8 clients: %d cold starts, want 1", after.ColdStarts-before.ColdStarts)
	}

	// Stop refuses clients, across a daemon restart, until start.
	c.ok(t, "endpoint", "stop", "main")
	if _, err := pgx.Connect(ctx, url); err == nil || !strings.Contains(err.Error(), "endpoint is stopped") {
		t.Errorf("a client of a stopped endpoint: %v", err)
	}
	d.stop(t)
	startServe(t, c, runDir, logPath)
	if e := endpointState(t, c, "main"); e.State != "stopped" {
		t.Errorf("a stopped endpoint after a restart is %s", e.State)
	}
	if got := strings.TrimSpace(c.ok(t, "endpoint", "start", "main")); got != url {
		t.Errorf("endpoint start printed %q, want %q", got, url)
	}
	if e := endpointState(t, c, "main"); e.State != "active" || e.Pid == 0 {
		t.Errorf("after endpoint start: %+v", e)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	c.refused(t, "no endpoint", "endpoint", "stop", "nosuch")
}
