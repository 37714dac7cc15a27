package blockstore

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math"

	"github.com/klauspost/compress/s2"
)

// LayerFormat is the layer format this package writes, and the newest it
// reads: a layer of a higher format is refused, not half-read.
const LayerFormat = 2

// A layer object holds the versions of a set of keys written by the LSNs in
// (MinLSN, MaxLSN]. It is written once by EncodeLayer and never modified.
// All integers are big-endian, like the key encoding. Layout:
//
//	data   | record 0 | record 1 | ... |       one record per distinct key, key order
//	index  | entry 0 | entry 1 | ... |         one entry per record, same order
//	footer | 68 bytes |
//
// record: count u32, then count versions, newest (highest LSN) first, each
//
//	LSN u64 | ValueKind u8 | data length u32 | data
//
// where a kind of 3 (format 2) stores a ValData value compressed with S2
// (github.com/klauspost/compress/s2): Postgres pages are mostly free space
// and padding, and every byte of a layer is written to disk or S3 once per
// flush and again per merge, so compressed layers take that much less of
// the disk the Raft log's fsyncs wait on. A value is compressed only when
// that saves at least an eighth of it.
//
// then crc32c u32 over the key's AppendKey encoding followed by the record
// bytes before the crc. Hashing the key binds a record to its index entry
// without storing the key twice, so a misdirected read cannot return another
// key's data.
//
// index entry: AppendKey(key) | record offset u64 | record length u32 | the
// key's smallest LSN u64 | the record's crc32c u32. Records are contiguous
// from offset 0 and end where the index starts, so every byte of the data
// section is covered by exactly one record checksum. The footer holds the
// index's crc32c; since the index repeats every record's crc, the footer crc
// fingerprints the whole object, which is what cache keys rely on.
//
// footer:
//
//	0  magic "NEONLYR1"     8
//	8  format version u32   (2; 1 is read: no compressed values)
//	12 index crc32c u32
//	16 MinLSN u64
//	24 MaxLSN u64
//	32 entries (versions) u64
//	40 keys u64
//	48 index offset u64
//	56 index length u64
//	64 crc32c of bytes 0..64 u32
const (
	layerMagic         = "NEONLYR1"
	layerFormatVersion = LayerFormat
	layerFooterLen     = 68

	layerVersionHeaderLen = 8 + 1 + 4
	layerMinRecordLen     = 4 + layerVersionHeaderLen + 4
	layerIndexTailLen     = 8 + 4 + 8 + 4
	layerMinKeyLen        = 13
	layerMinIndexEntryLen = layerMinKeyLen + layerIndexTailLen

	// layerScanReadAhead bounds the bytes of consecutive records a Scan
	// fetches in one ranged read: a scan of many small records (all the
	// dirents of a directory) must not cost one object-store round trip
	// per key.
	layerScanReadAhead = 1 << 20

	// fastcache drops entries whose key+value+4 reach 64 KiB; bigger
	// records go through SetBig/GetBig.
	layerCacheMaxEntry = 64 << 10

	// A record of more versions than layerHeadMinVersions, or of more than
	// one version and more bytes than layerHeadMinRecord (two pages), gets
	// its newest version cached on its own (Layer.storeHead).
	layerHeadMinVersions = 4
	layerHeadMinRecord   = 2 * BlockSize

	// valS2 is the on-disk kind of a compressed ValData value. Decoded
	// records keep it until a value is handed out (inflate), so a read
	// decompresses only the version it returns and a merge copies
	// compressed values as they are.
	valS2 ValueKind = 3
	// maxInflated bounds a compressed value's decoded size: values are
	// pages, inodes and dirents, far below it.
	maxInflated = 1 << 20
)

var layerCRCTable = crc32.MakeTable(crc32.Castagnoli)

// LayerMeta describes a layer object.
type LayerMeta struct {
	Name           string
	MinLSN, MaxLSN uint64
	Size           int64
	Keys           int
	// BranchBytes is how many of the layer's bytes hold each branch's
	// versions: what a branch alone costs.
	BranchBytes map[uint32]int64 `json:",omitempty"`
}

