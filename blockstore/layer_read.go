package blockstore

// Reading layer objects: opening one (footer, index), point reads, scans,
// and the block cache in front of the object store.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"sort"
	"sync/atomic"

	"github.com/VictoriaMetrics/fastcache"
	"github.com/klauspost/compress/s2"

	"github.com/neonfs/neonfs/objstore"
)

// Layer is an opened layer: footer+index read once and held in memory;
// records fetched with ranged reads (GetRange) and cached. It is immutable
// and safe for concurrent use.
type Layer struct {
	store   objstore.ObjectStore
	cache   *fastcache.Cache
	meta    LayerMeta
	format  uint32
	entries uint64
	dataLen uint64 // the index offset: records fill [0, dataLen)

	// index is the verified raw index section and pos the start of each
	// entry in it: about 4 bytes per key on top of the encoding, instead of
	// a decoded Key (with a string header) per entry.
	index []byte
	pos   []uint32

	// cacheID prefixes cache keys. It includes the footer crc so that two
	// different objects with the same name (say, in two stores sharing a
	// cache) do not share cache entries; a cached record that still fails
	// verification is refetched, not reported corrupt.
	cacheID []byte

	counts *cacheCounts // the store's; nil for a layer opened on its own
}

// cacheCounts counts record reads by where they were served from: the
// block cache (a hit) or the object store (a miss). One read of a record
// is one or the other, however many cache lookups it took.
type cacheCounts struct{ hits, misses atomic.Uint64 }

func (l *Layer) count(hit bool) {
	switch {
	case l.counts == nil:
	case hit:
		l.counts.hits.Add(1)
	default:
		l.counts.misses.Add(1)
	}
}

type layerIndexEntry struct {
	key    rawKey
	rawKey []byte
	off    uint64
	n      uint32
	minLSN uint64
	crc    uint32
}

func layerCorrupt(name, format string, args ...any) error {
	return fmt.Errorf("layer %s: %w: %s", name, objstore.ErrCorrupt, fmt.Sprintf(format, args...))
}

