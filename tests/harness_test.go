package tests

import (
	"bytes"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestTargetLifecycle is a quick smoke test of the target itself and of the
// harness: the mount root is a root-owned 0755 directory, a directory handed
// to postgres is usable by postgres, and fsynced data survives a clean
// remount and a kill -9 of the daemon.
func TestTargetLifecycle(t *testing.T) {
	requireE2E(t)
	start := time.Now()
	tg := newTarget(t)
	root := tg.Dir()

	st, err := os.Stat(root)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || st.Mode().Perm() != 0o755 || sys.Uid != 0 {
		t.Errorf("mount root %s: mode %v uid %d, want a directory 0755 owned by root", root, st.Mode(), sys.Uid)
	}

	// A postgres-owned 0700 directory, as for pgdata.
	if u, err := user.Lookup("postgres"); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		d := filepath.Join(root, "owned")
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if s := st.Sys().(*syscall.Stat_t); int(s.Uid) != uid || st.Mode().Perm() != 0o700 {
			t.Errorf("%s: uid %d mode %v after chown/mkdir, want uid %d mode 0700", d, s.Uid, st.Mode(), uid)
		}
	}

	payload := bytes.Repeat([]byte("neonfs-lifecycle-"), 4096) // 68 KiB, not block aligned
	writeSynced := func(name string) {
		t.Helper()
		f, err := os.Create(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(payload); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	check := func(name, when string) {
		t.Helper()
		got, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("%s: %s has %d bytes that differ from the %d written", when, name, len(got), len(payload))
		}
	}

	writeSynced("clean")
	tg.Stop(t)
	tg.Restart(t)
	check("clean", "after clean remount")

	writeSynced("crash")
	tg.Kill(t)
	if isMounted(root) && targetKind() != "native" {
		t.Fatalf("%s still mounted after Kill", root)
	}
	tg.Restart(t)
	check("crash", "after kill -9 and remount")
	check("clean", "after kill -9 and remount")
	tg.Stop(t)
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}

// The tests below check the harness's own parsing and run with -short.

func TestParseMountinfo(t *testing.T) {
	data := []byte(`22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
95 22 0:48 / /tmp/neonfs-e2e-1-2/with\040space rw,nosuid,nodev,relatime shared:50 - fuse.neonfs neonfs rw,user_id=0,group_id=0,default_permissions,allow_other
96 22 0:49 / /mnt/x rw - tmpfs tmpfs rw
`)
	ms := parseMountinfo(data)
	if len(ms) != 3 {
		t.Fatalf("got %d entries, want 3: %+v", len(ms), ms)
	}
	m := ms[1]
	if m.MountPoint != "/tmp/neonfs-e2e-1-2/with space" || m.FSType != "fuse.neonfs" || m.Dev != "0:48" || m.Source != "neonfs" || m.ID != 95 {
		t.Errorf("entry 1 = %+v", m)
	}
	if !isMounted("/") {
		t.Errorf("isMounted(/) = false")
	}
}

func TestParseProcStat(t *testing.T) {
	st, ok := parseProcStat([]byte("1234 (postgres: wal (writer)) S 99 1234 1234 0 -1 4194560"))
	if !ok || st.PID != 1234 || st.PPID != 99 || st.State != 'S' {
		t.Errorf("parseProcStat = %+v, %v", st, ok)
	}
	if !pidAlive(os.Getpid()) {
		t.Errorf("pidAlive(self) = false")
	}
}

func TestParseTPS(t *testing.T) {
	out := "latency average = 3.2 ms\ninitial connection time = 5.1 ms\ntps = 1234.567890 (without initial connection time)\n"
	if got := parseTPS(out); got != 1234.567890 {
		t.Errorf("parseTPS = %v", got)
	}
	if got := parseTPS("nothing"); got != -1 {
		t.Errorf("parseTPS(nothing) = %v", got)
	}
}
