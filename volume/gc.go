package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/objstore"
	"github.com/neonfs/neonfs/volume/fsm"
)

// Compaction and garbage collection. After each flush the flusher merges
// runs of similar-sized layers (size-tiered, so a read consults a number of
// layers logarithmic in the data); `neonfs gc` rewrites every layer. Both
// drop the versions no reader can reach (blockstore.Retain): superseded
// before the retention window, not under any branch's fork point or open
// time-travel mount, or written by a deleted branch.
//
// A replaced layer is deleted only once (1) a manifest naming its
// replacement is published, so a restore never needs it; (2) no read that
// started before the replacement is still running; (3) no newer writer has
// claimed the store. Objects left behind by a crash between those steps
// are orphans, which a full GC deletes.

const (
	mergeFanout   = 4
	maxMergeBytes = 1 << 30
	// retentionSlack widens the window a little: a branch point checked
	// against the window just before a merge computes its horizon stays
	// readable.
	retentionSlack = time.Minute
)

// retired is a run of layers replaced by a merge, waiting for deletion.
type retired struct {
	names []string
	seq   uint64 // the merge entry: a manifest at or after it no longer names them
	epoch uint64 // the store's layer epoch after the merge
}

// GCResult describes a compaction or GC pass.
type GCResult struct {
	Merges         int    `json:"merges"`
	LayersBefore   int    `json:"layers_before"`
	LayersAfter    int    `json:"layers_after"`
	InputBytes     int64  `json:"input_bytes"`
	OutputBytes    int64  `json:"output_bytes"`
	DroppedBytes   int64  `json:"dropped_bytes"`
	DeletedObjects int    `json:"deleted_objects"`
	DeletedBytes   int64  `json:"deleted_bytes"`
	PendingDeletes int    `json:"pending_deletes"` // replaced layers still being read
	HorizonLSN     uint64 `json:"horizon_lsn"`
	ReadDepth      int    `json:"read_depth"` // most layers one read consults, over all branches
	Skipped        string `json:"skipped,omitempty"`
}

// retain computes what merges must keep now.
func (v *Volume) retain() *blockstore.Retain {
	tree := v.fsm.TreeClone()
	r := &blockstore.Retain{Pins: make(map[uint32][]uint64), Live: make(map[uint32]bool)}
	slack := min(retentionSlack, v.retention/10)
	if h, err := v.fsm.LSNAt(time.Now().Add(-v.retention - slack)); err == nil {
		r.Horizon = h
	}
	pin := func(lineage []blockstore.ReadPoint) {
		for _, p := range lineage {
			if p.MaxLSN != math.MaxUint64 {
				r.Pins[p.Branch] = append(r.Pins[p.Branch], p.MaxLSN)
			}
		}
	}
	for id := range tree.Branches {
		r.Live[id] = true
		pin(tree.Lineage(id, math.MaxUint64))
	}
	v.mu.Lock()
	for _, m := range v.mounts {
		pin(m.lineage)
	}
	v.mu.Unlock()
	for b := range r.Pins {
		slices.Sort(r.Pins[b])
	}
	return r
}

// mayDrop reports whether rewriting layer name alone could drop anything:
// it holds versions older than the window or of a deleted branch.
func mayDrop(layers []blockstore.LayerMeta, name string, r *blockstore.Retain) bool {
	for _, l := range layers {
		if l.Name != name {
			continue
		}
		if l.MinLSN < r.Horizon {
			return true
		}
		for b := range l.BranchBytes {
			if !r.Live[b] {
				return true
			}
		}
		return false
	}
	return false
}

// readDepth is the worst case of layers consulted by one read, over all
// branches.
func (v *Volume) readDepth() int {
	tree := v.fsm.TreeClone()
	worst := 0
	for id := range tree.Branches {
		worst = max(worst, v.store.ReadDepth(tree.Lineage(id, math.MaxUint64)))
	}
	return worst
}