// OpenLayer reads and verifies the footer and the index of the layer object
// name.
func OpenLayer(ctx context.Context, store objstore.ObjectStore, name string, cache *fastcache.Cache) (*Layer, error) {
	size, err := store.Size(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open layer %s: %w", name, err)
	}
	if size < layerFooterLen {
		return nil, layerCorrupt(name, "object of %d bytes is shorter than a footer", size)
	}
	f, err := store.GetRange(ctx, name, size-layerFooterLen, layerFooterLen)
	if err != nil {
		return nil, fmt.Errorf("open layer %s: read footer: %w", name, err)
	}
	if len(f) != layerFooterLen {
		return nil, layerCorrupt(name, "footer read returned %d bytes", len(f))
	}
	if string(f[:8]) != layerMagic {
		return nil, layerCorrupt(name, "bad magic %q", f[:8])
	}
	footerCRC := binary.BigEndian.Uint32(f[64:])
	if crc32.Checksum(f[:64], layerCRCTable) != footerCRC {
		return nil, layerCorrupt(name, "footer checksum mismatch")
	}
	format := binary.BigEndian.Uint32(f[8:])
	if format < 1 || format > layerFormatVersion {
		return nil, layerCorrupt(name, "unsupported format version %d", format)
	}
	indexCRC := binary.BigEndian.Uint32(f[12:])
	minLSN := binary.BigEndian.Uint64(f[16:])
	maxLSN := binary.BigEndian.Uint64(f[24:])
	entries := binary.BigEndian.Uint64(f[32:])
	keys := binary.BigEndian.Uint64(f[40:])
	indexOff := binary.BigEndian.Uint64(f[48:])
	indexLen := binary.BigEndian.Uint64(f[56:])
	body := uint64(size - layerFooterLen)
	switch {
	case minLSN > maxLSN:
		return nil, layerCorrupt(name, "MinLSN %d > MaxLSN %d", minLSN, maxLSN)
	case indexOff > body || indexLen != body-indexOff:
		return nil, layerCorrupt(name, "index [%d, +%d) does not end at the footer (%d)", indexOff, indexLen, body)
	case indexLen > math.MaxUint32:
		return nil, layerCorrupt(name, "index of %d bytes too large", indexLen)
	case keys > indexLen/layerMinIndexEntryLen || entries < keys || entries > indexOff/layerVersionHeaderLen:
		return nil, layerCorrupt(name, "%d keys, %d entries do not fit %d data and %d index bytes", keys, entries, indexOff, indexLen)
	}
	idx, err := store.GetRange(ctx, name, int64(indexOff), int64(indexLen))
	if err != nil {
		return nil, fmt.Errorf("open layer %s: read index: %w", name, err)
	}
	if uint64(len(idx)) != indexLen {
		return nil, layerCorrupt(name, "index read returned %d of %d bytes", len(idx), indexLen)
	}
	if crc32.Checksum(idx, layerCRCTable) != indexCRC {
		return nil, layerCorrupt(name, "index checksum mismatch")
	}

	// The index passed its checksum, so these checks catch encoder bugs and
	// checksum collisions; they also guarantee that lookups can trust it.
	l := &Layer{
		store:   store,
		cache:   cache,
		meta:    LayerMeta{Name: name, MinLSN: minLSN, MaxLSN: maxLSN, Size: size, Keys: int(keys)},
		format:  format,
		entries: entries,
		dataLen: indexOff,
		index:   idx,
		pos:     make([]uint32, 0, keys),
	}
	var prev rawKey
	var next uint64 // where the next record must start
	for p := 0; p < len(idx); {
		k, kl, ok := parseRawKey(idx[p:])
		if !ok {
			return nil, layerCorrupt(name, "index entry at %d: bad key", p)
		}
		if len(idx)-p-kl < layerIndexTailLen {
			return nil, layerCorrupt(name, "index entry at %d: truncated", p)
		}
		t := idx[p+kl:]
		off := binary.BigEndian.Uint64(t)
		n := uint64(binary.BigEndian.Uint32(t[8:]))
		kmin := binary.BigEndian.Uint64(t[12:])
		switch {
		case len(l.pos) > 0 && prev.compare(k) >= 0:
			return nil, layerCorrupt(name, "index entry at %d: key %v not after %v", p, k.key(), prev.key())
		case off != next || n < layerMinRecordLen || n > indexOff-off:
			return nil, layerCorrupt(name, "index entry at %d: record [%d, +%d) not contiguous in data of %d bytes", p, off, n, indexOff)
		case kmin <= minLSN || kmin > maxLSN:
			return nil, layerCorrupt(name, "index entry at %d: LSN %d outside (%d, %d]", p, kmin, minLSN, maxLSN)
		case uint64(len(l.pos)) == keys:
			return nil, layerCorrupt(name, "index holds more than %d keys", keys)
		}
		l.pos = append(l.pos, uint32(p))
		prev = k
		next = off + n
		p += kl + layerIndexTailLen
	}
	if next != indexOff || uint64(len(l.pos)) != keys {
		return nil, layerCorrupt(name, "index holds %d keys covering %d bytes, footer says %d keys, %d bytes", len(l.pos), next, keys, indexOff)
	}
	l.cacheID = binary.BigEndian.AppendUint32(append([]byte(name), 0), footerCRC)
	return l, nil
}

func (l *Layer) Meta() LayerMeta { return l.meta }

// entry decodes index entry i, which OpenLayer verified.
func (l *Layer) entry(i int) layerIndexEntry {
	b := l.index[l.pos[i]:]
	k, kl, _ := parseRawKey(b)
	t := b[kl:]
	return layerIndexEntry{
		key:    k,
		rawKey: b[:kl],
		off:    binary.BigEndian.Uint64(t),
		n:      binary.BigEndian.Uint32(t[8:]),
		minLSN: binary.BigEndian.Uint64(t[12:]),
		crc:    binary.BigEndian.Uint32(t[20:]),
	}
}

// search returns the index of the first key >= k.
func (l *Layer) search(k Key) int {
	return sort.Search(len(l.pos), func(i int) bool {
		r, _, _ := parseRawKey(l.index[l.pos[i]:])
		return r.compareKey(k) >= 0
	})
}

func (l *Layer) cacheKey(off uint64) []byte {
	k := make([]byte, 0, len(l.cacheID)+8)
	k = append(k, l.cacheID...)
	return binary.BigEndian.AppendUint64(k, off)
}

func layerCacheIsBig(ck []byte, n uint32) bool {
	return len(ck)+int(n)+4 >= layerCacheMaxEntry
}

