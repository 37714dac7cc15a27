package volume

import (
	"github.com/neonfs/neonfs/internal/hist"
	"github.com/neonfs/neonfs/objstore"
	"github.com/neonfs/neonfs/volume/commit"
)

// FsyncBounds are the buckets, in seconds, of the fsync, sync-write and
// log-sync histograms: a commit is an fdatasync of the log.
var FsyncBounds = hist.SyncBounds

// Metrics is what monitoring reads of an open volume. Unlike Status it is
// cheap: no object-store listing, no walk of the log directory, nothing
// that waits on the network or on a flush, so a scrape may take it at any
// time, also while the volume closes.
type Metrics struct {
	Commits commit.CommitStats
	// BatchPuts and BatchBytes are puts and encoded bytes per committed
	// log entry: how well group commit groups.
	BatchPuts, BatchBytes hist.Snapshot
	// Fsyncs is the seconds each fsync took. SyncWrites is the seconds
	// writes to a file fsynced lately waited for their commit: such a
	// write returns committed (see BranchFS.Write), so Postgres's WAL
	// fsyncs find little left to wait for and its commit latency shows
	// here.
	Fsyncs, SyncWrites hist.Snapshot
	// LogSyncs is the seconds each fdatasync of the log took on this
	// node's disk: a commit's disk share of SyncWrites (empty for a log
	// kept elsewhere, like raftwal/memlog).
	LogSyncs hist.Snapshot

	// Layer record reads served by the in-memory block cache, and those
	// that went to the object store.
	BlockCacheHits, BlockCacheMisses uint64
	// LayerCache is the on-disk layer-chunk cache of a remote store (nil
	// for a local one).
	LayerCache *objstore.CacheStats

	Layers     int
	LayerBytes int64
	// Flush lag: what the log holds that no layer does yet.
	MemtableBytes int64 // the active memtable segment
	FrozenBytes   int64 // frozen segments waiting for their layer
	PendingBytes  int64 // accepted changes not yet committed
	CommittedLSN  uint64
	FlushedLSN    uint64 // the newest LSN a layer covers
	Flushing      bool   // a flush, merge or gc is running
	FlushFailing  bool   // the last flush failed (it is retried)

	Mounts    int
	DiskFull  bool // writes get ENOSPC
	Stopped   bool // a committed entry cannot be applied: no writes
	TakenOver bool // a newer writer (a restored copy) owns the object store
}

// logSyncer is a Log that times its disk syncs (raftwal.Node).
type logSyncer interface {
	LogSyncs() hist.Snapshot
}

// Metrics takes the volume's counters and gauges.
func (v *Volume) Metrics() Metrics {
	v.settle() // first: the counters then cover every fsync returned
	m := Metrics{Commits: v.commit.CommitStats(), Fsyncs: v.fsyncs.Snapshot(), SyncWrites: v.syncWrites.Snapshot(),
		CommittedLSN: v.store.Applied(), Flushing: v.flushing.Load(), FlushFailing: v.flushErr.Load() != nil,
		DiskFull: v.gate.Full(), Stopped: v.fsm.Halted() != nil, TakenOver: v.fencedBy.Load() != 0}
	m.BatchPuts, m.BatchBytes = v.commit.BatchSizes()
	if ls, ok := v.log.(logSyncer); ok {
		m.LogSyncs = ls.LogSyncs()
	} else {
		m.LogSyncs = hist.New(FsyncBounds...).Snapshot()
	}
	m.BlockCacheHits, m.BlockCacheMisses = v.store.CacheStats()
	if v.cache != nil {
		cs := v.cache.Stats()
		m.LayerCache = &cs
	}
	for _, l := range v.store.Layers() {
		m.Layers++
		m.LayerBytes += l.Size
		m.FlushedLSN = max(m.FlushedLSN, l.MaxLSN)
	}
	m.MemtableBytes, m.FrozenBytes = v.store.MemBytes()
	m.PendingBytes = m.Commits.PendingByte
	v.mu.Lock()
	m.Mounts = len(v.mounts)
	v.mu.Unlock()
	return m
}
