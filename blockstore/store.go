package blockstore

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/neonfs/neonfs/objstore"

	"github.com/VictoriaMetrics/fastcache"
)

// ReadPoint is one step of a branch's ancestry: the branch's own versions
// with LSN <= MaxLSN. A lineage lists the branch itself first, then its
// parent at the fork LSN, and so on up to the root.
type ReadPoint struct {
	Branch uint32
	MaxLSN uint64
}

// Store is the block map of a volume: memtable segments over layers. It is
// fed only by Apply (the FSM) and read by anyone; all methods are safe for
// concurrent use.
//
// Invariant: every segment covers LSNs above every layer, so a read that
// walks segments newest-first and then layers newest-first meets versions
// in descending LSN order and can stop at the first hit.
type Store struct {
	objects objstore.ObjectStore
	cache   *fastcache.Cache
	counts  cacheCounts   // reads of layer records: block cache or object store
	gen     atomic.Uint64 // writer generation, part of every new layer's name

	encMu  sync.Mutex
	encBuf []byte // reused by layer encoding (object stores do not keep Put's data)

	// Readers are counted by the layer epoch they started in, so a layer
	// replaced by a merge is deleted only after every read that might
	// still open it has finished.
	readMu  sync.Mutex
	epoch   uint64
	readers map[uint64]int

	mu      sync.RWMutex
	segs    []*segment  // oldest first; the last is the active one. Replaced, never mutated in place.
	layers  []*layerRef // oldest first. Replaced, never mutated in place.
	applied uint64
}

// layerRef is a layer of the store, opened on first use. An open that
// failed is not the layer's fate: an object store that was unreachable or
// a cached copy found corrupt (and forgotten) can serve it on a later try.
// Failures are remembered for openRetryAfter only, so a layer that cannot
// be opened costs reads one attempt (and one log line) a second, not one
// each.
type layerRef struct {
	meta  LayerMeta
	l     atomic.Pointer[Layer] // set once opened, never cleared
	mu    sync.Mutex            // serialises opening; guards err and errAt
	err   error                 // the last failed open
	errAt time.Time             // when it failed
}

// openRetryAfter is how long a failed layer open is answered from memory
// before the object store is asked again.
var openRetryAfter = time.Second

// NewStore returns an empty store over objects with a block cache of
// cacheBytes.
func NewStore(objects objstore.ObjectStore, cacheBytes int) *Store {
	return &Store{
		objects: objects,
		cache:   fastcache.New(cacheBytes),
		segs:    []*segment{newSegment(0)},
		readers: make(map[uint64]int),
	}
}

// Objects is the object store layers live in.
func (s *Store) Objects() objstore.ObjectStore { return s.objects }

// Apply records the puts of the log entry at lsn. A later put of the same
// key in one call wins. Values are retained, not copied.
func (s *Store) Apply(lsn uint64, puts []Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	act := s.segs[len(s.segs)-1]
	for _, e := range puts {
		act.put(lsn, e.Key, e.Value)
	}
	act.maxLSN = max(act.maxLSN, lsn)
	s.applied = max(s.applied, lsn)
}

// CacheStats counts reads of layer records served by the block cache
// (hits) and from the object store (misses). Memtable reads are neither.
func (s *Store) CacheStats() (hits, misses uint64) {
	return s.counts.hits.Load(), s.counts.misses.Load()
}

// Applied is the highest LSN applied.
func (s *Store) Applied() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.applied
}

// freezeLocked closes the active segment at lsn and opens a new one.
func (s *Store) freezeLocked(lsn uint64) {
	act := s.segs[len(s.segs)-1]
	if len(act.keys) == 0 {
		act.minLSN, act.maxLSN = lsn, lsn
		return
	}
	act.maxLSN = max(act.maxLSN, lsn)
	act.frozen = true
	segs := slices.Clone(s.segs)
	s.segs = append(segs, newSegment(act.maxLSN))
}

