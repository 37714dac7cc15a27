package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Target is where Postgres's data lives for a test.
type Target interface {
	// Dir is the directory the test works in: the mount root for neonfs.
	Dir() string
	// Kill SIGKILLs the daemon, waits for it, and makes sure the mountpoint
	// is unmounted (umount -l if needed).
	Kill(t *testing.T)
	// Restart starts the daemon again on the same data.
	Restart(t *testing.T)
	// Stop shuts the daemon down cleanly with SIGTERM and expects exit 0.
	Stop(t *testing.T)
}

// targetKind is NEONFS_TARGET, "neonfs" by default.
func targetKind() string {
	if k := os.Getenv("NEONFS_TARGET"); k != "" {
		return k
	}
	return "neonfs"
}

// newTarget returns the file system under test selected by NEONFS_TARGET,
// ready to use. Its cleanup always leaves nothing mounted.
func newTarget(t *testing.T) Target {
	t.Helper()
	requireE2E(t)
	switch k := targetKind(); k {
	case "native":
		dir := filepath.Join(testDir(t, "native"), "root")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Logf("target: native directory %s", dir)
		return nativeTarget{dir: dir}
	case "neonfs":
		return newNeonfsTarget(t)
	default:
		t.Fatalf("NEONFS_TARGET=%q: want native or neonfs", k)
		return nil
	}
}

// ---- native -------------------------------------------------------------

// nativeTarget is a plain directory on the host file system. Kill, Restart
// and Stop do nothing: it is the baseline that validates the harness.
type nativeTarget struct{ dir string }

func (n nativeTarget) Dir() string          { return n.dir }
func (n nativeTarget) Kill(t *testing.T)    {}
func (n nativeTarget) Restart(t *testing.T) {}
func (n nativeTarget) Stop(t *testing.T)    {}

// ---- neonfs -------------------------------------------------------------

var builtBinary struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// neonfsBinary returns the neonfs binary: NEONFS_BIN if set, else the repo
// root built once per test process with `go build`.
func neonfsBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("NEONFS_BIN"); b != "" {
		abs, err := filepath.Abs(b)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	builtBinary.once.Do(func() {
		start := time.Now()
		root, err := repoRoot()
		if err != nil {
			builtBinary.err = err
			return
		}
		dir, err := os.MkdirTemp("", "neonfs-bin-")
		if err != nil {
			builtBinary.err = err
			return
		}
		builtBinary.dir = dir
		bin := filepath.Join(dir, "neonfs")
		cmd := exec.Command(goTool(), "build", "-o", bin, ".")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			builtBinary.err = fmt.Errorf("`go build -o %s .` in %s failed: %v\n%s", bin, root, err, out)
			return
		}
		// The daemon runs as root but must be reachable; keep it simple.
		_ = os.Chmod(dir, 0o755)
		builtBinary.bin = bin
		fmt.Fprintf(os.Stderr, "tests: built %s in %v\n", bin, time.Since(start).Round(time.Millisecond))
	})
	if builtBinary.err != nil {
		t.Fatalf("building neonfs: %v", builtBinary.err)
	}
	return builtBinary.bin
}

func removeBuiltBinary() {
	if builtBinary.dir != "" {
		_ = os.RemoveAll(builtBinary.dir)
	}
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if r := os.Getenv("GOROOT"); r != "" {
		return filepath.Join(r, "bin", "go")
	}
	return "go"
}

