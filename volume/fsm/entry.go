package fsm

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/klauspost/compress/s2"

	"github.com/neonfs/neonfs/blockstore"
)

// Log entry encoding. Every entry starts with a format version and a type,
// then the proposer's wall-clock time (so an LSN can be found for a time).
const entryFormat = 1

// EntryVersion is the entry vocabulary this binary writes and reads
// (recorded in formats.json): 1 has types 1-5, 2 adds entryPutsS2, 3 adds
// clusters (entryLease, entryFencedPuts, entryNode, entrySwitch). A new
// entry type raises it.
var EntryVersion = 3

// futureVersion, set at link time (-ldflags "-X
// github.com/neonfs/neonfs/volume/fsm.futureVersion=4"), builds a binary
// one entry version ahead, whose version 4 adds entryMark: the rolling
// upgrade test runs two builds of different formats with it.
var futureVersion string

func init() {
	if futureVersion == "4" {
		EntryVersion = 4
	}
}

type entryType uint8

const (
	entryPuts   entryType = 1 // key versions written by a mounted branch
	entryFreeze entryType = 2 // cut the memtable here: the next layer ends at this LSN
	entryLayer  entryType = 3 // a layer object was uploaded; it replaces the memtable below its MaxLSN
	entryBranch entryType = 4 // create, delete or replace a branch (BranchOp)
	entryMerge  entryType = 5 // a merged layer replaces an adjacent run of layers (MergeOp)
	// entryPutsS2 is entryPuts with everything after the header compressed
	// (s2 block format). Postgres rewrites its WAL page whole on every
	// commit, mostly zeros at first, and page images compress too: the
	// log shrinks several times over (a segment written under pgbench
	// compresses 15x), and with it what every commit writes and what
	// segments cost to zero-fill and truncate.
	entryPutsS2 entryType = 6
	// entryLease takes, renews or releases a branch's writer lease (LeaseOp).
	entryLease entryType = 7
	// entryFencedPuts is a puts entry (plain or compressed, whole, header
	// included) after a Fence: the writer's node and lease tokens.
	entryFencedPuts entryType = 8
	// entryNode announces the formats a cluster node's binary knows.
	entryNode entryType = 9
	// entrySwitch moves the cluster to newer formats (every voter knows them).
	entrySwitch entryType = 10
	// entryMark (version 4, futureVersion builds only) records a note; it
	// exists so the upgrade test has a format only the newer build writes.
	entryMark entryType = 11
)

// compressMin is the smallest puts body worth compressing.
const compressMin = 512

// maxEntryBody is the largest body that is compressed. Batches hold a few
// MiB (Options.MaxBatch), but one truncate of a huge file can put more;
// such bodies stay uncompressed, so a compressed entry claiming more than
// this is damaged, and decoding it fails instead of allocating that much.
var maxEntryBody = 256 << 20 // a var so tests can lower it

// MergeOp swaps the layers named in Remove for the layer Add merged from them.
type MergeOp struct {
	Remove []string             `json:"remove"`
	Add    blockstore.LayerMeta `json:"add"`
}

// BranchOp changes the branch tree. It is one log entry whatever the size
// of the data behind the branch: a branch is a pointer into history.
type BranchOp struct {
	Op     string `json:"op"` // OpCreate, OpDelete, OpReplace
	Name   string `json:"name"`
	Parent uint32 `json:"parent,omitempty"`
	// At is the fork LSN; 0 means the LSN just before this entry, so
	// "branch now" is exact without a race against concurrent commits.
	At uint64 `json:"at,omitempty"`
	// Remove lists entries to delete on the new branch: a stale
	// postmaster.pid would stop Postgres from starting on it.
	Remove []DirentRef `json:"remove,omitempty"`
	// For OpReplace: the branch now called Name is renamed OldName (or
	// deleted when OldName is empty), and a new Name is created.
	OldName string `json:"old_name,omitempty"`
	// ParentIsOld makes the replaced branch the new one's parent
	// (restore to a point of its own history).
	ParentIsOld bool `json:"parent_is_old,omitempty"`
}

type DirentRef struct {
	Dir  uint64 `json:"dir"`
	Name string `json:"name"`
}

const (
	OpCreate  = "create"
	OpDelete  = "delete"
	OpReplace = "replace"
)

type record struct {
	Type   entryType
	Time   int64 // unix nanoseconds at proposal
	Puts   []blockstore.Entry
	Layer  blockstore.LayerMeta
	Merge  MergeOp
	Branch BranchOp
	Lease  LeaseOp
	Fence  *Fence // set on fenced puts
	Node   NodeFormats
	Switch Formats
	Mark   string
}

var errBadEntry = errors.New("malformed log entry")

func appendHeader(b []byte, t entryType, now int64) []byte {
	b = append(b, entryFormat, byte(t))
	return binary.AppendVarint(b, now)
}

func appendValue(b []byte, v blockstore.Value) []byte {
	b = append(b, byte(v.Kind))
	b = binary.AppendUvarint(b, uint64(len(v.Data)))
	return append(b, v.Data...)
}

