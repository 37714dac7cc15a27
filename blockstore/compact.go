package blockstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"syscall"
	"time"

	"github.com/neonfs/neonfs/objstore"

	"golang.org/x/sys/unix"

	"github.com/neonfs/neonfs/durable"
)

// Retain says which versions a merge of layers must keep. A version stays
// readable from its own LSN up to the LSN of the next newer version of the
// key; a merge may drop it only when no reader can land in that span:
// no point at or past Horizon (the retention window, where branches and
// time-travel mounts may reach), and no pinned point of its branch (child
// branches' fork points, open time-travel mounts). Branches that no longer
// exist lose all their versions. The newest version of a key always stays:
// newer ones may live in layers outside the merge.
type Retain struct {
	Horizon uint64
	Pins    map[uint32][]uint64 // per branch, sorted ascending
	Live    map[uint32]bool     // branches that exist
}

// keep filters the versions of one key, newest first, in place.
func (r *Retain) keep(branch uint32, vs []Version) []Version {
	if !r.Live[branch] {
		return vs[:0]
	}
	out := vs[:1]
	pins := r.Pins[branch]
	for i := 1; i < len(vs); i++ {
		from, until := vs[i].LSN, vs[i-1].LSN // readable at [from, until)
		j := sort.Search(len(pins), func(j int) bool { return pins[j] >= from })
		if until > r.Horizon || j < len(pins) && pins[j] < until {
			out = append(out, vs[i])
		}
	}
	return out
}

// MergeStats describes one merge.
type MergeStats struct {
	Inputs       int   `json:"inputs"`
	InputBytes   int64 `json:"input_bytes"`
	OutputBytes  int64 `json:"output_bytes"`
	Versions     int64 `json:"versions"`
	DroppedBytes int64 `json:"dropped_bytes"` // values of versions no reader can reach
}

// mergeReadAhead is how much of an input layer's records a merge reads at
// once: few requests, and memory bounded by the inputs times this.
const mergeReadAhead = 4 << 20

// mergeCursor walks the records of one input layer in key order.
type mergeCursor struct {
	l       *Layer
	i       int
	e       layerIndexEntry
	rec     []byte    // the current record, verified
	vs      []Version // its versions, newest first
	span    []byte    // records read ahead, at spanOff in the data section
	spanOff uint64
}

// next moves to the next record; it returns false past the last.
func (c *mergeCursor) next(ctx context.Context) (bool, error) {
	c.i++
	if c.i >= len(c.l.pos) {
		c.span, c.rec, c.vs = nil, nil, nil
		return false, nil
	}
	c.e = c.l.entry(c.i)
	end := c.e.off + uint64(c.e.n)
	if c.e.off < c.spanOff || end > c.spanOff+uint64(len(c.span)) {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		n := max(uint64(c.e.n), min(mergeReadAhead, c.l.dataLen-c.e.off))
		span, err := c.l.fetch(ctx, c.e.off, n, c.span)
		if err != nil {
			return false, err
		}
		c.span, c.spanOff = span, c.e.off
	}
	c.rec = c.span[c.e.off-c.spanOff : end-c.spanOff]
	vs, err := c.l.decodeRecord(&c.e, c.rec)
	if err != nil {
		forgetCorrupt(c.l.store, c.l.meta.Name, err)
		return false, err
	}
	c.vs = vs
	return true, nil
}