// A key rewritten often has a record of many versions (hundreds of KiB),
// while nearly every read wants the newest. That version is cached on its
// own (LSN, kind, data), taken from a verified record, so such a read
// neither copies nor re-checks the whole record. Only big records get it
// (more than layerHeadMinVersions versions or layerHeadMinRecord bytes,
// see wantHead): a record of a few versions (most pages: written, then
// rewritten once by VACUUM or a checkpoint) is checked and parsed in a
// microsecond, while a cached head is a second, inflated copy of the page,
// 8 KiB more block cache per cold read (measured: a quarter of the
// daemon's CPU during a cold `pgbench -S`, most of it faulting in fresh
// cache memory).
func (l *Layer) headKey(off uint64) []byte { return append(l.cacheKey(off), 'h') }

func wantHead(e *layerIndexEntry, versions int) bool {
	return versions > layerHeadMinVersions || versions > 1 && e.n > layerHeadMinRecord
}

func (l *Layer) headCached(e *layerIndexEntry, maxLSN uint64) (Version, bool) {
	if l.cache == nil {
		return Version{}, false
	}
	b, ok := l.cache.HasGet(nil, l.headKey(e.off))
	if !ok || len(b) < 9 {
		return Version{}, false
	}
	v := Version{LSN: binary.BigEndian.Uint64(b), Value: Value{Kind: ValueKind(b[8])}}
	if v.LSN > maxLSN {
		return Version{}, false
	}
	if v.Value.Kind == ValData {
		v.Value.Data = b[9:]
	}
	l.count(true)
	return v, true
}

func (l *Layer) storeHead(e *layerIndexEntry, v Version) {
	if l.cache == nil || 9+len(v.Value.Data)+len(l.cacheID)+9 >= layerCacheMaxEntry {
		return
	}
	b := make([]byte, 9, 9+len(v.Value.Data))
	binary.BigEndian.PutUint64(b, v.LSN)
	b[8] = byte(v.Value.Kind)
	l.cache.Set(l.headKey(e.off), append(b, v.Value.Data...))
}

// cached returns a copy of the record at e from the cache. The bytes are
// verified by decodeRecord like any others.
func (l *Layer) cached(e *layerIndexEntry) ([]byte, bool) {
	if l.cache == nil {
		return nil, false
	}
	ck := l.cacheKey(e.off)
	if layerCacheIsBig(ck, e.n) {
		b := l.cache.GetBig(nil, ck)
		return b, len(b) == int(e.n)
	}
	b, ok := l.cache.HasGet(nil, ck)
	return b, ok && len(b) == int(e.n)
}

func (l *Layer) has(e *layerIndexEntry) bool {
	return l.cache != nil && l.cache.Has(l.cacheKey(e.off))
}

// storeCache caches a verified record; fastcache copies it.
func (l *Layer) storeCache(e *layerIndexEntry, rec []byte) {
	if l.cache == nil {
		return
	}
	ck := l.cacheKey(e.off)
	if layerCacheIsBig(ck, e.n) {
		l.cache.SetBig(ck, rec)
	} else {
		l.cache.Set(ck, rec)
	}
}

// fetch reads n bytes at off from the data section, into buf's capacity
// when the store can (a merge reuses one buffer per input).
func (l *Layer) fetch(ctx context.Context, off, n uint64, buf []byte) ([]byte, error) {
	b, err := l.store.ReadRange(ctx, l.meta.Name, int64(off), int64(n), buf)
	if err != nil {
		return nil, fmt.Errorf("layer %s: read records at %d: %w", l.meta.Name, off, err)
	}
	if uint64(len(b)) != n {
		return nil, fmt.Errorf("layer %s: read records at %d: got %d of %d bytes: %w", l.meta.Name, off, len(b), n, objstore.ErrCorrupt)
	}
	return b, nil
}

