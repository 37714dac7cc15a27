package raftwal

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestZeroFSSegments: segments are fully written (no unwritten extents or
// holes for a commit to convert), a spare is prepared for the next one, and
// a second segment takes the spare.
func TestZeroFSSegments(t *testing.T) {
	dir := t.TempDir()
	z := newZeroFS()
	const size = 4 << 20
	allocated := func(path string) int64 {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks * 512
	}
	waitSpare := func() {
		z.mu.Lock()
		ready := z.ready
		z.mu.Unlock()
		select {
		case <-ready:
		case <-time.After(time.Minute):
			t.Fatal("spare segment not ready after a minute")
		}
	}
	for i, name := range []string{"a.wal", "b.wal"} {
		f, err := z.Create(dir, name, size)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("entry"), 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		path := filepath.Join(dir, name)
		if fi, err := os.Stat(path); err != nil || fi.Size() != size {
			t.Fatalf("segment %d: %v, size %v", i, err, fi)
		}
		if got := allocated(path); got < size {
			t.Fatalf("segment %d: %d bytes allocated of %d: not zero-filled", i, got, size)
		}
		waitSpare()
		if fi, err := os.Stat(filepath.Join(dir, spareName)); err != nil || fi.Size() != size {
			t.Fatalf("spare after segment %d: %v", i, err)
		}
	}
	if _, err := z.Create(dir, "a.wal", size); err == nil {
		t.Fatal("Create over an existing segment succeeded")
	}
	w, err := z.OpenWriter(dir, "a.wal")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	// Every Sync, of a created segment or a reopened one, is timed.
	if s := z.syncs.Snapshot(); s.Count != 3 || s.Sum <= 0 {
		t.Errorf("sync histogram: count %d sum %v, want 3 and > 0", s.Count, s.Sum)
	}
}