// MergeLayers reads the named layers, which must be adjacent in the store
// (oldest first), and uploads one layer covering their LSN range with the
// versions r keeps. The store does not change until ReplaceLayers applies.
//
// The inputs are read as they are merged, record by record (a k-way merge:
// each layer is in key order), and a record only one input holds, with
// every version kept, is copied as stored. On a store that takes files,
// the output goes straight to one, so a merge of a gigabyte of layers
// holds little more than the new layer's index in memory: on virtual
// machines, faulting in gigabytes of fresh memory costs seconds of CPU
// that Postgres is waiting for.
func (s *Store) MergeLayers(ctx context.Context, names []string, r *Retain) (LayerMeta, MergeStats, error) {
	var st MergeStats
	_, layers, done := s.view()
	defer done()
	refs, err := findRun(layers, names)
	if err != nil {
		return LayerMeta{}, st, err
	}
	// live holds the cursors not yet exhausted, oldest layer first.
	var live []*mergeCursor
	for _, ref := range refs {
		l, err := s.open(ctx, ref)
		if err != nil {
			return LayerMeta{}, st, err
		}
		c := &mergeCursor{l: l, i: -1}
		ok, err := c.next(ctx)
		if err != nil {
			return LayerMeta{}, st, fmt.Errorf("read layer %s: %w", ref.meta.Name, err)
		}
		if ok {
			live = append(live, c)
		}
		st.Inputs++
		st.InputBytes += ref.meta.Size
	}
	minLSN, maxLSN := refs[0].meta.MinLSN, refs[len(refs)-1].meta.MaxLSN
	// A merge is named by when it ran, too: a retried merge of the same
	// range may keep different versions, and objects are never rewritten.
	name := fmt.Sprintf("layers/%020d-%020d-g%d-m%x.layer", minLSN, maxLSN, s.gen.Load(), time.Now().UnixNano())
	counts := layerCounts{branchBytes: make(map[uint32]int64)}
	lw := &layerWriter{compress: true, counts: &counts}
	// The merged layer streams to a local file, so memory stays flat
	// however big the inputs.
	file, err := s.objects.CreateTemp(ctx, name)
	if err != nil {
		return LayerMeta{}, st, fmt.Errorf("merge into %s: %w", name, err)
	}
	defer func() {
		if file != nil {
			objstore.DiscardTemp(file)
		}
	}()
	// Allocated up front for the reason DirStore.Put gives; the output is
	// no bigger than the inputs, and is cut to size below.
	if err := unix.Fallocate(int(file.Fd()), 0, 0, st.InputBytes); errors.Is(err, syscall.ENOSPC) {
		return LayerMeta{}, st, fmt.Errorf("merge into %s: %w", name, err)
	}
	lw.w = &durable.PacedWriter{F: file, Pace: true}
	lw.buf = make([]byte, 0, 2*layerWriterFlush)

	vs := make([]Version, 0, 64)
	var at []*mergeCursor // the cursors at the smallest key
	for len(live) > 0 {
		at = at[:0]
		for _, c := range live {
			switch {
			case len(at) == 0:
				at = append(at, c)
			case c.e.key.compare(at[0].e.key) < 0:
				at = append(at[:0], c)
			case c.e.key.compare(at[0].e.key) == 0:
				at = append(at, c)
			}
		}
		// Layers cover disjoint LSN ranges: newest layer first is
		// newest version first.
		vs = vs[:0]
		for i := len(at) - 1; i >= 0; i-- {
			vs = append(vs, at[i].vs...)
		}
		all := len(vs)
		key := at[0].e.key.key()
		for _, v := range vs {
			st.DroppedBytes += int64(v.Value.Size())
		}
		kept := r.keep(key.Branch, vs)
		for _, v := range kept {
			st.DroppedBytes -= int64(v.Value.Size())
		}
		if len(kept) > 0 {
			var raw []byte
			if len(at) == 1 && len(kept) == all {
				raw = at[0].rec
			}
			if err := lw.add(key, kept, raw); err != nil {
				return LayerMeta{}, st, fmt.Errorf("merge into %s: %w", name, err)
			}
			st.Versions += int64(len(kept))
		}
		for _, c := range at {
			ok, err := c.next(ctx)
			if err != nil {
				return LayerMeta{}, st, fmt.Errorf("read layer %s: %w", c.l.meta.Name, err)
			}
			if !ok {
				live = slices.DeleteFunc(live, func(x *mergeCursor) bool { return x == c })
			}
		}
	}
	if _, err := lw.finish(minLSN, maxLSN); err != nil {
		return LayerMeta{}, st, fmt.Errorf("merge into %s: %w", name, err)
	}
	size := lw.size()
	f := file
	file = nil // from here on, put or removed below
	if err = f.Truncate(size); err != nil {
		objstore.DiscardTemp(f)
	} else {
		err = s.objects.PutFile(ctx, name, f)
	}
	if err != nil {
		return LayerMeta{}, st, fmt.Errorf("upload merged layer %s: %w", name, err)
	}
	meta := LayerMeta{Name: name, MinLSN: minLSN, MaxLSN: maxLSN, Size: size, Keys: counts.keys,
		BranchBytes: counts.branchBytes}
	st.OutputBytes = size
	return meta, st, nil
}