// decodeRecord verifies rec as the record of e and returns its versions,
// newest first. Value data slices rec with capacity capped at their length,
// so appending to one cannot overwrite another.
func (l *Layer) decodeRecord(e *layerIndexEntry, rec []byte) ([]Version, error) {
	bad := func(why string, args ...any) error {
		return fmt.Errorf("layer %s: record at %d: %w: %s", l.meta.Name, e.off, objstore.ErrCorrupt, fmt.Sprintf(why, args...))
	}
	if len(rec) != int(e.n) || len(rec) < layerMinRecordLen {
		return nil, bad("%d bytes, index says %d", len(rec), e.n)
	}
	body := rec[:len(rec)-4]
	crc := crc32.Update(crc32.Update(0, layerCRCTable, e.rawKey), layerCRCTable, body)
	if crc != binary.BigEndian.Uint32(rec[len(rec)-4:]) || crc != e.crc {
		return nil, bad("checksum mismatch")
	}
	count := binary.BigEndian.Uint32(body)
	if count == 0 || uint64(count) > uint64(len(body)-4)/layerVersionHeaderLen {
		return nil, bad("%d versions in %d bytes", count, len(body))
	}
	vs := make([]Version, 0, count)
	p := 4
	for range count {
		if len(body)-p < layerVersionHeaderLen {
			return nil, bad("truncated version at %d", p)
		}
		lsn := binary.BigEndian.Uint64(body[p:])
		kind := ValueKind(body[p+8])
		n := uint64(binary.BigEndian.Uint32(body[p+9:]))
		p += layerVersionHeaderLen
		switch {
		case lsn <= l.meta.MinLSN || lsn > l.meta.MaxLSN:
			return nil, bad("LSN %d outside (%d, %d]", lsn, l.meta.MinLSN, l.meta.MaxLSN)
		case len(vs) > 0 && lsn >= vs[len(vs)-1].LSN:
			return nil, bad("LSN %d not below %d", lsn, vs[len(vs)-1].LSN)
		case n > uint64(len(body)-p):
			return nil, bad("value of %d bytes overruns the record", n)
		}
		v := Version{LSN: lsn, Value: Value{Kind: kind}}
		switch kind {
		case ValData:
			end := p + int(n)
			v.Value.Data = body[p:end:end]
		case valS2:
			end := p + int(n)
			if l.format < 2 {
				return nil, bad("compressed value in a format %d layer", l.format)
			}
			if dn, err := s2.DecodedLen(body[p:end]); err != nil || dn > maxInflated {
				return nil, bad("compressed value of %d bytes: decoded length %d (%v)", n, dn, err)
			}
			v.Value.Data = body[p:end:end]
		case ValZero, ValTombstone:
			if n != 0 {
				return nil, bad("value kind %d with %d bytes", kind, n)
			}
		default:
			return nil, bad("invalid value kind %d", kind)
		}
		p += int(n)
		vs = append(vs, v)
	}
	if p != len(body) {
		return nil, bad("%d trailing bytes", len(body)-p)
	}
	if last := vs[len(vs)-1].LSN; last != e.minLSN {
		return nil, bad("oldest LSN %d, index says %d", last, e.minLSN)
	}
	return vs, nil
}

// fromCache returns the versions of e from the cache. A cached record that
// fails verification is treated as a miss: it can only come from another
// object with the same name and footer crc, and the store has the truth.
func (l *Layer) fromCache(e *layerIndexEntry) ([]Version, bool) {
	rec, ok := l.cached(e)
	if !ok {
		return nil, false
	}
	vs, err := l.decodeRecord(e, rec)
	if err != nil {
		return nil, false
	}
	l.count(true)
	return vs, true
}

// fromStore verifies rec, freshly read from the store, as the record of e
// and caches it.
func (l *Layer) fromStore(e *layerIndexEntry, rec []byte) ([]Version, error) {
	l.count(false)
	vs, err := l.decodeRecord(e, rec)
	if err != nil {
		forgetCorrupt(l.store, l.meta.Name, err)
		return nil, err
	}
	l.storeCache(e, rec)
	return vs, nil
}

// forgetCorrupt makes a caching store drop its copy of a corrupt object,
// so a repaired object is read afresh instead of the bad bytes forever.
func forgetCorrupt(store objstore.ObjectStore, name string, err error) {
	if errors.Is(err, objstore.ErrCorrupt) {
		store.Forget(name)
	}
}

// logicalSize is Value.Size of v decompressed.
func logicalSize(v Value) int {
	if v.Kind == valS2 {
		n, _ := s2.DecodedLen(v.Data) // checked by appendLayer and decodeRecord
		return n + 1
	}
	return v.Size()
}

// inflate returns v with its value decompressed. With fresh, the data never
// aliases the record.
func (l *Layer) inflate(e *layerIndexEntry, v Version, fresh bool) (Version, error) {
	switch {
	case v.Value.Kind == valS2:
		data, err := s2.Decode(nil, v.Value.Data)
		if err != nil {
			return Version{}, fmt.Errorf("layer %s: record at %d: %w: value at LSN %d: %v", l.meta.Name, e.off, objstore.ErrCorrupt, v.LSN, err)
		}
		v.Value = Value{Kind: ValData, Data: data}
	case fresh && v.Value.Data != nil:
		v.Value.Data = bytes.Clone(v.Value.Data)
	}
	return v, nil
}