// Freeze closes the memtable at lsn: everything applied so far becomes
// eligible for the next layer. Called when the freeze entry at lsn applies,
// so every node cuts at the same LSN.
func (s *Store) Freeze(lsn uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applied = max(s.applied, lsn)
	s.freezeLocked(lsn)
}

// MemBytes returns the bytes held by the active segment and by frozen ones.
func (s *Store) MemBytes() (active, frozen int64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for i, sg := range s.segs {
		if i == len(s.segs)-1 {
			active = sg.bytes
		} else {
			frozen += sg.bytes
		}
	}
	return active, frozen
}

// LayerName is the object name of the layer covering (minLSN, maxLSN]
// written by generation gen. Two writers of one bucket (a volume and its
// restored copy) have different generations, so they never overwrite each
// other's layers; one writer re-uploading after a crash between upload and
// commit rewrites the same object with the same bytes.
func LayerName(minLSN, maxLSN, gen uint64) string {
	return fmt.Sprintf("layers/%020d-%020d-g%d.layer", minLSN, maxLSN, gen)
}

// keepBuf keeps an encoding buffer for the next layer, unless it is
// oversized (a big merge), which would pin that much memory for good.
func (s *Store) keepBuf(b []byte) {
	if cap(b) <= 512<<20 {
		s.encBuf = b
	} else {
		s.encBuf = nil
	}
}

// SetGeneration sets the generation named by the layers written from now on.
func (s *Store) SetGeneration(gen uint64) { s.gen.Store(gen) }

// WriteLayer encodes every frozen segment ending at or before upTo into one
// layer object and uploads it. It does not change the store: the layer
// becomes part of it when AddLayer applies. ok is false when there is
// nothing to write.
func (s *Store) WriteLayer(ctx context.Context, upTo uint64) (meta LayerMeta, ok bool, err error) {
	s.mu.RLock()
	var segs []*segment
	for _, sg := range s.segs {
		if sg.frozen && sg.maxLSN <= upTo {
			segs = append(segs, sg)
		}
	}
	s.mu.RUnlock()
	if len(segs) == 0 {
		return LayerMeta{}, false, nil
	}
	minLSN, maxLSN := segs[0].minLSN, segs[len(segs)-1].maxLSN
	entries := mergeEntries(segs)
	s.encMu.Lock()
	defer s.encMu.Unlock()
	counts := layerCounts{branchBytes: make(map[uint32]int64)}
	data, err := appendLayer(s.encBuf, entries, minLSN, maxLSN, &counts, true)
	if err != nil {
		return LayerMeta{}, false, fmt.Errorf("encode layer (%d, %d]: %w", minLSN, maxLSN, err)
	}
	s.keepBuf(data)
	name := LayerName(minLSN, maxLSN, s.gen.Load())
	if err := s.objects.Put(ctx, name, data); err != nil {
		return LayerMeta{}, false, fmt.Errorf("upload layer %s: %w", name, err)
	}
	return LayerMeta{Name: name, MinLSN: minLSN, MaxLSN: maxLSN, Size: int64(len(data)), Keys: counts.keys,
		BranchBytes: counts.branchBytes}, true, nil
}

// versionOverhead approximates the bytes a version costs beyond its value
// (key, LSN, framing), for per-branch accounting.
const versionOverhead = 32

