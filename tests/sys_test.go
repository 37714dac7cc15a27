package tests

// Process, mount and directory helpers shared by the end-to-end tests.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// requireE2E skips t unless the end-to-end environment is there: not -short,
// running as root, and /dev/fuse present when the target is neonfs.
func requireE2E(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("end-to-end test: needs root (mounts, runuser -u postgres); run `sudo make test`")
	}
	if targetKind() == "neonfs" {
		if _, err := os.Stat("/dev/fuse"); err != nil {
			t.Skipf("end-to-end test: /dev/fuse is missing (%v); load the fuse module or set NEONFS_TARGET=native", err)
		}
	}
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

// baseDir is this test process's scratch directory,
// $TMPDIR/neonfs-e2e-<pid>-*, created by TestMain. The pid in the name lets a
// later run recognise and sweep leftovers of a run that died (see sweepStale).
var baseDir string

const baseDirPrefix = "neonfs-e2e-"

var nameSanitizer = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// testDir makes a fresh directory for t, mode 0755 so that the postgres user
// can traverse it. It is removed when the test ends (unless NEONFS_KEEP is
// set), but never while something is still mounted beneath it.
func testDir(t *testing.T, what string) string {
	t.Helper()
	if baseDir == "" {
		t.Fatal("baseDir not set: TestMain did not run")
	}
	name := nameSanitizer.ReplaceAllString(t.Name(), "_") + "-" + what + "-"
	dir, err := os.MkdirTemp(baseDir, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if os.Getenv("NEONFS_KEEP") != "" {
			t.Logf("NEONFS_KEEP set: keeping %s", dir)
			return
		}
		if m := mountsUnder(dir); len(m) > 0 {
			t.Errorf("not removing %s: still mounted beneath it: %v", dir, m)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("removing %s: %v", dir, err)
		}
	})
	return dir
}

// ---- mounts -------------------------------------------------------------

type mountEntry struct {
	ID         int
	Dev        string // major:minor
	MountPoint string
	FSType     string
	Source     string
}

// parseMountinfo parses the format of /proc/self/mountinfo.
func parseMountinfo(data []byte) []mountEntry {
	var out []mountEntry
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		e := mountEntry{Dev: f[2], MountPoint: unescapeMountinfo(f[4])}
		e.ID, _ = strconv.Atoi(f[0])
		if sep >= 0 && sep+2 < len(f) {
			e.FSType = f[sep+1]
			e.Source = unescapeMountinfo(f[sep+2])
		}
		out = append(out, e)
	}
	return out
}

// unescapeMountinfo undoes the kernel's octal escaping (\040 for space etc.).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func readMounts() []mountEntry {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	return parseMountinfo(data)
}

func isMounted(path string) bool {
	_, ok := findMount(path)
	return ok
}

func findMount(path string) (mountEntry, bool) {
	path = filepath.Clean(path)
	var found mountEntry
	ok := false
	for _, m := range readMounts() {
		if m.MountPoint == path {
			found, ok = m, true // the last one is the top of the stack
		}
	}
	return found, ok
}

func mountsUnder(dir string) []string {
	dir = filepath.Clean(dir)
	var out []string
	for _, m := range readMounts() {
		if m.MountPoint == dir || strings.HasPrefix(m.MountPoint, dir+"/") {
			out = append(out, m.MountPoint)
		}
	}
	return out
}

// forceUnmount makes sure nothing is mounted at path any more: it aborts a
// FUSE connection if the fusectl file system is available (so processes
// blocked on a dead daemon are released), then detaches lazily with umount -l
// (fusermount3 -uz as a fallback), repeating for stacked mounts.
func forceUnmount(path string) error {
	path = filepath.Clean(path)
	var lastErr error
	for i := 0; i < 10; i++ {
		m, ok := findMount(path)
		if !ok {
			return nil
		}
		if strings.HasPrefix(m.FSType, "fuse") {
			abortFuseConnection(m.Dev)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, "umount", "-l", path).CombinedOutput()
		cancel()
		if err != nil {
			lastErr = fmt.Errorf("umount -l %s: %v: %s", path, err, bytes.TrimSpace(out))
			if fm, lerr := exec.LookPath("fusermount3"); lerr == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				out, err = exec.CommandContext(ctx, fm, "-uz", path).CombinedOutput()
				cancel()
				if err != nil {
					lastErr = fmt.Errorf("%v; fusermount3 -uz: %v: %s", lastErr, err, bytes.TrimSpace(out))
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if isMounted(path) {
		if lastErr == nil {
			lastErr = fmt.Errorf("%s is still mounted", path)
		}
		return lastErr
	}
	return nil
}

// abortFuseConnection writes to /sys/fs/fuse/connections/<minor>/abort when
// that file exists (it needs the fusectl file system mounted).
func abortFuseConnection(dev string) {
	_, minor, ok := strings.Cut(dev, ":")
	if !ok {
		return
	}
	p := filepath.Join("/sys/fs/fuse/connections", minor, "abort")
	if _, err := os.Stat(p); err != nil {
		// fusectl is not always mounted (it was not on these machines).
		exec.Command("mount", "-t", "fusectl", "none", "/sys/fs/fuse/connections").Run()
	}
	if _, err := os.Stat(p); err == nil {
		_ = os.WriteFile(p, []byte("1"), 0o200)
	}
}

// ---- processes ----------------------------------------------------------

type procStat struct {
	PID, PPID int
	State     byte
}

// readProcStat reads /proc/<pid>/stat; ok is false if the process is gone.
func readProcStat(pid int) (procStat, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	return parseProcStat(data)
}

func parseProcStat(data []byte) (procStat, bool) {
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return procStat{}, false
	}
	pid, err1 := strconv.Atoi(strings.TrimSpace(s[:strings.IndexByte(s, ' ')]))
	ppid, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return procStat{}, false
	}
	return procStat{PID: pid, PPID: ppid, State: f[0][0]}, true
}

// pidAlive reports whether pid exists and is not a zombie.
func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	st, ok := readProcStat(pid)
	return ok && st.State != 'Z' && st.State != 'X'
}

