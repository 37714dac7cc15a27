package blockstore

import (
	"slices"
)

// segment is a slice of the memtable: the versions applied for LSNs in
// (minLSN, maxLSN]. Only the newest segment takes applies; older ones are
// frozen (immutable) and wait to be written out as a layer. Segment
// boundaries only have to line up with layer boundaries, so a node may
// freeze extra segments locally (for a Raft snapshot) without coordinating.
type segment struct {
	minLSN, maxLSN uint64
	frozen         bool
	keys           map[Key][]Version // versions in ascending LSN order
	bytes          int64
}

func newSegment(after uint64) *segment {
	return &segment{minLSN: after, maxLSN: after, keys: make(map[Key][]Version)}
}

func (s *segment) put(lsn uint64, k Key, v Value) {
	vs := s.keys[k]
	if n := len(vs); n > 0 && vs[n-1].LSN == lsn {
		// A later put of the same key in one entry supersedes the earlier one.
		s.bytes += int64(v.Size() - vs[n-1].Value.Size())
		vs[n-1].Value = v
		return
	}
	if len(vs) == 0 {
		s.bytes += int64(len(AppendKey(nil, k))) + 16
	}
	s.keys[k] = append(vs, Version{LSN: lsn, Value: v})
	s.bytes += int64(v.Size()) + 8
}

// get returns the newest version of k with LSN <= maxLSN.
func (s *segment) get(k Key, maxLSN uint64) (Version, bool) {
	vs := s.keys[k]
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i].LSN <= maxLSN {
			return vs[i], true
		}
	}
	return Version{}, false
}

// entries returns every version in layer order: key ascending, LSN descending.
func (s *segment) entries() []Entry {
	keys := make([]Key, 0, len(s.keys))
	for k := range s.keys {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, Key.Compare)
	var out []Entry
	for _, k := range keys {
		vs := s.keys[k]
		for i := len(vs) - 1; i >= 0; i-- {
			out = append(out, Entry{Key: k, Version: vs[i]})
		}
	}
	return out
}

// mergeEntries merges segments' entries (each already in layer order, and
// covering disjoint LSN ranges) into one layer-ordered list.
func mergeEntries(segs []*segment) []Entry {
	if len(segs) == 1 {
		return segs[0].entries()
	}
	var all []Entry
	for _, s := range segs {
		all = append(all, s.entries()...)
	}
	slices.SortStableFunc(all, func(a, b Entry) int {
		if c := a.Key.Compare(b.Key); c != 0 {
			return c
		}
		if a.LSN > b.LSN {
			return -1
		}
		if a.LSN < b.LSN {
			return 1
		}
		return 0
	})
	return all
}