// EncodeLayer encodes entries, which must already be sorted (key asc, LSN
// desc); it returns an error (not a panic) if they are not, or if an LSN
// falls outside (minLSN, maxLSN].
func EncodeLayer(entries []Entry, minLSN, maxLSN uint64) ([]byte, error) {
	return AppendLayer(nil, entries, minLSN, maxLSN)
}

// AppendLayer is EncodeLayer into buf's spare capacity: a flusher reuses one
// buffer instead of faulting in a fresh one the size of every layer.
func AppendLayer(buf []byte, entries []Entry, minLSN, maxLSN uint64) ([]byte, error) {
	return appendLayer(buf, entries, minLSN, maxLSN, nil, true)
}

// layerCounts is what appendLayer reports about a layer it encodes.
type layerCounts struct {
	keys int
	// branchBytes is the bytes each branch's versions hold, uncompressed
	// like the memtable's count, so a branch's size does not change when
	// it is flushed.
	branchBytes map[uint32]int64
}

// appendLayer is AppendLayer that also fills counts when not nil. Without
// compress, values are stored as given.
// Compress s2-encodes src (block format) into dst's storage, growing it
// when short, and reports whether that saves an eighth or more: below
// that, the raw bytes are worth more than the decoding they spare.
func Compress(dst, src []byte) ([]byte, bool) {
	dst = s2.Encode(dst[:cap(dst)], src)
	return dst, len(dst) <= len(src)-len(src)/8
}

func appendLayer(buf []byte, entries []Entry, minLSN, maxLSN uint64, counts *layerCounts, compress bool) ([]byte, error) {
	if minLSN > maxLSN {
		return nil, fmt.Errorf("encode layer: MinLSN %d > MaxLSN %d", minLSN, maxLSN)
	}
	size := 0
	for i := range entries {
		e := &entries[i]
		if err := e.Key.Check(); err != nil {
			return nil, fmt.Errorf("encode layer: entry %d: %w", i, err)
		}
		if e.LSN <= minLSN || e.LSN > maxLSN {
			return nil, fmt.Errorf("encode layer: entry %d (%v): LSN %d outside (%d, %d]", i, e.Key, e.LSN, minLSN, maxLSN)
		}
		switch e.Value.Kind {
		case ValData:
			if uint64(len(e.Value.Data)) > math.MaxUint32 {
				return nil, fmt.Errorf("encode layer: entry %d (%v): value of %d bytes too large", i, e.Key, len(e.Value.Data))
			}
		case valS2:
			// A compressed value read from a layer, passed through by a merge.
			if n, err := s2.DecodedLen(e.Value.Data); err != nil || n > maxInflated {
				return nil, fmt.Errorf("encode layer: entry %d (%v): bad compressed value (%d bytes decoded, %v)", i, e.Key, n, err)
			}
		case ValZero, ValTombstone:
			if len(e.Value.Data) != 0 {
				return nil, fmt.Errorf("encode layer: entry %d (%v): value kind %d with data", i, e.Key, e.Value.Kind)
			}
		default:
			return nil, fmt.Errorf("encode layer: entry %d (%v): invalid value kind %d", i, e.Key, e.Value.Kind)
		}
		if i > 0 {
			p := &entries[i-1]
			c := p.Key.Compare(e.Key)
			if c > 0 || c == 0 && p.LSN <= e.LSN {
				return nil, fmt.Errorf("encode layer: entries not sorted: entry %d (%v@%d) after (%v@%d)", i, e.Key, e.LSN, p.Key, p.LSN)
			}
		}
		size += layerVersionHeaderLen + len(e.Value.Data)
	}

	if need := size + len(entries)*(8+layerMinIndexEntryLen+8) + layerFooterLen; cap(buf) < need {
		// A quarter more than this layer needs, so the next flush, a
		// little larger, reuses the buffer (Store.keepBuf) instead of
		// zeroing and faulting in a fresh 100+ MiB.
		buf = make([]byte, 0, need+need/4)
	}
	lw := &layerWriter{buf: buf[:0], compress: compress, counts: counts}
	vs := make([]Version, 0, 16)
	for i := 0; i < len(entries); {
		vs = vs[:0]
		j := i
		for ; j < len(entries) && entries[j].Key.Compare(entries[i].Key) == 0; j++ {
			vs = append(vs, entries[j].Version)
		}
		if err := lw.add(entries[i].Key, vs, nil); err != nil {
			return nil, err
		}
		i = j
	}
	return lw.finish(minLSN, maxLSN)
}