// Get returns the newest version of key with LSN <= maxLSN in this layer.
// A tombstone is returned like any version: it means the key was deleted.
func (l *Layer) Get(ctx context.Context, key Key, maxLSN uint64) (Version, bool, error) {
	i := l.search(key)
	if i == len(l.pos) {
		return Version{}, false, nil
	}
	e := l.entry(i)
	if e.key.compareKey(key) != 0 || e.minLSN > maxLSN {
		return Version{}, false, nil
	}
	if err := ctx.Err(); err != nil {
		return Version{}, false, err
	}
	if v, ok := l.headCached(&e, maxLSN); ok {
		return v, true, nil
	}
	vs, ok := l.fromCache(&e)
	if !ok {
		rec, err := l.fetch(ctx, e.off, uint64(e.n), nil)
		if err != nil {
			return Version{}, false, err
		}
		if vs, err = l.fromStore(&e, rec); err != nil {
			return Version{}, false, err
		}
	}
	for i, v := range vs {
		if v.LSN <= maxLSN {
			// A fresh copy, so the caller does not pin the whole record,
			// which may hold many older versions.
			v, err := l.inflate(&e, v, true)
			if err != nil {
				return Version{}, false, err
			}
			if i == 0 && wantHead(&e, len(vs)) {
				l.storeHead(&e, v)
			}
			return v, true, nil
		}
	}
	// decodeRecord checked the oldest LSN against the index's minLSN.
	return Version{}, false, errors.New("unreachable: no version below the index's minimum LSN")
}

// Keys calls fn, in key order, for each key in [from, to) that may have a
// version in (lo, hi]. It reads only the index, so it may report a key
// whose versions all fall outside the range (they straddle it).
func (l *Layer) Keys(from, to Key, lo, hi uint64, fn func(Key) error) error {
	if l.meta.MaxLSN <= lo || l.meta.MinLSN >= hi || from.Compare(to) >= 0 {
		return nil
	}
	end := l.search(to)
	for i := l.search(from); i < end; i++ {
		e := l.entry(i)
		if e.minLSN > hi {
			continue
		}
		if err := fn(e.key.key()); err != nil {
			return err
		}
	}
	return nil
}

// Scan calls fn for every version of every key in [from, to) (to
// exclusive), key ascending, LSN descending, only versions with LSN <=
// maxLSN. fn may keep the entries; their Data may share memory with other
// entries of the same scan (but never with the cache or a later call).
// An error from fn stops the scan and is returned unchanged.
func (l *Layer) Scan(ctx context.Context, from, to Key, maxLSN uint64, fn func(Entry) error) error {
	if from.Compare(to) >= 0 {
		return nil
	}
	return l.scan(ctx, l.search(from), l.search(to), maxLSN, fn)
}

// All calls fn for every version in the layer, in layer order (key
// ascending, LSN descending), reading the data section sequentially.
func (l *Layer) All(ctx context.Context, fn func(Entry) error) error {
	return l.scan(ctx, 0, len(l.pos), math.MaxUint64, fn)
}

// scan calls fn for each version at or below maxLSN of the records lo..hi,
// values decompressed; the records read are cached.
func (l *Layer) scan(ctx context.Context, lo, hi int, maxLSN uint64, fn func(Entry) error) error {
	// span holds records read ahead: the bytes at [spanOff, spanOff+len).
	var span []byte
	var spanOff uint64
	for i := lo; i < hi; i++ {
		e := l.entry(i)
		if e.minLSN > maxLSN {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		var vs []Version
		var err error
		end := e.off + uint64(e.n)
		if e.off >= spanOff && end <= spanOff+uint64(len(span)) {
			vs, err = l.fromStore(&e, span[e.off-spanOff:end-spanOff])
		} else if cvs, ok := l.fromCache(&e); ok {
			vs = cvs
		} else {
			// Read this record and the following uncached ones, up to
			// the read-ahead budget, in one request.
			for j := i + 1; j < hi; j++ {
				ej := l.entry(j)
				if ej.off+uint64(ej.n)-e.off > layerScanReadAhead || l.has(&ej) {
					break
				}
				end = ej.off + uint64(ej.n)
			}
			if span, err = l.fetch(ctx, e.off, end-e.off, nil); err != nil {
				return err
			}
			spanOff = e.off
			vs, err = l.fromStore(&e, span[:e.n])
		}
		if err != nil {
			return err
		}
		key := e.key.key()
		for _, v := range vs {
			if v.LSN > maxLSN {
				continue
			}
			if v, err = l.inflate(&e, v, false); err != nil {
				return err
			}
			if err := fn(Entry{Key: key, Version: v}); err != nil {
				return err
			}
		}
	}
	return nil
}