// CheckPut reports whether e can be written in a puts entry and read back
// unchanged. The committer checks each put as it is accepted, so a change
// the log cannot hold fails its caller, never the commit.
func CheckPut(e blockstore.Entry) error {
	if err := e.Key.Check(); err != nil {
		return err
	}
	return e.Value.Check()
}

// EncodePuts encodes a batch, compressed when that pays. Order within a
// batch does not matter: all its puts share one LSN and keys are unique.
// It refuses a batch holding a put CheckPut refuses: an entry that reached
// the log and could not be decoded would stop the volume.
func EncodePuts(now int64, puts map[blockstore.Key]blockstore.Value, sizeHint int) ([]byte, error) {
	need := sizeHint + len(puts)*32 + 16
	scratch := getScratch(need)
	b := appendHeader((*scratch)[:0], entryPuts, now)
	hdr := len(b)
	b = binary.AppendUvarint(b, uint64(len(puts)))
	for k, v := range puts {
		if err := CheckPut(blockstore.Entry{Key: k, Version: blockstore.Version{Value: v}}); err != nil {
			putScratch(scratch, b)
			return nil, fmt.Errorf("encode puts: %w", err)
		}
		b = blockstore.AppendKey(b, k)
		b = appendValue(b, v)
	}
	body := b[hdr:]
	if len(body) >= compressMin && len(body) <= maxEntryBody {
		cs := getScratch(hdr + s2.MaxEncodedLen(len(body)))
		c := appendHeader((*cs)[:0], entryPutsS2, now)
		enc, ok := blockstore.Compress(c[len(c):], body)
		if ok {
			out := append(make([]byte, 0, len(c)+len(enc)), c...)
			out = append(out, enc...)
			putScratch(scratch, b)
			putScratch(cs, c)
			return out, nil
		}
		putScratch(cs, c)
	}
	out := slices.Clone(b)
	putScratch(scratch, b)
	return out, nil
}

// Encoding a batch builds its body and compresses it in scratch buffers
// that are reused: a fresh multi-MiB buffer per entry (a bulk load
// commits hundreds a second) cost the daemon a fifth of its CPU in
// zeroing and page faults. Only the entry itself, sized exactly, is
// allocated: the log and the memtable keep it. Buffers over maxScratch are dropped rather than pinned.
var scratchPool sync.Pool

const maxScratch = 16 << 20

func getScratch(n int) *[]byte {
	if p, ok := scratchPool.Get().(*[]byte); ok && cap(*p) >= n {
		return p
	}
	b := make([]byte, 0, n)
	return &b
}

// putScratch returns a scratch buffer, grown to b, to the pool.
func putScratch(p *[]byte, b []byte) {
	if cap(b) > maxScratch {
		return
	}
	*p = b[:0]
	scratchPool.Put(p)
}

func EncodeFreeze(now int64) []byte { return appendHeader(nil, entryFreeze, now) }

// EncodeLayer records that layer meta was uploaded.
func EncodeLayer(now int64, meta blockstore.LayerMeta) ([]byte, error) {
	return encodeJSON(entryLayer, now, meta)
}

// EncodeBranch records a branch-tree change.
func EncodeBranch(now int64, op BranchOp) ([]byte, error) { return encodeJSON(entryBranch, now, op) }

// EncodeMark records a note (entry version 4 only).
func EncodeMark(now int64, note string) ([]byte, error) {
	if EntryVersion < 4 {
		return nil, errors.New("mark entries need entry format 4")
	}
	return encodeJSON(entryMark, now, note)
}

// EncodeMerge records that a merged layer replaces a run of layers.
func EncodeMerge(now int64, op MergeOp) ([]byte, error) { return encodeJSON(entryMerge, now, op) }

func encodeJSON(t entryType, now int64, v any) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(appendHeader(nil, t, now), j...), nil
}

// DecodePuts decodes a puts entry (compressed or not): the proposal time
// and the puts. Values alias b.
func DecodePuts(b []byte) (int64, []blockstore.Entry, error) {
	r, err := decodeRecord(b)
	if err != nil {
		return 0, nil, err
	}
	if r.Type != entryPuts {
		return 0, nil, fmt.Errorf("%w: entry type %d is not puts", errBadEntry, r.Type)
	}
	return r.Time, r.Puts, nil
}

// decodeRecord decodes an entry. Values alias b: the caller passes a buffer
// it will not reuse.
func decodeRecord(b []byte) (record, error) { return decodeRecordWith(b, nil) }