// layerWriter encodes a layer record by record, in key order. With w set,
// it writes the records out as they fill buf, so a merge of gigabytes
// holds only the index in memory; without, buf receives the whole layer.
type layerWriter struct {
	w        io.Writer
	buf      []byte
	written  uint64 // bytes already handed to w
	index    []byte
	versions uint64
	keys     int
	compress bool
	counts   *layerCounts
	kb, zb   []byte
}

// layerWriterFlush is how many bytes a layerWriter with w gathers per write.
const layerWriterFlush = 1 << 20

// add appends the record of key holding vs (newest first). raw, when not
// nil, is that record as stored in another layer, already verified: it is
// copied as it is, its checksum included, instead of being encoded again.
func (lw *layerWriter) add(key Key, vs []Version, raw []byte) error {
	off := lw.written + uint64(len(lw.buf))
	start := len(lw.buf)
	lw.kb = AppendKey(lw.kb[:0], key)
	var crc uint32
	if raw != nil {
		lw.buf = append(lw.buf, raw...)
		crc = binary.BigEndian.Uint32(raw[len(raw)-4:])
	} else {
		lw.buf = binary.BigEndian.AppendUint32(lw.buf, uint32(len(vs)))
		for _, v := range vs {
			kind, data := v.Value.Kind, v.Value.Data
			if lw.compress && kind == ValData && len(data) >= 64 {
				var ok bool
				if lw.zb, ok = Compress(lw.zb, data); ok {
					kind, data = valS2, lw.zb
				}
			}
			lw.buf = binary.BigEndian.AppendUint64(lw.buf, v.LSN)
			lw.buf = append(lw.buf, byte(kind))
			lw.buf = binary.BigEndian.AppendUint32(lw.buf, uint32(len(data)))
			lw.buf = append(lw.buf, data...)
		}
		crc = crc32.Update(crc32.Update(0, layerCRCTable, lw.kb), layerCRCTable, lw.buf[start:])
		lw.buf = binary.BigEndian.AppendUint32(lw.buf, crc)
	}
	n := len(lw.buf) - start
	if uint64(n) > math.MaxUint32 || uint64(len(vs)) > math.MaxUint32 {
		return fmt.Errorf("encode layer: key %v: record of %d bytes too large", key, n)
	}
	if lw.counts != nil {
		for _, v := range vs {
			lw.counts.branchBytes[key.Branch] += int64(logicalSize(v.Value)) + versionOverhead
		}
	}
	lw.index = append(lw.index, lw.kb...)
	lw.index = binary.BigEndian.AppendUint64(lw.index, off)
	lw.index = binary.BigEndian.AppendUint32(lw.index, uint32(n))
	lw.index = binary.BigEndian.AppendUint64(lw.index, vs[len(vs)-1].LSN)
	lw.index = binary.BigEndian.AppendUint32(lw.index, crc)
	lw.keys++
	lw.versions += uint64(len(vs))
	if lw.w != nil && len(lw.buf) >= layerWriterFlush {
		return lw.flush()
	}
	return nil
}

func (lw *layerWriter) flush() error {
	if _, err := lw.w.Write(lw.buf); err != nil {
		return err
	}
	lw.written += uint64(len(lw.buf))
	lw.buf = lw.buf[:0]
	return nil
}

