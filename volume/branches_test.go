package volume

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func writeFile(t *testing.T, f *BranchFS, name, content string) uint64 {
	t.Helper()
	ino, _, errno := f.Lookup(rootIno, name)
	if errno == syscall.ENOENT {
		ino, _, errno = f.Create(rootIno, name, syscall.S_IFREG|0o644, 0, 0, 0, "")
	}
	must(t, errno)
	size := uint64(len(content))
	_, errno = f.SetAttr(ino, AttrChange{Size: &size})
	must(t, errno)
	_, errno = f.Write(ino, []byte(content), 0)
	must(t, errno)
	must(t, f.Fsync(ino, false))
	return ino
}

// fileContent returns the content of name, or "<missing>".
func fileContent(t *testing.T, f *BranchFS, name string) string {
	t.Helper()
	ino, _, errno := f.Lookup(rootIno, name)
	if errno == syscall.ENOENT {
		return "<missing>"
	}
	must(t, errno)
	return string(readAll(t, f, ino))
}

func wantErr(t *testing.T, err error, substr string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), substr) {
		t.Fatalf("err = %v, want one containing %q", err, substr)
	}
}

func TestBranchIsolationAndAncestry(t *testing.T) {
	ctx := context.Background()
	dir := testVolume(t)
	v, main := open(t, dir, Options{})
	writeFile(t, main, "m", "main-1")

	if _, err := v.CreateBranch(ctx, "a", "main", ""); err != nil {
		t.Fatal(err)
	}
	writeFile(t, main, "m", "main-2") // after a's fork: a must not see it
	a, err := v.Mount(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, a, "fa", "a-1")
	if _, err := v.CreateBranch(ctx, "b", "a", ""); err != nil {
		t.Fatal(err)
	}
	writeFile(t, a, "fa", "a-2")
	b, err := v.Mount(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, b, "fb", "b-1")
	writeFile(t, b, "m", "b-m")

	for _, tc := range []struct {
		f         *BranchFS
		m, fa, fb string
	}{
		{main, "main-2", "<missing>", "<missing>"},
		{a, "main-1", "a-2", "<missing>"},
		{b, "b-m", "a-1", "b-1"},
	} {
		if got := fileContent(t, tc.f, "m"); got != tc.m {
			t.Errorf("%s: m = %q, want %q", tc.f.Name(), got, tc.m)
		}
		if got := fileContent(t, tc.f, "fa"); got != tc.fa {
			t.Errorf("%s: fa = %q, want %q", tc.f.Name(), got, tc.fa)
		}
		if got := fileContent(t, tc.f, "fb"); got != tc.fb {
			t.Errorf("%s: fb = %q, want %q", tc.f.Name(), got, tc.fb)
		}
	}

	if _, err := v.Mount(ctx, "a"); err == nil {
		t.Error("second read-write mount of a was allowed")
	}
	wantErr(t, v.DeleteBranch(ctx, "main"), "root of the volume")
	wantErr(t, v.DeleteBranch(ctx, "a"), `has child branches (b)`)
	wantErr(t, v.DeleteBranch(ctx, "b"), "is mounted")
	if err := v.Unmount(b); err != nil {
		t.Fatal(err)
	}
	if err := v.DeleteBranch(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := v.Unmount(a); err != nil {
		t.Fatal(err)
	}
	if err := v.DeleteBranch(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	_, err = v.CreateBranch(ctx, "bad name", "main", "")
	wantErr(t, err, "invalid branch name")
	_, err = v.CreateBranch(ctx, "x", "nope", "")
	wantErr(t, err, `no parent branch "nope"`)
	if err := v.Unmount(main); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
}

// A branch costs one log entry and no data, whatever the volume holds.
func TestBranchCreateCostsOneEntry(t *testing.T) {
	ctx := context.Background()
	dir := testVolume(t)
	v, main := open(t, dir, Options{FlushBytes: 1 << 20})
	payload := strings.Repeat("x", 64<<10)
	for size := 1; size <= 2; size++ {
		for i := range 16 * size {
			writeFile(t, main, "f"+strings.Repeat("0", size)+string(rune('a'+i%26))+string(rune('a'+i/26)), payload)
		}
		if err := v.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		before, err := v.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		name := "b" + string(rune('0'+size))
		if _, err := v.CreateBranch(ctx, name, "main", ""); err != nil {
			t.Fatal(err)
		}
		after, err := v.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d := after.LastLogIndex - before.LastLogIndex; d != 1 {
			t.Errorf("branch %s over %d layers: %d log entries, want 1", name, before.Layers, d)
		}
		if after.ObjectBytes != before.ObjectBytes || after.Objects != before.Objects {
			t.Errorf("branch %s wrote objects: %d/%d bytes before, %d/%d after", name,
				before.Objects, before.ObjectBytes, after.Objects, after.ObjectBytes)
		}
		if after.MemtableBytes != before.MemtableBytes {
			t.Errorf("branch %s grew the memtable from %d to %d bytes", name, before.MemtableBytes, after.MemtableBytes)
		}
	}
	v.Unmount(main)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestBranchResetRestoreAndTimeTravel(t *testing.T) {
	ctx := context.Background()
	dir := testVolume(t)
	v, main := open(t, dir, Options{})
	writeFile(t, main, "f", "v1")
	lsn1 := v.appliedLSN()
	time.Sleep(30 * time.Millisecond) // past one timeline bucket
	t1 := time.Now()
	time.Sleep(30 * time.Millisecond)
	writeFile(t, main, "f", "v2")
	must(t, main.Remove(rootIno, "f", false))
	must(t, main.Fsync(rootIno, false))

	// Read-only views of the past, by LSN and by time.
	for _, point := range []string{itoa(lsn1), t1.UTC().Format(time.RFC3339Nano)} {
		ro, err := v.MountAt(ctx, "main", point)
		if err != nil {
			t.Fatal(err)
		}
		if got := fileContent(t, ro, "f"); got != "v1" {
			t.Errorf("main at %s: f = %q, want v1", point, got)
		}
		if _, _, errno := ro.Create(rootIno, "new", syscall.S_IFREG|0o644, 0, 0, 0, ""); errno != syscall.EROFS {
			t.Errorf("create on a time-travel mount: %v, want EROFS", errno)
		}
		v.Unmount(ro)
	}
	for _, tc := range []struct{ point, want string }{
		{"-8d", "older than the retention window"},
		{time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "in the future"},
		{"999999999", "not committed yet"},
		{"yesterday", "invalid point"},
		{"0", "LSNs start at 1"},
	} {
		_, err := v.CreateBranch(ctx, "p", "main", tc.point)
		wantErr(t, err, tc.want)
	}

	// Restore main itself to before the delete: the old state is kept.
	v.Unmount(main)
	res, err := v.RestoreBranch(ctx, "main", itoa(lsn1), true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.Old, "main_old_") {
		t.Fatalf("old state kept as %q", res.Old)
	}
	main, err = v.Mount(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	if got := fileContent(t, main, "f"); got != "v1" {
		t.Errorf("restored main: f = %q, want v1", got)
	}
	old, err := v.Mount(ctx, res.Old)
	if err != nil {
		t.Fatal(err)
	}
	if got := fileContent(t, old, "f"); got != "<missing>" {
		t.Errorf("%s: f = %q, want it deleted as before the restore", res.Old, got)
	}
	v.Unmount(old)

	// Reset a child to its parent's latest; --no-preserve drops the old state.
	if _, err := v.CreateBranch(ctx, "dev", "main", ""); err != nil {
		t.Fatal(err)
	}
	dev, err := v.Mount(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dev, "f", "dev")
	writeFile(t, main, "g", "main-later")
	_, err = v.ResetBranch(ctx, "dev", true)
	wantErr(t, err, "is mounted")
	v.Unmount(dev)
	_, err = v.ResetBranch(ctx, res.Old, true) // the root now
	wantErr(t, err, "no parent")
	if _, err := v.ResetBranch(ctx, "dev", false); err != nil {
		t.Fatal(err)
	}
	dev, err = v.Mount(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if got := fileContent(t, dev, "f") + "," + fileContent(t, dev, "g"); got != "v1,main-later" {
		t.Errorf("reset dev: f,g = %s, want v1,main-later", got)
	}
	names := map[string]bool{}
	list, err := v.ListBranches(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range list {
		names[b.Name] = true
	}
	for n := range names {
		if strings.HasPrefix(n, "dev_old") {
			t.Errorf("reset --no-preserve kept %s", n)
		}
	}
	v.Unmount(dev)
	v.Unmount(main)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}

	// The tree and the timeline survive a restart (snapshot + replay).
	v, err = Open(ctx, dir, Options{ReserveBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ro, err := v.MountAt(ctx, res.Old, t1.UTC().Format(time.RFC3339Nano))
	if err != nil {
		t.Fatal(err)
	}
	if got := fileContent(t, ro, "f"); got != "v1" {
		t.Errorf("after reopen, %s at t1: f = %q, want v1", res.Old, got)
	}
	v.Unmount(ro)
}

func TestBranchOfPostgresDropsPidFile(t *testing.T) {
	ctx := context.Background()
	dir := testVolume(t)
	v, main := open(t, dir, Options{})
	defer v.Close()
	pg, _, errno := main.Create(rootIno, "pg", syscall.S_IFDIR|0o700, 0, 0, 0, "")
	must(t, errno)
	other, _, errno := main.Create(rootIno, "other", syscall.S_IFDIR|0o700, 0, 0, 0, "")
	must(t, errno)
	for _, d := range []uint64{pg, other} {
		ino, _, errno := main.Create(d, "postmaster.pid", syscall.S_IFREG|0o600, 0, 0, 0, "")
		must(t, errno)
		_, errno = main.Write(ino, []byte("12345\n"), 0)
		must(t, errno)
	}
	_, _, errno = main.Create(pg, "PG_VERSION", syscall.S_IFREG|0o600, 0, 0, 0, "")
	must(t, errno)
	must(t, main.Sync())
	if _, err := v.CreateBranch(ctx, "b", "main", ""); err != nil {
		t.Fatal(err)
	}
	b, err := v.Mount(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, errno := b.Lookup(pg, "postmaster.pid"); errno != syscall.ENOENT {
		t.Errorf("branch keeps pg/postmaster.pid (%v)", errno)
	}
	if _, _, errno := b.Lookup(other, "postmaster.pid"); errno != 0 {
		t.Errorf("branch lost other/postmaster.pid, not a Postgres data dir (%v)", errno)
	}
	if _, _, errno := main.Lookup(pg, "postmaster.pid"); errno != 0 {
		t.Errorf("main lost its postmaster.pid (%v)", errno)
	}
}

func TestBranchDiff(t *testing.T) {
	ctx := context.Background()
	dir := testVolume(t)
	v, main := open(t, dir, Options{FlushBytes: 1 << 20})
	defer v.Close()
	big := strings.Repeat("0123456789abcdef", 10*bs/16) // 10 blocks
	ino := writeFile(t, main, "big", big)
	writeFile(t, main, "same", "same")
	if err := v.Flush(ctx); err != nil { // some history in layers, some in the memtable
		t.Fatal(err)
	}
	if _, err := v.CreateBranch(ctx, "dev", "main", ""); err != nil {
		t.Fatal(err)
	}
	dev, err := v.Mount(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	dino, _, errno := dev.Lookup(rootIno, "big")
	must(t, errno)
	if dino != ino {
		t.Fatalf("inode numbers differ across branches: %d vs %d", dino, ino)
	}
	_, errno = dev.Write(ino, []byte(strings.Repeat("Z", 3*bs)), 2*bs) // blocks 2, 3, 4
	must(t, errno)
	_, errno = dev.Write(ino, []byte(big[5*bs:6*bs]), 5*bs) // rewritten with the same bytes
	must(t, errno)
	writeFile(t, dev, "new", "new")
	must(t, dev.Remove(rootIno, "same", false))
	must(t, dev.Sync())

	d, err := v.Diff(ctx, "main", "dev")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range d.Files {
		got[f.Path] = f.Change + "/" + itoa(uint64(f.Blocks))
	}
	want := map[string]string{"/big": "modified/3", "/new": "added/1", "/same": "removed/0"}
	for p, w := range want {
		if got[p] != w {
			t.Errorf("diff %s = %q, want %q (all: %v)", p, got[p], w, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("diff lists %v, want %v", got, want)
	}
	_, err = v.Diff(ctx, "main", "nope")
	wantErr(t, err, `no branch "nope"`)
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func TestParsePoint(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in      string
		lsn     uint64
		t       time.Time
		wantErr string
	}{
		{in: "42", lsn: 42},
		{in: "-15m", t: now.Add(-15 * time.Minute)},
		{in: "-1d", t: now.Add(-24 * time.Hour)},
		{in: "-1.5h", t: now.Add(-90 * time.Minute)},
		{in: "2026-11-24T11:00:00Z", t: now.Add(-time.Hour)},
		{in: "2026-11-24T11:00:00.5+01:00", t: now.Add(-2*time.Hour + 500*time.Millisecond)},
		{in: "-0s", wantErr: "bad duration"},
		{in: "-xd", wantErr: "bad day count"},
		{in: "noon", wantErr: "invalid point"},
		{in: "", wantErr: "invalid point"},
	} {
		lsn, tm, err := parsePoint(tc.in, now)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parsePoint(%q) err = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || lsn != tc.lsn || !tm.Equal(tc.t) {
			t.Errorf("parsePoint(%q) = %d, %v, %v; want %d, %v", tc.in, lsn, tm, err, tc.lsn, tc.t)
		}
	}
}

// TestBranchNowHoldsUnsyncedChanges: changes nobody fsynced may linger in
// the committer; a branch made now must still hold them.
func TestBranchNowHoldsUnsyncedChanges(t *testing.T) {
	ctx := context.Background()
	v, main := open(t, testVolume(t), Options{Linger: time.Hour})
	ino, _, errno := main.Create(rootIno, "f", syscall.S_IFREG|0o644, 0, 0, 0, "")
	must(t, errno)
	_, errno = main.Write(ino, []byte("not fsynced"), 0)
	must(t, errno)
	if _, err := v.CreateBranch(ctx, "now", "main", ""); err != nil {
		t.Fatal(err)
	}
	b, err := v.Mount(ctx, "now")
	if err != nil {
		t.Fatal(err)
	}
	if got := fileContent(t, b, "f"); got != "not fsynced" {
		t.Fatalf("branch made now reads %q", got)
	}
}
