package fusefs

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/neonfs/neonfs/internal/hist"
)

// A WAL segment (a file in pg_wal) opened O_DSYNC costs one WRITE per
// write(2), which returns committed; its other handles read what it wrote
// (no stale page cache), and fdatasync on it stays a barrier.
func TestWALDirectIO(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts FUSE")
	}
	var rec hist.Timings
	mnt, vol := mountVolumeOpen(t, Options{WritebackCache: true, WALDirectIO: true, Requests: &rec})
	wal := filepath.Join(mnt, "pgdata", "pg_wal")
	if err := os.MkdirAll(wal, 0o700); err != nil {
		t.Fatal(err)
	}
	// Postgres zero-fills a temporary, fsyncs and renames it into place.
	tmp := filepath.Join(wal, "xlogtemp.1")
	seg := filepath.Join(wal, "000000010000000000000001")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 256<<10)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Rename(tmp, seg); err != nil {
		t.Fatal(err)
	}

	w, err := os.OpenFile(seg, os.O_RDWR|syscall.O_DSYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r, err := os.Open(seg) // a walsender's handle
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make([]byte, 8192)
	for i := range 3 {
		// The same page grows, as the WAL's last page does between flushes.
		page := bytes.Repeat([]byte{byte('a' + i)}, 1024*(i+1))
		before := counts(rec.Snapshot())
		m0 := vol.Metrics()
		if _, err := w.WriteAt(page, 8192); err != nil {
			t.Fatal(err)
		}
		m1 := vol.Metrics()
		after := counts(rec.Snapshot())
		for _, op := range []string{"SETATTR", "FSYNC", "GETATTR"} {
			if n := after[op] - before[op]; n != 0 {
				t.Errorf("write %d: %d %s requests, want none (%v)", i, n, op, after)
			}
		}
		if n := after["WRITE"] - before["WRITE"]; n != 1 {
			t.Errorf("write %d: %d WRITE requests, want 1", i, n)
		}
		if m1.PendingBytes != 0 || m1.Commits.Entries == m0.Commits.Entries {
			t.Errorf("write %d returned uncommitted: pending %d bytes, entries %d -> %d",
				i, m1.PendingBytes, m0.Commits.Entries, m1.Commits.Entries)
		}
		if m1.SyncWrites.Count != m0.SyncWrites.Count+1 {
			t.Errorf("write %d: sync writes %d -> %d, want one more", i, m0.SyncWrites.Count, m1.SyncWrites.Count)
		}
		if _, err := r.ReadAt(got[:len(page)], 8192); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:len(page)], page) {
			t.Fatalf("write %d: the reader's handle sees %q..., want %q...", i, got[:4], page[:4])
		}
	}

	// Without O_DSYNC a write is logged without waiting for its commit,
	// even to a file fsynced a moment ago (a bulk load writes WAL this
	// way, thousands of times a second), and fdatasync waits for it.
	p, err := os.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := range 3 {
		m0 := vol.Metrics()
		if _, err := p.WriteAt(bytes.Repeat([]byte{'z'}, 8192), int64(3+i)*8192); err != nil {
			t.Fatal(err)
		}
		if m1 := vol.Metrics(); m1.SyncWrites.Count != m0.SyncWrites.Count {
			t.Errorf("write %d without O_DSYNC waited for its commit", i)
		}
		if err := p.Sync(); err != nil {
			t.Fatal(err)
		}
		if m := vol.Metrics(); m.PendingBytes != 0 {
			t.Errorf("after fdatasync %d bytes still pending", m.PendingBytes)
		}
	}

	// Outside pg_wal, an O_DSYNC handle goes through the page cache: the
	// kernel makes each write durable with its own fsync.
	o, err := os.OpenFile(filepath.Join(mnt, "pgdata", "other"), os.O_CREATE|os.O_RDWR|syscall.O_DSYNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	before := counts(rec.Snapshot())
	if _, err := o.WriteAt(make([]byte, 8192), 0); err != nil {
		t.Fatal(err)
	}
	if n := counts(rec.Snapshot())["FSYNC"] - before["FSYNC"]; n != 1 {
		t.Errorf("O_DSYNC write outside pg_wal: %d FSYNCs, want 1 (the kernel's)", n)
	}
}