// BranchBytes reports the bytes of versions each branch wrote, in layers
// and in the memtable: what deleting the branch would free (before
// ancestry is considered), and what it costs beyond its parent.
func (s *Store) BranchBytes() map[uint32]int64 {
	segs, layers, done := s.view()
	defer done()
	out := make(map[uint32]int64)
	for _, r := range layers {
		for b, n := range r.meta.BranchBytes {
			out[b] += n
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, sg := range segs {
		for k, vs := range sg.keys {
			for _, v := range vs {
				out[k.Branch] += int64(v.Value.Size()) + versionOverhead
			}
		}
	}
	return out
}

// KeysWritten calls fn once for each key of branch in [from, to) that may
// have a version with LSN in (lo, hi]: the candidates for a diff. Keys are
// reported with Branch 0; a key whose versions straddle the range may be
// reported too. It reads layer indexes, never data.
func (s *Store) KeysWritten(ctx context.Context, branch uint32, from, to Key, lo, hi uint64, fn func(Key) error) error {
	from.Branch, to.Branch = branch, branch
	segs, layers, done := s.view()
	defer done()
	seen := make(map[Key]bool)
	report := func(k Key) error {
		k.Branch = 0
		if seen[k] {
			return nil
		}
		seen[k] = true
		return fn(k)
	}
	s.mu.RLock()
	var mem []Key
	for _, sg := range segs {
		if sg.maxLSN <= lo || sg.minLSN >= hi {
			continue
		}
		for k, vs := range sg.keys {
			if k.Compare(from) < 0 || k.Compare(to) >= 0 {
				continue
			}
			for _, v := range vs {
				if v.LSN > lo && v.LSN <= hi {
					mem = append(mem, k)
					break
				}
			}
		}
	}
	s.mu.RUnlock()
	for _, k := range mem {
		if err := report(k); err != nil {
			return err
		}
	}
	for _, r := range layers {
		if r.meta.MaxLSN <= lo || r.meta.MinLSN >= hi {
			continue
		}
		l, err := s.open(ctx, r)
		if err != nil {
			return fmt.Errorf("scan branch %d: %w", branch, err)
		}
		if err := l.Keys(from, to, lo, hi, report); err != nil {
			return err
		}
	}
	return nil
}

// AddLayer makes a written layer part of the store and drops the memtable
// segments it covers.
func (s *Store) AddLayer(meta LayerMeta) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.layers {
		if l.meta.Name == meta.Name {
			return // replayed entry
		}
	}
	s.layers = append(slices.Clone(s.layers), &layerRef{meta: meta})
	var keep []*segment
	for _, sg := range s.segs {
		if sg.frozen && sg.maxLSN <= meta.MaxLSN {
			continue
		}
		keep = append(keep, sg)
	}
	s.segs = keep
}

// Layers lists the layers, oldest first.
func (s *Store) Layers() []LayerMeta {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]LayerMeta, len(s.layers))
	for i, l := range s.layers {
		out[i] = l.meta
	}
	return out
}

func (s *Store) open(ctx context.Context, r *layerRef) (*Layer, error) {
	return s.openRef(ctx, r, true)
}