// GC flushes the memtable, rewrites every layer without what no reader can
// reach, and deletes replaced layers and orphaned objects. progress hears
// about each step.
func (v *Volume) GC(ctx context.Context, progress func(format string, args ...any)) (GCResult, error) {
	if v.gen == 0 {
		return GCResult{}, errors.New("volume opened read-only: GC needs the writer (mount it, or run without a daemon)")
	}
	if progress == nil {
		progress = func(string, ...any) {}
	}
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	v.flushing.Store(true)
	defer v.flushing.Store(false)
	if err := v.flushLocked(ctx); err != nil {
		return GCResult{}, fmt.Errorf("flush before gc: %w", err)
	}
	res, err := v.compactLocked(ctx, true, progress)
	if err != nil {
		return res, err
	}
	if res.Skipped == "" {
		n, bytes, err := v.deleteOrphans(ctx, progress)
		res.DeletedObjects += n
		res.DeletedBytes += bytes
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// compactLocked merges layers: every layer when full, else the runs the
// size-tiered policy picks. The caller holds flushMu.
func (v *Volume) compactLocked(ctx context.Context, full bool, progress func(string, ...any)) (GCResult, error) {
	layers := v.store.Layers()
	res := GCResult{LayersBefore: len(layers)}
	if by := v.fencedBy.Load(); by != 0 {
		res.Skipped = fmt.Sprintf("a newer writer (generation %d) owns the object store", by)
		return res, nil
	}
	if v.lastFrozen == nil {
		if err := v.flushLocked(ctx); err != nil {
			return res, err
		}
	}
	r := v.retain()
	res.HorizonLSN = r.Horizon
	var runs [][]string
	if full {
		for _, run := range blockstore.PlanFullMerge(layers, maxMergeBytes) {
			if len(run) > 1 || mayDrop(layers, run[0], r) {
				runs = append(runs, run)
			}
		}
	}
	var seq uint64
	for i := 0; ; i++ {
		var run []string
		if full {
			if i == len(runs) {
				break
			}
			run = runs[i]
		} else if run = blockstore.PlanMerge(v.store.Layers(), mergeFanout, maxMergeBytes); run == nil || i == 64 {
			break
		}
		start := time.Now()
		meta, st, err := v.store.MergeLayers(ctx, run, r)
		if err != nil {
			return res, fmt.Errorf("merge %d layers: %w", len(run), err)
		}
		b, err := fsm.EncodeMerge(now(), fsm.MergeOp{Remove: run, Add: meta})
		if err != nil {
			return res, err
		}
		if seq, _, err = v.log.Apply(b); err != nil {
			return res, fmt.Errorf("record merged layer %s: %w", meta.Name, err)
		}
		v.retired = append(v.retired, retired{names: run, seq: seq, epoch: v.store.Epoch()})
		if err := v.store.OpenNow(ctx, meta.Name); err != nil {
			slog.Warn("open merged layer", "layer", meta.Name, "err", err) // reads open it again
		}
		res.Merges++
		res.InputBytes += st.InputBytes
		res.OutputBytes += st.OutputBytes
		res.DroppedBytes += st.DroppedBytes
		slog.Info("merged layers", "inputs", st.Inputs, "input_bytes", st.InputBytes, "output", meta.Name,
			"output_bytes", st.OutputBytes, "dropped_bytes", st.DroppedBytes, "took", time.Since(start).Round(time.Millisecond))
		if full {
			progress("merge %d/%d: %d layers, %s -> %s (%s unreachable dropped)",
				i+1, len(runs), st.Inputs, HumanBytes(st.InputBytes), HumanBytes(st.OutputBytes), HumanBytes(st.DroppedBytes))
		}
	}
	if res.Merges > 0 {
		if err := v.snapshotAfterMerge(ctx); err != nil {
			return res, err
		}
		if err := v.publishIfChanged(ctx, *v.lastFrozen, seq); err != nil {
			return res, err
		}
	}
	n, bytes, err := v.deleteRetired(ctx)
	res.DeletedObjects, res.DeletedBytes = n, bytes
	res.PendingDeletes = 0
	for _, r := range v.retired {
		res.PendingDeletes += len(r.names)
	}
	res.LayersAfter = len(v.store.Layers())
	res.ReadDepth = v.readDepth()
	if full {
		progress("%d layers -> %d; a read consults at most %d layers", res.LayersBefore, res.LayersAfter, res.ReadDepth)
	}
	return res, err
}

// snapshotAfterMerge takes the log snapshot after merges, which lets
// their inputs go: no state restored from the log may name a deleted
// layer. A snapshot holds the whole memtable, uncompressed, and the
// memtable kept growing while the merges held flushMu (a 710 MB merge
// under TPC-B took 6.6 s and left a 241 MB snapshot, written and synced
// beside the commits). A memtable past a quarter of FlushBytes is flushed
// to a layer first, whose own snapshot then holds only what arrived
// during that flush. The caller holds flushMu.
func (v *Volume) snapshotAfterMerge(ctx context.Context) error {
	if active, frozen := v.store.MemBytes(); active+frozen >= v.opts.FlushBytes/4 {
		snapshotted, err := v.flushLayer(ctx)
		if err != nil {
			return fmt.Errorf("flush before the snapshot after merge: %w", err)
		}
		if snapshotted {
			return nil
		}
	}
	if err := v.log.Snapshot(); err != nil {
		return fmt.Errorf("snapshot after merge: %w", err)
	}
	return nil
}

// fenced re-reads the store's generations: deleting objects another writer
// may use must not race a takeover that happened since the last publish.
func (v *Volume) fenced(ctx context.Context) (bool, error) {
	if v.fencedBy.Load() != 0 {
		return true, nil
	}
	high, _, err := scanManifests(ctx, v.store.Objects())
	if err != nil {
		return false, err
	}
	if high > v.gen {
		v.fencedBy.Store(high)
		slog.Error("another writer claimed this volume's object store (a restored copy?): this volume no longer publishes manifests or deletes objects",
			"generation", v.gen, "newer_generation", high)
		return true, nil
	}
	return false, nil
}

// deleteRetired deletes the replaced layers that are safe to delete. The
// caller holds flushMu.
func (v *Volume) deleteRetired(ctx context.Context) (int, int64, error) {
	var due []retired
	keep := v.retired[:0]
	for _, r := range v.retired {
		if v.pubSeq >= r.seq && !v.store.ReadsBefore(r.epoch) {
			due = append(due, r)
		} else {
			keep = append(keep, r)
		}
	}
	v.retired = keep
	if len(due) == 0 {
		return 0, 0, nil
	}
	if f, err := v.fenced(ctx); err != nil || f {
		v.retired = append(v.retired, due...)
		return 0, 0, err
	}
	var n int
	var bytes int64
	for i, r := range due {
		for _, name := range r.names {
			size, _ := v.store.Objects().Size(ctx, name)
			if err := v.store.Objects().Delete(ctx, name); err != nil && !errors.Is(err, objstore.ErrNotFound) {
				v.retired = append(v.retired, due[i:]...)
				return n, bytes, fmt.Errorf("delete replaced layer %s: %w", name, err)
			}
			n++
			bytes += size
		}
	}
	return n, bytes, nil
}

// deleteOrphans deletes layer objects no layer list names: leftovers of a
// crash between an upload and its log entry, or between a merge and the
// deletion of its inputs. The caller holds flushMu (no upload in flight)
// and has just published, so the store's manifest names only live layers.
func (v *Volume) deleteOrphans(ctx context.Context, progress func(string, ...any)) (int, int64, error) {
	if f, err := v.fenced(ctx); err != nil || f {
		return 0, 0, err
	}
	objs, err := v.store.Objects().List(ctx, "layers/")
	if err != nil {
		return 0, 0, fmt.Errorf("list layers: %w", err)
	}
	live := make(map[string]bool)
	for _, l := range v.store.Layers() {
		live[l.Name] = true
	}
	for _, r := range v.retired {
		for _, name := range r.names {
			live[name] = true
		}
	}
	var n int
	var bytes int64
	for _, o := range objs {
		if live[o.Name] || !strings.HasSuffix(o.Name, ".layer") {
			continue
		}
		if err := v.store.Objects().Delete(ctx, o.Name); err != nil && !errors.Is(err, objstore.ErrNotFound) {
			return n, bytes, fmt.Errorf("delete orphaned object %s: %w", o.Name, err)
		}
		n++
		bytes += o.Size
	}
	if n > 0 {
		progress("deleted %d orphaned layer objects (%s)", n, HumanBytes(bytes))
	}
	tn, tb, err := v.store.Objects().RemoveStaleTemps(staleTempAge)
	if err != nil {
		return n, bytes, err
	}
	if tn > 0 {
		progress("deleted %d temporary files of interrupted uploads (%s)", tn, HumanBytes(tb))
	}
	n, bytes = n+tn, bytes+tb
	return n, bytes, nil
}

// staleTempAge is how long a temporary object file sits unwritten before
// the orphan sweep takes it for a crash's leftover.
const staleTempAge = time.Hour

// HumanBytes renders a byte count for people.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