// repoRoot is the directory of the main module's go.mod.
func repoRoot() (string, error) {
	out, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

type neonfsTarget struct {
	bin     string
	data    string // volume storage: neonfs init --data
	mnt     string // mountpoint
	logPath string // daemon stdout+stderr, all runs appended

	mountTimeout time.Duration
	stopTimeout  time.Duration

	extra []string // more mount flags, for tests that tune the daemon

	cmd     *exec.Cmd
	done    chan struct{} // closed once cmd has exited
	waitErr error
	runs    int
}

func newNeonfsTarget(t *testing.T) *neonfsTarget {
	t.Helper()
	return newNeonfsTargetWith(t, nil, nil)
}

// newNeonfsTargetWith passes initArgs to neonfs init (an S3 bucket, say)
// and mountArgs to every neonfs mount.
func newNeonfsTargetWith(t *testing.T, initArgs, mountArgs []string) *neonfsTarget {
	t.Helper()
	bin := neonfsBinary(t)
	dir := testDir(t, "neonfs")
	n := &neonfsTarget{
		bin:          bin,
		data:         filepath.Join(dir, "volume"),
		mnt:          filepath.Join(dir, "mnt"),
		logPath:      filepath.Join(dir, "neonfs.log"),
		mountTimeout: envDuration(t, "NEONFS_MOUNT_TIMEOUT", 60*time.Second),
		stopTimeout:  envDuration(t, "NEONFS_STOP_TIMEOUT", 120*time.Second),
		extra:        mountArgs,
	}
	for _, d := range []string{n.data, n.mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Registered after testDir's cleanup, so it runs before the directory
	// is removed; registered before any Postgres cleanup, so it runs after
	// Postgres has been stopped.
	t.Cleanup(func() { n.cleanup(t) })

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, n.bin, append([]string{"init", "--data", n.data}, initArgs...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("neonfs init --data %s: %v\n%s", n.data, err, out)
	}
	t.Logf("target: neonfs %s, volume %s, mounted at %s (init took %v)", n.bin, n.data, n.mnt, time.Since(start).Round(time.Millisecond))
	n.start(t)
	return n
}

func (n *neonfsTarget) Dir() string { return n.mnt }

func (n *neonfsTarget) running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// mountWatcher receives the daemon's output, appends it to the log file and
// to a tail buffer, and signals the first line that contains "mounted".
type mountWatcher struct {
	mu      sync.Mutex
	log     *os.File
	tail    *tailBuffer
	partial []byte
	ready   chan struct{}
	fired   bool
}

func (w *mountWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.log != nil {
		_, _ = w.log.Write(p)
	}
	_, _ = w.tail.Write(p)
	if !w.fired {
		w.partial = append(w.partial, p...)
		for {
			i := bytes.IndexByte(w.partial, '\n')
			if i < 0 {
				break
			}
			line := w.partial[:i]
			w.partial = w.partial[i+1:]
			if bytes.Contains(line, []byte("mounted")) && !bytes.Contains(line, []byte("unmounted")) && !bytes.Contains(line, []byte("not mounted")) {
				w.fired = true
				close(w.ready)
				w.partial = nil
				break
			}
		}
	}
	return len(p), nil
}

func (n *neonfsTarget) start(t *testing.T) {
	t.Helper()
	if n.running() {
		t.Fatalf("neonfs: start while the daemon (pid %d) is still running", n.cmd.Process.Pid)
	}
	if isMounted(n.mnt) {
		t.Fatalf("neonfs: %s is still mounted before starting the daemon", n.mnt)
	}
	n.runs++
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "==== run %d at %s ====\n", n.runs, time.Now().Format(time.RFC3339Nano))
	w := &mountWatcher{log: logf, tail: &tailBuffer{max: 8 << 10}, ready: make(chan struct{})}

	args := []string{"mount", "--data", n.data}
	if b := os.Getenv("NEONFS_BRANCH"); b != "" {
		args = append(args, "--branch", b)
	}
	args = append(args, n.extra...)
	args = append(args, n.mnt)
	cmd := exec.Command(n.bin, args...)
	cmd.Stdout = w
	cmd.Stderr = w
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// If the test process dies without cleanup, ask the daemon to
		// flush and unmount.
		Pdeathsig: syscall.SIGTERM,
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("starting %s %s: %v", n.bin, strings.Join(args, " "), err)
	}
	n.cmd = cmd
	n.done = make(chan struct{})
	go func() {
		n.waitErr = cmd.Wait()
		logf.Close()
		close(n.done)
	}()

	deadline := time.NewTimer(n.mountTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	how := ""
	for how == "" {
		select {
		case <-w.ready:
			how = `"mounted" line`
		case <-n.done:
			t.Fatalf("neonfs mount exited before the mount was ready (%v); output:\n%s", n.waitErr, w.tail.String())
		case <-deadline.C:
			t.Fatalf("neonfs mount %s: not ready after %v (no \"mounted\" line on stderr and no entry in /proc/self/mountinfo); output so far:\n%s",
				n.mnt, n.mountTimeout, w.tail.String())
		case <-tick.C:
			if isMounted(n.mnt) {
				how = "mountinfo"
			}
		}
	}
	// Whichever came first, the mountpoint must show up in mountinfo.
	grace := time.Now().Add(10 * time.Second)
	for !isMounted(n.mnt) {
		if !n.running() {
			t.Fatalf("neonfs mount exited right after reporting ready (%v); output:\n%s", n.waitErr, w.tail.String())
		}
		if time.Now().After(grace) {
			t.Fatalf("neonfs printed \"mounted\" but %s is not in /proc/self/mountinfo; output:\n%s", n.mnt, w.tail.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("neonfs: mount #%d ready after %v (pid %d, via %s)", n.runs, time.Since(start).Round(time.Millisecond), cmd.Process.Pid, how)
}

// Kill SIGKILLs the daemon, waits for it and unmounts what it left behind.
func (n *neonfsTarget) Kill(t *testing.T) {
	t.Helper()
	start := time.Now()
	if n.running() {
		pid := n.cmd.Process.Pid
		_ = syscall.Kill(-pid, syscall.SIGKILL) // its process group
		_ = n.cmd.Process.Kill()
		select {
		case <-n.done:
		case <-time.After(60 * time.Second):
			t.Fatalf("neonfs daemon pid %d did not exit within 60s of SIGKILL", pid)
		}
	}
	stale := isMounted(n.mnt)
	if err := forceUnmount(n.mnt); err != nil {
		t.Fatalf("neonfs: after kill: %v", err)
	}
	t.Logf("neonfs: killed daemon in %v (stale mount left behind: %v)", time.Since(start).Round(time.Millisecond), stale)
}

// Restart mounts the same volume again.
func (n *neonfsTarget) Restart(t *testing.T) {
	t.Helper()
	n.start(t)
}

// Stop sends SIGTERM and expects a clean exit (0) that unmounted.
func (n *neonfsTarget) Stop(t *testing.T) {
	t.Helper()
	if !n.running() {
		t.Fatalf("neonfs: Stop while the daemon is not running")
	}
	start := time.Now()
	pid := n.cmd.Process.Pid
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(n.stopTimeout):
		n.Kill(t)
		t.Fatalf("neonfs daemon pid %d did not exit within %v of SIGTERM (killed it); log tail:\n%s",
			pid, n.stopTimeout, tailFile(n.logPath, 4<<10))
	}
	if n.waitErr != nil {
		_ = forceUnmount(n.mnt)
		t.Fatalf("neonfs daemon: SIGTERM shutdown did not exit 0: %v; log tail:\n%s", n.waitErr, tailFile(n.logPath, 4<<10))
	}
	if isMounted(n.mnt) {
		_ = forceUnmount(n.mnt)
		t.Fatalf("neonfs daemon exited 0 after SIGTERM but left %s mounted", n.mnt)
	}
	t.Logf("neonfs: clean stop took %v", time.Since(start).Round(time.Millisecond))
}

// cleanup runs at the end of the test: stop the daemon (gracefully if it
// can), and never leave a mount behind.
func (n *neonfsTarget) cleanup(t *testing.T) {
	if n.running() {
		pid := n.cmd.Process.Pid
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.done:
			if n.waitErr != nil && !t.Failed() {
				t.Errorf("neonfs daemon: shutdown at cleanup did not exit 0: %v", n.waitErr)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("neonfs daemon pid %d ignored SIGTERM for 60s at cleanup; killing it", pid)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = n.cmd.Process.Kill()
			select {
			case <-n.done:
			case <-time.After(30 * time.Second):
				t.Errorf("neonfs daemon pid %d survived SIGKILL", pid)
			}
		}
	}
	if isMounted(n.mnt) {
		if err := forceUnmount(n.mnt); err != nil {
			t.Errorf("cleanup: %v", err)
		} else {
			t.Logf("cleanup: lazily unmounted %s", n.mnt)
		}
	}
	if t.Failed() {
		t.Logf("neonfs log tail (%s):\n%s", n.logPath, tailFile(n.logPath, 8<<10))
	}
}