// openRef returns r's layer, opening it if it is not open yet. With
// remember, a failure is logged and answered from memory for
// openRetryAfter; without, a remembered failure does not stop the attempt
// and a new one is not recorded.
func (s *Store) openRef(ctx context.Context, r *layerRef, remember bool) (*Layer, error) {
	if l := r.l.Load(); l != nil {
		return l, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if l := r.l.Load(); l != nil {
		return l, nil
	}
	if remember && r.err != nil && time.Since(r.errAt) < openRetryAfter {
		return nil, r.err
	}
	l, err := OpenLayer(ctx, s.objects, r.meta.Name, s.cache)
	if err != nil {
		forgetCorrupt(s.objects, r.meta.Name, err)
		if remember && ctx.Err() == nil {
			// A cancelled or timed-out read says nothing about the layer.
			r.err, r.errAt = err, time.Now()
			slog.Error("open layer", "layer", r.meta.Name, "err", err)
		}
		return nil, err
	}
	l.counts = &s.counts
	r.err = nil
	r.l.Store(l)
	return l, nil
}

// view captures the read state: frozen segments and layers are immutable,
// so only the active segment needs the lock. done ends the read.
func (s *Store) view() (segs []*segment, layers []*layerRef, done func()) {
	s.mu.RLock()
	segs, layers = s.segs, s.layers
	s.readMu.Lock()
	e := s.epoch
	s.readers[e]++
	s.readMu.Unlock()
	s.mu.RUnlock()
	return segs, layers, func() {
		s.readMu.Lock()
		if s.readers[e]--; s.readers[e] == 0 {
			delete(s.readers, e)
		}
		s.readMu.Unlock()
	}
}

// Epoch is the current layer epoch: it moves on whenever layers leave the
// store.
func (s *Store) Epoch() uint64 {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	return s.epoch
}

// ReadsBefore reports whether any read that started before epoch is still
// running (and so may still open a layer that has since left the store).
func (s *Store) ReadsBefore(epoch uint64) bool {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	for e := range s.readers {
		if e < epoch {
			return true
		}
	}
	return false
}

// Get returns the version of key visible through lineage: the newest
// version on the first lineage point that has one. A tombstone is returned
// as found (it hides the ancestors' versions); callers check Deleted.
// key.Branch is ignored.
func (s *Store) Get(ctx context.Context, key Key, lineage []ReadPoint) (Version, bool, error) {
	segs, layers, done := s.view()
	defer done()
	for _, p := range lineage {
		key.Branch = p.Branch
		for i := len(segs) - 1; i >= 0; i-- {
			sg := segs[i]
			if sg.minLSN >= p.MaxLSN {
				continue
			}
			var v Version
			var ok bool
			if !sg.frozen {
				s.mu.RLock()
				v, ok = sg.get(key, p.MaxLSN)
				s.mu.RUnlock()
			} else {
				v, ok = sg.get(key, p.MaxLSN)
			}
			if ok {
				return v, true, nil
			}
		}
		for i := len(layers) - 1; i >= 0; i-- {
			r := layers[i]
			if r.meta.MinLSN >= p.MaxLSN {
				continue
			}
			l, err := s.open(ctx, r)
			if err != nil {
				return Version{}, false, fmt.Errorf("read %s: %w", key, err)
			}
			v, ok, err := l.Get(ctx, key, p.MaxLSN)
			if err != nil {
				return Version{}, false, fmt.Errorf("read %s: %w", key, err)
			}
			if ok {
				return v, true, nil
			}
		}
	}
	return Version{}, false, nil
}

// ScanLatest calls fn, in key order, for every key in [from, to) visible
// through lineage and not deleted, with its visible version. Keys are
// reported with Branch 0. It loads the whole range into memory: meant for
// metadata, not blocks.
func (s *Store) ScanLatest(ctx context.Context, lineage []ReadPoint, from, to Key, fn func(Entry) error) error {
	segs, layers, done := s.view()
	defer done()
	seen := make(map[Key]Version)
	for _, p := range lineage {
		lo, hi := from, to
		lo.Branch, hi.Branch = p.Branch, p.Branch
		found := make(map[Key]Version)
		consider := func(e Entry) {
			if e.LSN > p.MaxLSN {
				return
			}
			k := e.Key
			k.Branch = 0
			if _, done := seen[k]; done {
				return
			}
			if cur, ok := found[k]; !ok || e.LSN > cur.LSN {
				found[k] = e.Version
			}
		}
		s.mu.RLock()
		for _, sg := range segs {
			for k := range sg.keys {
				if k.Compare(lo) < 0 || k.Compare(hi) >= 0 {
					continue
				}
				if v, ok := sg.get(k, p.MaxLSN); ok {
					consider(Entry{Key: k, Version: v})
				}
			}
		}
		s.mu.RUnlock()
		for _, r := range layers {
			if r.meta.MinLSN >= p.MaxLSN {
				continue
			}
			l, err := s.open(ctx, r)
			if err != nil {
				return fmt.Errorf("scan %s..%s: %w", lo, hi, err)
			}
			if err := l.Scan(ctx, lo, hi, p.MaxLSN, func(e Entry) error { consider(e); return nil }); err != nil {
				return fmt.Errorf("scan %s..%s: %w", lo, hi, err)
			}
		}
		for k, v := range found {
			seen[k] = v
		}
	}
	keys := make([]Key, 0, len(seen))
	for k, v := range seen {
		if !v.Value.Deleted() {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, Key.Compare)
	for _, k := range keys {
		if err := fn(Entry{Key: k, Version: seen[k]}); err != nil {
			return err
		}
	}
	return nil
}

const snapshotMagic = "NEONSNP2"
