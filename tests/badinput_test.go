package tests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runNeonfs runs the binary to completion and returns its exit code and
// combined output.
func runNeonfs(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, neonfsBinary(t), args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("neonfs %s hung: %s", strings.Join(args, " "), out)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

// expectFailure checks a command fails cleanly: non-zero exit, a one-line
// "neonfs: ..." error naming the cause, no panic.
func expectFailure(t *testing.T, want string, args ...string) {
	t.Helper()
	code, out := runNeonfs(t, args...)
	if code == 0 {
		t.Fatalf("neonfs %s: exit 0, want failure; output:\n%s", strings.Join(args, " "), out)
	}
	if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
		t.Fatalf("neonfs %s panicked:\n%s", strings.Join(args, " "), out)
	}
	var errLine string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(l, "neonfs: ") {
			errLine = l
		}
	}
	if errLine == "" || !strings.Contains(errLine, want) {
		t.Fatalf("neonfs %s: want an error line containing %q; output:\n%s", strings.Join(args, " "), want, out)
	}
}

func TestBadInput(t *testing.T) {
	requireE2E(t)
	if targetKind() != "neonfs" {
		t.Skip("tests the neonfs binary")
	}
	dir := testDir(t, "bad")
	p := func(s string) string { return filepath.Join(dir, s) }
	os.Mkdir(p("full"), 0o755)
	os.WriteFile(p("full/x"), nil, 0o644)
	os.Mkdir(p("notvol"), 0o755)
	os.Mkdir(p("ro"), 0o755)
	if err := syscall.Mount("tmpfs", p("ro"), "tmpfs", syscall.MS_RDONLY, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(p("ro"), syscall.MNT_DETACH)
	os.Mkdir(p("badcfg"), 0o755)
	os.WriteFile(p("badcfg/volume.json"), []byte("{not json"), 0o600)

	n := newNeonfsTarget(t) // a mounted volume to collide with
	os.Mkdir(p("mnt2"), 0o755)
	os.WriteFile(p("file"), nil, 0o644)

	for _, tc := range []struct {
		name string
		want string
		args []string
	}{
		{"init without --data", `"data"`, []string{"init"}},
		{"init into a non-empty dir", "not empty", []string{"init", "--data", p("full")}},
		{"init on a read-only file system", "read-only file system", []string{"init", "--data", p("ro/vol")}},
		{"mount of a directory that is not a volume", "not a neonfs volume", []string{"mount", "--data", p("notvol"), p("mnt2")}},
		{"mount of a missing data dir", "not a neonfs volume", []string{"mount", "--data", p("nosuch"), p("mnt2")}},
		{"corrupted volume config", "volume config", []string{"mount", "--data", p("badcfg"), p("mnt2")}},
		{"mount without a mountpoint", "MOUNTPOINT", []string{"mount", "--data", n.data}},
		{"mountpoint missing", "mountpoint", []string{"mount", "--data", n.data, p("nosuch")}},
		{"mountpoint is a file", "not a directory", []string{"mount", "--data", n.data, p("file")}},
		{"mountpoint already mounted", "already mounted", []string{"mount", "--data", p("notvol"), n.mnt}},
		{"volume already mounted", `branch "main" is already mounted at`, []string{"mount", "--data", n.data, p("mnt2")}},
		{"negative cache size", "--cache-mb must be positive", []string{"mount", "--cache-mb", "-1", "--data", n.data, p("mnt2")}},
		{"negative prewarm", "--prewarm-mb -1: want 0 (off) or more", []string{"mount", "--prewarm-mb", "-1", "--data", n.data, p("mnt2")}},
		{"unknown log level", "--log-level", []string{"--log-level", "loud", "status", "--data", n.data}},
		{"status of a non-volume", "not a neonfs volume", []string{"status", "--data", p("notvol")}},
		{"gc of a non-volume", "not a neonfs volume", []string{"gc", "--data", p("notvol")}},
		{"restore without --from", `"from"`, []string{"restore", "--data", p("r1")}},
		{"restore from a store without manifests", "holds no manifest", []string{"restore", "--data", p("r1"), "--from", p("notvol")}},
		{"restore from a missing directory", "no such file", []string{"restore", "--data", p("r1"), "--from", p("nosuch")}},
		{"restore into a non-empty dir", "not empty", []string{"restore", "--data", p("full"), "--from", filepath.Join(n.data, "objects")}},
		{"restore from S3 without an endpoint", "--s3-endpoint", []string{"restore", "--data", p("r1"), "--from", "s3://bucket/x"}},
		{"init with a zero retention", "--retention must be positive", []string{"init", "--data", p("r2"), "--retention", "0s"}},
	} {
		t.Run(tc.name, func(t *testing.T) { expectFailure(t, tc.want, tc.args...) })
	}

	// The running daemon answers status over its control socket.
	code, out := runNeonfs(t, "status", "--data", n.data)
	if code != 0 || !strings.Contains(out, "main (mounted)") {
		t.Fatalf("status of a mounted volume: exit %d\n%s", code, out)
	}
}

// writeSynced writes size bytes of pattern to path and fsyncs it.
func writeSynced(t *testing.T, path string, size int) []byte {
	t.Helper()
	data := bytes.Repeat([]byte("neonfs-layer-check-"), size/19+1)[:size]
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return data
}

func layerObjects(t *testing.T, data string) []string {
	t.Helper()
	objs, _ := filepath.Glob(filepath.Join(data, "objects", "layers", "*.layer"))
	if len(objs) == 0 {
		t.Fatalf("no layer objects under %s", data)
	}
	return objs
}

func TestCorruptedLayer(t *testing.T) {
	requireE2E(t)
	if targetKind() != "neonfs" {
		t.Skip("tests the neonfs binary")
	}
	n := newNeonfsTarget(t)
	writeSynced(t, filepath.Join(n.mnt, "f"), 4<<20)
	n.Stop(t) // a clean stop flushes the memtable into a layer
	objs := layerObjects(t, n.data)
	big := objs[len(objs)-1]
	b, _ := os.ReadFile(big)
	b[len(b)/2] ^= 0xff // inside the file's blocks
	os.WriteFile(big, b, 0o600)

	n.Restart(t)
	_, err := os.ReadFile(filepath.Join(n.mnt, "f"))
	if err == nil || !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("read of a corrupted block: %v, want EIO", err)
	}
	n.Stop(t)
	log, _ := os.ReadFile(n.logPath)
	if !bytes.Contains(log, []byte(filepath.Base(big))) || !bytes.Contains(log, []byte("corrupt")) {
		t.Fatalf("daemon log does not name the corrupted object %s", filepath.Base(big))
	}

	// A missing object is refused at mount with its name, not served as zeros.
	for _, o := range objs {
		os.Remove(o)
	}
	code, out := runNeonfs(t, "mount", "--data", n.data, n.mnt)
	if code == 0 || !strings.Contains(out, "object not found") || !strings.Contains(out, "layers/") {
		t.Fatalf("mount with missing layers: exit %d\n%s", code, out)
	}
}