func findRun(layers []*layerRef, names []string) ([]*layerRef, error) {
	if len(names) == 0 {
		return nil, fmt.Errorf("merge of no layers")
	}
	for i, l := range layers {
		if l.meta.Name != names[0] {
			continue
		}
		if i+len(names) > len(layers) {
			break
		}
		run := layers[i : i+len(names)]
		for k, n := range names {
			if run[k].meta.Name != n {
				return nil, fmt.Errorf("layers %s are not adjacent in the store", names)
			}
		}
		return run, nil
	}
	return nil, fmt.Errorf("layer run %s not in the store", names)
}

// ReplaceLayers swaps an adjacent run of layers for the one layer merged
// from them. Applying it again (a replayed entry) changes nothing.
func (s *Store) ReplaceLayers(remove []string, add LayerMeta) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.layers {
		if l.meta.Name == add.Name {
			return nil
		}
	}
	run, err := findRun(s.layers, remove)
	if err != nil {
		return err
	}
	if run[0].meta.MinLSN != add.MinLSN || run[len(run)-1].meta.MaxLSN != add.MaxLSN {
		return fmt.Errorf("merged layer %s does not cover layers %s", add.Name, remove)
	}
	i := slices.Index(s.layers, run[0])
	layers := slices.Clone(s.layers[:i])
	layers = append(layers, &layerRef{meta: add})
	s.layers = append(layers, s.layers[i+len(run):]...)
	s.readMu.Lock()
	s.epoch++
	s.readMu.Unlock()
	return nil
}

// OpenNow opens (reads the footer and index of) the layer name, if the
// store lists it and it is not open yet. The flusher and the merger call
// it right after recording a layer they uploaded, while the object store
// is known to answer: every read that reaches the layers consults the
// newer ones first, so a layer left unopened until its first read would
// hold all reads if the object store went away in between.
func (s *Store) OpenNow(ctx context.Context, name string) error {
	s.mu.RLock()
	var ref *layerRef
	for _, l := range s.layers {
		if l.meta.Name == name {
			ref = l
		}
	}
	s.mu.RUnlock()
	if ref == nil {
		return nil
	}
	// A failure here is the caller's to report, and reads should not be
	// answered with it: they make their own attempt.
	_, err := s.openRef(ctx, ref, false)
	return err
}

// PlanMerge picks the newest run of at least fanout adjacent layers of
// similar size (the largest at most fanout times the smallest) whose total
// stays under maxBytes: size-tiered compaction, which keeps the number of
// layers, and so the layers a read may touch, logarithmic in the data. It
// returns nil when no run qualifies.
func PlanMerge(layers []LayerMeta, fanout int, maxBytes int64) []string {
	for end := len(layers); end >= fanout; end-- {
		lo, hi := layers[end-1].Size, layers[end-1].Size
		var total int64
		start := end
		for start > 0 {
			sz := layers[start-1].Size
			nlo, nhi := min(lo, sz), max(hi, sz)
			if nhi > int64(fanout)*max(nlo, 1) || total+sz > maxBytes {
				break
			}
			lo, hi, total = nlo, nhi, total+sz
			start--
		}
		if end-start >= fanout {
			names := make([]string, 0, end-start)
			for _, l := range layers[start:end] {
				names = append(names, l.Name)
			}
			return names
		}
	}
	return nil
}

// PlanFullMerge groups every layer into adjacent runs of at most maxBytes
// (runs of one layer included: rewriting a layer alone still drops what
// no reader can reach).
func PlanFullMerge(layers []LayerMeta, maxBytes int64) [][]string {
	var runs [][]string
	var cur []string
	var total int64
	for _, l := range layers {
		if len(cur) > 0 && total+l.Size > maxBytes {
			runs = append(runs, cur)
			cur, total = nil, 0
		}
		cur = append(cur, l.Name)
		total += l.Size
	}
	if len(cur) > 0 {
		runs = append(runs, cur)
	}
	return runs
}

// ReadDepth is the most layers one read of a key can consult through
// lineage: for each lineage point, the layers holding LSNs it can see.
func (s *Store) ReadDepth(lineage []ReadPoint) int {
	_, layers, done := s.view()
	defer done()
	n := 0
	for _, p := range lineage {
		for _, l := range layers {
			if l.meta.MinLSN < p.MaxLSN {
				n++
			}
		}
	}
	return n
}