// finish appends the index and the footer. Without w, it returns the
// whole layer; with w, it has written everything and returns nil.
func (lw *layerWriter) finish(minLSN, maxLSN uint64) ([]byte, error) {
	// The in-memory index addresses entries with uint32 offsets.
	if uint64(len(lw.index)) > math.MaxUint32 {
		return nil, fmt.Errorf("encode layer: index of %d bytes too large", len(lw.index))
	}
	indexOff := lw.written + uint64(len(lw.buf))
	lw.buf = append(lw.buf, lw.index...)
	f := len(lw.buf)
	lw.buf = append(lw.buf, layerMagic...)
	lw.buf = binary.BigEndian.AppendUint32(lw.buf, layerFormatVersion)
	lw.buf = binary.BigEndian.AppendUint32(lw.buf, crc32.Checksum(lw.index, layerCRCTable))
	lw.buf = binary.BigEndian.AppendUint64(lw.buf, minLSN)
	lw.buf = binary.BigEndian.AppendUint64(lw.buf, maxLSN)
	lw.buf = binary.BigEndian.AppendUint64(lw.buf, lw.versions)
	lw.buf = binary.BigEndian.AppendUint64(lw.buf, uint64(lw.keys))
	lw.buf = binary.BigEndian.AppendUint64(lw.buf, indexOff)
	lw.buf = binary.BigEndian.AppendUint64(lw.buf, uint64(len(lw.index)))
	lw.buf = binary.BigEndian.AppendUint32(lw.buf, crc32.Checksum(lw.buf[f:], layerCRCTable))
	if lw.counts != nil {
		lw.counts.keys = lw.keys
	}
	if lw.w == nil {
		return lw.buf, nil
	}
	return nil, lw.flush()
}

// size is the bytes of the layer encoded so far.
func (lw *layerWriter) size() int64 { return int64(lw.written) + int64(len(lw.buf)) }

// rawKey is a key parsed in place from its encoding, so index lookups
// compare keys without allocating.
type rawKey struct {
	branch uint32
	kind   Kind
	ino    uint64
	block  uint64
	name   []byte
}

// parseRawKey parses an AppendKey encoding at the start of b and returns it
// with its length.
func parseRawKey(b []byte) (rawKey, int, bool) {
	var r rawKey
	if len(b) < layerMinKeyLen {
		return r, 0, false
	}
	r.branch = binary.BigEndian.Uint32(b)
	r.kind = Kind(b[4])
	r.ino = binary.BigEndian.Uint64(b[5:])
	n := layerMinKeyLen
	switch r.kind {
	case KindInode:
	case KindBlock:
		if len(b) < n+8 {
			return r, 0, false
		}
		r.block = binary.BigEndian.Uint64(b[n:])
		n += 8
	case KindDirent:
		if len(b) < n+1 || len(b) < n+1+int(b[n]) {
			return r, 0, false
		}
		l := int(b[n])
		r.name = b[n+1 : n+1+l]
		n += 1 + l
	default:
		return r, 0, false
	}
	return r, n, true
}

// compare orders like Key.Compare.
func (r rawKey) compare(o rawKey) int {
	if c := cmp.Compare(r.branch, o.branch); c != 0 {
		return c
	}
	if c := cmp.Compare(r.kind, o.kind); c != 0 {
		return c
	}
	if c := cmp.Compare(r.ino, o.ino); c != 0 {
		return c
	}
	if c := cmp.Compare(r.block, o.block); c != 0 {
		return c
	}
	return bytes.Compare(r.name, o.name)
}

// compareKey orders like Key.Compare.
func (r rawKey) compareKey(k Key) int {
	if c := cmp.Compare(r.branch, k.Branch); c != 0 {
		return c
	}
	if c := cmp.Compare(r.kind, k.Kind); c != 0 {
		return c
	}
	if c := cmp.Compare(r.ino, k.Ino); c != 0 {
		return c
	}
	if c := cmp.Compare(r.block, k.Block); c != 0 {
		return c
	}
	n := min(len(r.name), len(k.Name))
	for i := range n {
		if c := cmp.Compare(r.name[i], k.Name[i]); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(r.name), len(k.Name))
}

func (r rawKey) key() Key {
	return Key{Branch: r.branch, Kind: r.kind, Ino: r.ino, Block: r.block, Name: string(r.name)}
}
