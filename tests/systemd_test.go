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

	"github.com/neonfs/neonfs/systemd"
	"github.com/neonfs/neonfs/systemd/systemdtest"
)

// TestSystemd runs a volume with an endpoint the way its units do: the
// units that `neonfs systemd install` writes for it pass systemd-analyze
// verify, and `neonfs serve` started as systemd starts it from the socket
// unit takes the endpoint's port over, says READY=1 and STOPPING=1, and
// serves the clients that connected while it was down.
func TestSystemd(t *testing.T) {
	requireE2E(t)
	requirePostgres(t)
	if targetKind() != "neonfs" {
		t.Skip("the units run neonfs")
	}
	dir := testDir(t, "systemd")
	c := volumeCLI{bin: neonfsBinary(t), data: filepath.Join(dir, "volume")}
	if out, err := exec.Command(c.bin, "init", "--data", c.data).CombinedOutput(); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	runDir := filepath.Join(dir, "run")
	logPath := filepath.Join(dir, "serve.log")
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	d := startServe(t, c, runDir, logPath)
	url := strings.TrimSpace(c.ok(t, "endpoint", "create", "main", "--port", strconv.Itoa(port), "--suspend-after", "0"))
	d.stop(t)

	t.Run("install", func(t *testing.T) {
		units := filepath.Join(dir, "units")
		if err := os.Mkdir(units, 0o755); err != nil {
			t.Fatal(err)
		}
		var rep struct {
			Written []systemd.Unit `json:"written"`
			Next    []string       `json:"next"`
		}
		c.json(t, &rep, "systemd", "install", "--volume", "vol", "--dir", units, "--postgres", "postgresql@15-main.service")
		socket := readFile(t, filepath.Join(units, "neonfs@vol.socket"))
		if !strings.Contains(socket, "\nListenStream="+addr+"\n") {
			t.Errorf("neonfs@vol.socket has no ListenStream=%s:\n%s", addr, socket)
		}
		if got := readFile(t, filepath.Join(units, "neonfs@vol.service.d", "neonfs.conf")); !strings.Contains(got, "NEONFS_DATA="+c.data+"\n") {
			t.Errorf("the volume's drop-in does not set its data directory %s:\n%s", c.data, got)
		}
		if !strings.Contains(strings.Join(rep.Next, "\n"), "systemctl restart neonfs@vol.socket\n") {
			t.Errorf("install's next steps: %q", rep.Next)
		}
		var names []string
		seen := map[string]bool{}
		for _, u := range rep.Written {
			name := u.Unit
			if name == "neonfs@.service" {
				name = "neonfs@vol.service" // the template, as the volume's instance
			}
			if !seen[name] {
				seen[name] = true
				names = append(names, name)
			}
		}
		if len(names) != 4 {
			t.Errorf("install wrote units %v, want the daemon, its socket, the mount and the Postgres drop-in", names)
		}
		pw := strings.TrimPrefix(strings.Split(url, "@")[0], "postgres://postgres:")
		for _, u := range rep.Written {
			if strings.Contains(readFile(t, filepath.Join(units, u.Path)), pw) {
				t.Errorf("%s holds the endpoint's password", u.Path)
			}
		}
		systemdtest.Verify(t, units, names...)
	})

	t.Run("socket activation", func(t *testing.T) {
		// What systemd does for neonfs@vol.socket: it holds the port, and
		// hands it to the daemon with a spare socket no endpoint records.
		held, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		spare, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer spare.Close()
		var fds []*os.File
		for _, ln := range []net.Listener{held, spare} {
			f, err := ln.(*net.TCPListener).File()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fds = append(fds, f)
		}
		notifyPath := filepath.Join(dir, "notify.sock")
		notes, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer notes.Close()

		ctx := context.Background()
		query := func(sql string) <-chan error {
			done := make(chan error, 1)
			go func() {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
				defer cancel()
				conn, err := pgx.Connect(cctx, url)
				if err == nil {
					_, err = conn.Exec(cctx, sql)
					conn.Close(cctx)
				}
				done <- err
			}()
			return done
		}
		wait := func(done <-chan error, what string) {
			t.Helper()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("%s: %v\n%s", what, err, tailFile(logPath, 3000))
				}
			case <-time.After(3 * time.Minute):
				t.Fatalf("%s: no answer after 3m\n%s", what, tailFile(logPath, 3000))
			}
		}

		for round, sql := range []string{
			"CREATE TABLE t (v int); INSERT INTO t VALUES (1)",
			"INSERT INTO t SELECT v + 1 FROM t", // the data survived the restart
		} {
			// The client connects while the daemon is down: it waits in
			// the backlog of the held socket.
			done := query(sql)
			time.Sleep(200 * time.Millisecond)
			s := startActivated(t, c, runDir, logPath, notifyPath, fds, "main:spare")
			expectNote(t, notes, "READY=1", logPath)
			wait(done, "a client that connected while the daemon was down (round "+strconv.Itoa(round+1)+")")
			s.cmd.Process.Signal(syscall.SIGTERM)
			expectNote(t, notes, "STOPPING=1", logPath)
			s.stop(t)
		}
		log := readFile(t, logPath)
		for _, want := range []string{
			`endpoint takes an inherited listening socket" branch=main address=` + addr + " name=main",
			"no endpoint is recorded on an inherited listening socket: closing it",
		} {
			if !strings.Contains(log, want) {
				t.Errorf("the daemon's log does not say %q", want)
			}
		}
	})
}

// startActivated starts `neonfs serve` as systemd starts neonfs@.service
// from its socket unit: the listening sockets from fd 3 on, LISTEN_FDS,
// LISTEN_FDNAMES and LISTEN_PID (the daemon's own pid, hence the shell
// that execs it), and NOTIFY_SOCKET.
func startActivated(t *testing.T, c volumeCLI, runDir, logPath, notifyPath string, fds []*os.File, names string) *serveDaemon {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`,
		c.bin, "serve", "--data", c.data, "--run-dir", runDir)
	cmd.Env = append(os.Environ(), "LISTEN_FDS="+strconv.Itoa(len(fds)), "LISTEN_FDNAMES="+names, "NOTIFY_SOCKET="+notifyPath)
	cmd.ExtraFiles = fds
	return launchServe(t, cmd, runDir, logPath)
}

// expectNote waits for the daemon to send want on its NOTIFY_SOCKET.
func expectNote(t *testing.T, notes *net.UnixConn, want, logPath string) {
	t.Helper()
	notes.SetReadDeadline(time.Now().Add(2 * time.Minute))
	buf := make([]byte, 4096)
	n, err := notes.Read(buf)
	if err != nil {
		t.Fatalf("waiting for %s from the daemon: %v\n%s", want, err, tailFile(logPath, 3000))
	}
	if got := string(buf[:n]); got != want {
		t.Fatalf("the daemon said %q, want %q", got, want)
	}
}