// decodeRecordWith is decodeRecord for an entry whose puts, when it holds
// any, are known to be known (this node encoded them: FSM.Expect): the
// header and fence are read, the puts body is neither decompressed nor
// decoded.
func decodeRecordWith(b []byte, known []blockstore.Entry) (record, error) {
	var r record
	if len(b) < 3 {
		return r, fmt.Errorf("%w: %d bytes", errBadEntry, len(b))
	}
	if b[0] != entryFormat {
		return r, fmt.Errorf("%w: entry format %d is unknown to this binary (written by a newer neonfs?)", errBadEntry, b[0])
	}
	r.Type = entryType(b[1])
	t, n := binary.Varint(b[2:])
	if n <= 0 {
		return r, fmt.Errorf("%w: time", errBadEntry)
	}
	r.Time = t
	b = b[2+n:]
	switch r.Type {
	case entryPutsS2, entryPuts:
		if known != nil {
			r.Type, r.Puts = entryPuts, known
			return r, nil
		}
	}
	switch r.Type {
	case entryPutsS2:
		n, err := s2.DecodedLen(b)
		if err != nil || n > maxEntryBody {
			return r, fmt.Errorf("%w: compressed puts length", errBadEntry)
		}
		body, err := s2.Decode(make([]byte, n), b)
		if err != nil {
			return r, fmt.Errorf("%w: compressed puts: %v", errBadEntry, err)
		}
		r.Type = entryPuts
		r.Puts, err = decodePuts(body)
		return r, err
	case entryPuts:
		var err error
		r.Puts, err = decodePuts(b)
		return r, err
	case entryFencedPuts:
		fence, inner, err := decodeFence(b)
		if err != nil {
			return r, err
		}
		if len(inner) > 1 && entryType(inner[1]) == entryFencedPuts {
			return r, fmt.Errorf("%w: fenced entry inside a fenced entry", errBadEntry)
		}
		in, err := decodeRecordWith(inner, known)
		if err != nil {
			return r, err
		}
		if in.Type != entryPuts {
			return r, fmt.Errorf("%w: fenced entry holds type %d, not puts", errBadEntry, in.Type)
		}
		in.Time, in.Fence = r.Time, &fence
		return in, nil
	case entryLease:
		if err := json.Unmarshal(b, &r.Lease); err != nil {
			return r, fmt.Errorf("%w: lease: %v", errBadEntry, err)
		}
	case entryNode:
		if err := json.Unmarshal(b, &r.Node); err != nil {
			return r, fmt.Errorf("%w: node formats: %v", errBadEntry, err)
		}
	case entrySwitch:
		if err := json.Unmarshal(b, &r.Switch); err != nil {
			return r, fmt.Errorf("%w: format switch: %v", errBadEntry, err)
		}
	case entryMark:
		if EntryVersion < 4 {
			return r, fmt.Errorf("%w: entry type %d is unknown to this binary (written by a newer neonfs?)", errBadEntry, r.Type)
		}
		if err := json.Unmarshal(b, &r.Mark); err != nil {
			return r, fmt.Errorf("%w: mark: %v", errBadEntry, err)
		}
	case entryFreeze:
	case entryLayer:
		if err := json.Unmarshal(b, &r.Layer); err != nil {
			return r, fmt.Errorf("%w: layer: %v", errBadEntry, err)
		}
	case entryBranch:
		if err := json.Unmarshal(b, &r.Branch); err != nil {
			return r, fmt.Errorf("%w: branch: %v", errBadEntry, err)
		}
	case entryMerge:
		if err := json.Unmarshal(b, &r.Merge); err != nil {
			return r, fmt.Errorf("%w: merge: %v", errBadEntry, err)
		}
	default:
		return r, fmt.Errorf("%w: entry type %d is unknown to this binary (written by a newer neonfs?)", errBadEntry, r.Type)
	}
	return r, nil
}

// decodePuts decodes the body of a puts entry; values alias b.
func decodePuts(b []byte) ([]blockstore.Entry, error) {
	count, n := binary.Uvarint(b)
	if n <= 0 || count > uint64(len(b)) {
		return nil, fmt.Errorf("%w: put count", errBadEntry)
	}
	b = b[n:]
	puts := make([]blockstore.Entry, 0, count)
	for range count {
		k, rest, err := blockstore.DecodeKey(b)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errBadEntry, err)
		}
		if len(rest) < 1 {
			return nil, fmt.Errorf("%w: value", errBadEntry)
		}
		kind := blockstore.ValueKind(rest[0])
		if kind > blockstore.ValTombstone {
			return nil, fmt.Errorf("%w: value kind %d", errBadEntry, kind)
		}
		l, n := binary.Uvarint(rest[1:])
		if n <= 0 || l > uint64(len(rest)-1-n) {
			return nil, fmt.Errorf("%w: value length", errBadEntry)
		}
		rest = rest[1+n:]
		v := blockstore.Value{Kind: kind}
		if l > 0 {
			v.Data = rest[:l:l]
		}
		e := blockstore.Entry{Key: k, Version: blockstore.Version{Value: v}}
		// What the encoder would refuse is damage, not a put.
		if err := CheckPut(e); err != nil {
			return nil, fmt.Errorf("%w: %v", errBadEntry, err)
		}
		puts = append(puts, e)
		b = rest[l:]
	}
	return puts, nil
}