// allProcs lists every process's stat.
func allProcs() []procStat {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procStat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readProcStat(pid); ok {
			out = append(out, st)
		}
	}
	return out
}

// procCmdline returns the NUL-separated command line joined with spaces.
func procCmdline(pid int) string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(strings.ReplaceAll(string(data), "\x00", " "))
}

// killProcessTree SIGKILLs root and all its descendants as close to at once
// as it can: everything is SIGSTOPped first (so nothing forks or writes in
// between), then SIGKILLed. It waits up to timeout for them all to be gone.
func killProcessTree(root int, timeout time.Duration) error {
	if root <= 0 {
		return nil
	}
	_ = syscall.Kill(root, syscall.SIGSTOP)
	tree := map[int]bool{root: true}
	for changed := true; changed; {
		changed = false
		for _, p := range allProcs() {
			if tree[p.PPID] && !tree[p.PID] {
				tree[p.PID] = true
				_ = syscall.Kill(p.PID, syscall.SIGSTOP)
				changed = true
			}
		}
	}
	for pid := range tree {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	pids := make([]int, 0, len(tree))
	for pid := range tree {
		pids = append(pids, pid)
	}
	return waitPidsGone(pids, timeout)
}

func waitPidsGone(pids []int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		// A zombie still counts: Postgres's lock-file check (kill(pid, 0))
		// sees it, so wait until it has been reaped (here PID 1 reaps
		// orphans only every second or two), unless we are its parent.
		var alive []int
		for _, pid := range pids {
			st, ok := readProcStat(pid)
			if !ok || pid <= 0 {
				continue
			}
			if (st.State == 'Z' || st.State == 'X') && st.PPID == os.Getpid() {
				continue
			}
			alive = append(alive, pid)
		}
		if len(alive) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			var desc []string
			for _, pid := range alive {
				st, _ := readProcStat(pid)
				desc = append(desc, fmt.Sprintf("%d(state %c: %s)", pid, st.State, procCmdline(pid)))
			}
			return fmt.Errorf("processes still alive after %v: %s", timeout, strings.Join(desc, ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---- stale leftovers of earlier runs -------------------------------------

// staleBaseDirs returns the neonfs-e2e-<pid>-* directories in the temp dir
// whose owning test process is gone.
func staleBaseDirs() []string {
	tmp := os.TempDir()
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() || !strings.HasPrefix(name, baseDirPrefix) {
			continue
		}
		rest := strings.TrimPrefix(name, baseDirPrefix)
		pidStr, _, ok := strings.Cut(rest, "-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || pidAlive(pid) {
			continue
		}
		out = append(out, filepath.Join(tmp, name))
	}
	return out
}

// sweepStale cleans up after test processes that died without running their
// cleanups (e.g. killed by go test's -timeout): it kills Postgres servers and
// daemons whose command line names one of their directories, lazily unmounts
// anything mounted beneath them, and removes them. It only touches
// directories named neonfs-e2e-<pid>-* whose pid is gone.
func sweepStale(logf func(string, ...any)) {
	for _, dir := range staleBaseDirs() {
		var victims []int
		for _, p := range allProcs() {
			if p.PID == os.Getpid() {
				continue
			}
			if strings.Contains(procCmdline(p.PID), dir+"/") {
				victims = append(victims, p.PID)
			}
		}
		for _, pid := range victims {
			logf("sweep: killing leftover process %d (%s)", pid, procCmdline(pid))
			if err := killProcessTree(pid, 10*time.Second); err != nil {
				logf("sweep: %v", err)
			}
		}
		mounts := mountsUnder(dir)
		// Innermost first.
		for i := len(mounts) - 1; i >= 0; i-- {
			logf("sweep: unmounting leftover mount %s", mounts[i])
			if err := forceUnmount(mounts[i]); err != nil {
				logf("sweep: %v", err)
			}
		}
		if len(mountsUnder(dir)) == 0 {
			_ = os.RemoveAll(dir)
		}
	}
}

// ---- misc ---------------------------------------------------------------

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append([]byte(nil), b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// tailFile returns the last n bytes of a file, for failure messages.
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	_, err = f.ReadAt(buf, off)
	if err != nil && !errors.Is(err, os.ErrClosed) && len(buf) == 0 {
		return err.Error()
	}
	return string(buf)
}
