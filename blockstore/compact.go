package blockstore

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"
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

// MergeLayers reads the named layers, which must be adjacent in the store
// (oldest first), and uploads one layer covering their LSN range with the
// versions r keeps. The store does not change until ReplaceLayers applies.
func (s *Store) MergeLayers(ctx context.Context, names []string, r *Retain) (LayerMeta, MergeStats, error) {
	var st MergeStats
	_, layers, done := s.view()
	defer done()
	refs, err := findRun(layers, names)
	if err != nil {
		return LayerMeta{}, st, err
	}
	var all []Entry
	for _, ref := range refs {
		l, err := s.open(ctx, ref)
		if err != nil {
			return LayerMeta{}, st, err
		}
		if err := l.allRaw(ctx, func(e Entry) error { all = append(all, e); return nil }); err != nil {
			return LayerMeta{}, st, fmt.Errorf("read layer %s: %w", ref.meta.Name, err)
		}
		st.Inputs++
		st.InputBytes += ref.meta.Size
	}
	// Layers cover disjoint LSN ranges: a stable sort by key, newest
	// first, interleaves them into layer order.
	slices.SortStableFunc(all, func(a, b Entry) int {
		if c := a.Key.Compare(b.Key); c != 0 {
			return c
		}
		return -cmpUint64(a.LSN, b.LSN)
	})
	out := all[:0]
	vs := make([]Version, 0, 16)
	for i := 0; i < len(all); {
		j := i
		vs = vs[:0]
		for ; j < len(all) && all[j].Key == all[i].Key; j++ {
			vs = append(vs, all[j].Version)
		}
		key := all[i].Key
		for _, v := range vs {
			st.DroppedBytes += int64(v.Value.Size())
		}
		kept := r.keep(key.Branch, vs)
		for _, v := range kept {
			st.DroppedBytes -= int64(v.Value.Size())
		}
		// kept aliases vs, not all: all[i:j] is free to overwrite.
		for _, v := range kept {
			out = append(out, Entry{Key: key, Version: v})
		}
		i = j
	}
	minLSN, maxLSN := refs[0].meta.MinLSN, refs[len(refs)-1].meta.MaxLSN
	s.encMu.Lock()
	defer s.encMu.Unlock()
	counts := layerCounts{branchBytes: make(map[uint32]int64)}
	data, err := appendLayer(s.encBuf, out, minLSN, maxLSN, &counts, true)
	if err != nil {
		return LayerMeta{}, st, fmt.Errorf("encode merged layer (%d, %d]: %w", minLSN, maxLSN, err)
	}
	s.keepBuf(data)
	// A merge is named by when it ran, too: a retried merge of the same
	// range may keep different versions, and objects are never rewritten.
	name := fmt.Sprintf("layers/%020d-%020d-g%d-m%x.layer", minLSN, maxLSN, s.gen.Load(), time.Now().UnixNano())
	if err := s.objects.Put(ctx, name, data); err != nil {
		return LayerMeta{}, st, fmt.Errorf("upload merged layer %s: %w", name, err)
	}
	meta := LayerMeta{Name: name, MinLSN: minLSN, MaxLSN: maxLSN, Size: int64(len(data)), Keys: counts.keys,
		BranchBytes: counts.branchBytes}
	st.OutputBytes, st.Versions = meta.Size, int64(len(out))
	return meta, st, nil
}

func cmpUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
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
