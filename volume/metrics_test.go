package volume

import (
	"bytes"
	"context"
	"syscall"
	"testing"
)

// Metrics count fsyncs, group-commit batches, layers and block-cache
// reads, without touching the object store.
func TestMetrics(t *testing.T) {
	v, f := open(t, testVolume(t), Options{})
	defer v.Close()
	before := v.Metrics()
	if before.Fsyncs.Count != 0 || before.Mounts != 1 || len(before.Fsyncs.Bounds) != len(FsyncBounds) {
		t.Fatalf("fresh volume: %+v", before)
	}
	ino, _, errno := f.Create(rootIno, "f", syscall.S_IFREG|0o600, 0, 0, 0, "")
	must(t, errno)
	_, errno = f.Write(ino, bytes.Repeat([]byte{7}, 3*bs), 0)
	must(t, errno)
	must(t, f.Fsync(ino, false))
	must(t, f.Fsync(ino, true)) // nothing left to wait for: still an fsync

	m := v.Metrics()
	if m.Fsyncs.Count != 2 || m.Fsyncs.Sum <= 0 {
		t.Errorf("fsync histogram: count %d sum %v, want 2 and > 0", m.Fsyncs.Count, m.Fsyncs.Sum)
	}
	// Each committed entry cost the log one fdatasync (raft's own entries
	// too, so at least as many).
	if got, want := m.LogSyncs.Count-before.LogSyncs.Count, m.Commits.Entries-before.Commits.Entries; got < want || m.LogSyncs.Sum <= 0 {
		t.Errorf("log syncs: %d (sum %v) for %d entries", got, m.LogSyncs.Sum, want)
	}
	var n uint64
	for _, c := range m.Fsyncs.Counts {
		n += c
	}
	if n != m.Fsyncs.Count {
		t.Errorf("fsync buckets hold %d, count %d", n, m.Fsyncs.Count)
	}
	if m.Commits.Entries <= before.Commits.Entries || m.BatchPuts.Count != m.Commits.Entries-before.Commits.Entries ||
		m.BatchBytes.Count != m.BatchPuts.Count {
		t.Errorf("commits %d (before %d), batch histograms %d and %d", m.Commits.Entries, before.Commits.Entries,
			m.BatchPuts.Count, m.BatchBytes.Count)
	}
	// The three blocks and the inode went in together, or with the create.
	if m.BatchPuts.Sum < 4 || m.BatchPuts.Sum != float64(m.Commits.Puts-before.Commits.Puts) {
		t.Errorf("batch puts sum %v, commit puts %d", m.BatchPuts.Sum, m.Commits.Puts-before.Commits.Puts)
	}
	if m.MemtableBytes == 0 || m.CommittedLSN <= m.FlushedLSN {
		t.Errorf("before a flush: memtable %d bytes, committed LSN %d, flushed LSN %d", m.MemtableBytes, m.CommittedLSN, m.FlushedLSN)
	}

	if err := v.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	flushed := v.Metrics()
	m = flushed
	if m.Layers != before.Layers+1 || m.LayerBytes <= before.LayerBytes || m.MemtableBytes != 0 || m.FrozenBytes != 0 ||
		m.FlushedLSN == 0 || m.FlushedLSN != m.CommittedLSN {
		t.Errorf("after a flush: %d layers (%d bytes), memtable %d+%d bytes, committed LSN %d, flushed %d",
			m.Layers, m.LayerBytes, m.MemtableBytes, m.FrozenBytes, m.CommittedLSN, m.FlushedLSN)
	}
	// The first read of the block comes from the layer object, the
	// second from the block cache.
	buf := make([]byte, bs)
	for range 2 {
		if _, errno := f.Read(ino, buf, bs); errno != 0 || buf[0] != 7 {
			t.Fatalf("read: %v, %d", errno, buf[0])
		}
	}
	m = v.Metrics()
	if hits, misses := m.BlockCacheHits-flushed.BlockCacheHits, m.BlockCacheMisses-flushed.BlockCacheMisses; hits != 1 || misses != 1 {
		t.Errorf("block cache: %d hits, %d misses; want 1 and 1", hits, misses)
	}
	if m.LayerCache != nil || m.DiskFull || m.Stopped || m.TakenOver || m.FlushFailing {
		t.Errorf("a healthy local volume: %+v", m)
	}
}