func TestDiskFull(t *testing.T) {
	requireE2E(t)
	if targetKind() != "neonfs" {
		t.Skip("tests the neonfs binary")
	}
	dir := testDir(t, "full")
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=320m"); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(dir, syscall.MNT_DETACH)
	vol := filepath.Join(dir, "vol")
	if code, out := runNeonfs(t, "init", "--data", vol); code != 0 {
		t.Fatal(out)
	}
	n := newNeonfsTarget(t)
	n.Stop(t)
	n.data = vol
	n.extra = []string{"--reserve-mb", "48", "--flush-mb", "8"}
	n.Restart(t)

	kept := writeSynced(t, filepath.Join(n.mnt, "kept"), 1<<20)
	// Fill the disk: the write must fail with ENOSPC (at the latest at fsync,
	// since the kernel's writeback cache accepts write(2) first).
	cmd := exec.Command("dd", "if=/dev/urandom", "of="+filepath.Join(n.mnt, "filler"), "bs=1M", "count=600", "conv=fsync")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "No space left on device") {
		t.Fatalf("filling the disk: %v, want ENOSPC\n%s", err, out)
	}
	code, st := runNeonfs(t, "status", "--data", vol)
	if code != 0 || !strings.Contains(st, "FULL") {
		t.Fatalf("status on a full disk: exit %d\n%s", code, st)
	}
	n.Stop(t)
	// Take the last free byte: a volume on a disk with no room at all must
	// still open and serve what it holds.
	exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(dir, "ballast"), "bs=1M").Run()
	n.Restart(t)
	got, err := os.ReadFile(filepath.Join(n.mnt, "kept"))
	if err != nil || !bytes.Equal(got, kept) {
		t.Fatalf("data synced before the disk filled: %v (equal %v)", err, bytes.Equal(got, kept))
	}
}
