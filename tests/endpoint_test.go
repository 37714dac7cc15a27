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
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "serve", "--data", c.data, "--run-dir", runDir)
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
	waitFor(t, time.Minute, "neonfs serve to answer", func() bool {
		code, _, _ := c.run(t, "endpoint", "list")
		return code == 0
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
