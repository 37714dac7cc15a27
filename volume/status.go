package volume

import (
	"context"
	"path/filepath"
	"time"

	"github.com/neonfs/neonfs/objstore"
	"github.com/neonfs/neonfs/raftwal"
	"github.com/neonfs/neonfs/snapshot"
	"github.com/neonfs/neonfs/volume/commit"
)

// Status describes the volume for operators.
type Status struct {
	Dir            string             `json:"dir"`
	Branches       []*snapshot.Branch `json:"branches"`
	Mounted        []string           `json:"mounted"`
	CommittedLSN   uint64             `json:"committed_lsn"`
	LastLogIndex   uint64             `json:"last_log_index"`
	MemtableBytes  int64              `json:"memtable_bytes"`
	FrozenBytes    int64              `json:"frozen_bytes"`
	PendingBytes   int64              `json:"pending_bytes"`
	Layers         int                `json:"layers"`
	LayerBytes     int64              `json:"layer_bytes"`
	ObjectBytes    int64              `json:"object_bytes"`
	Objects        int                `json:"objects"`
	LogBytes       int64              `json:"log_bytes"`
	DiskFull       bool               `json:"disk_full"`
	Flushing       bool               `json:"flushing"` // a flush, merge or gc is running
	Commits        commit.CommitStats `json:"commits"`
	LastFlushError string             `json:"last_flush_error,omitempty"`
	// ObjectStoreError says why the object store could not be listed.
	ObjectStoreError string               `json:"object_store_error,omitempty"`
	LayerCache       *objstore.CacheStats `json:"layer_cache,omitempty"`
	// ReadDepth is the most layers one read consults, over all branches.
	ReadDepth  int    `json:"read_depth"`
	Generation uint64 `json:"generation,omitempty"`
	Manifest   string `json:"manifest,omitempty"` // the last one this open published
	// FencedBy is the generation of a newer writer of the object store.
	FencedBy uint64 `json:"fenced_by,omitempty"`
	// Stopped says why the volume accepts no writes: a committed log entry
	// it cannot apply.
	Stopped string `json:"stopped,omitempty"`
}

// Status reports the volume's state.
func (v *Volume) Status(ctx context.Context) (Status, error) {
	st := Status{Dir: v.dir, Branches: v.fsm.TreeClone().List(), DiskFull: v.gate.Full(), Flushing: v.flushing.Load()}
	v.mu.Lock()
	for _, m := range v.mounts {
		st.Mounted = append(st.Mounted, m.name)
	}
	v.mu.Unlock()
	st.LastLogIndex, _ = v.log.Stats()
	v.settle()
	st.CommittedLSN = v.store.Applied()
	st.MemtableBytes, st.FrozenBytes = v.store.MemBytes()
	st.PendingBytes, _ = v.commit.Stats()
	st.Commits = v.commit.CommitStats()
	for _, l := range v.store.Layers() {
		st.Layers++
		st.LayerBytes += l.Size
	}
	// An unreachable object store is something status reports, not a
	// reason to hang or fail.
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	objs, err := v.store.Objects().List(lctx, "")
	cancel()
	if err != nil {
		st.ObjectStoreError = err.Error()
	}
	for _, o := range objs {
		st.Objects++
		st.ObjectBytes += o.Size
	}
	st.LogBytes = raftwal.LogBytes(filepath.Join(v.dir, "raft"))
	st.ReadDepth = v.readDepth()
	if v.cache != nil {
		cs := v.cache.Stats()
		st.LayerCache = &cs
	}
	st.Generation, st.FencedBy = v.gen, v.fencedBy.Load()
	if p := v.published.Load(); p != nil {
		st.Manifest = *p
	}
	if p := v.flushErr.Load(); p != nil {
		st.LastFlushError = *p
	}
	if h := v.fsm.Halted(); h != nil {
		st.Stopped = h.Error()
	}
	return st, nil
}
