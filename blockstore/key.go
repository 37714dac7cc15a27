// Package blockstore holds the versioned block map of a volume: every key
// (inode attributes, directory entries, 8 KiB file blocks) has versions
// named by the LSN (Raft index) that wrote them. Recent versions live in an
// in-memory memtable; older ones in immutable, checksummed layer objects in
// an object store (reached through objstore.ObjectStore). It holds keys,
// the memtable, layers and compaction; it never imports the file system,
// the CLI, Raft or network code (S3 is objstore/s3, wired in by the volume).
package blockstore

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// BlockSize is Postgres's page size: one block key holds one page, so a page
// written in one FUSE write is stored (and committed) as one unit.
const BlockSize = 8192

// Kind orders the key space of a branch: metadata before blocks, so a mount
// can scan all metadata without touching data.
type Kind uint8

const (
	KindDirent Kind = 1 // (parent ino, name) -> child
	KindInode  Kind = 2 // ino -> attributes
	KindBlock  Kind = 3 // (ino, block number) -> 8 KiB page
)

func (k Kind) String() string {
	switch k {
	case KindDirent:
		return "dirent"
	case KindInode:
		return "inode"
	case KindBlock:
		return "block"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Key names one versioned item. Block is used only by KindBlock, Name only
// by KindDirent.
type Key struct {
	Branch uint32
	Kind   Kind
	Ino    uint64
	Block  uint64
	Name   string
}

func BlockKey(branch uint32, ino, block uint64) Key {
	return Key{Branch: branch, Kind: KindBlock, Ino: ino, Block: block}
}

func InodeKey(branch uint32, ino uint64) Key {
	return Key{Branch: branch, Kind: KindInode, Ino: ino}
}

func DirentKey(branch uint32, parent uint64, name string) Key {
	return Key{Branch: branch, Kind: KindDirent, Ino: parent, Name: name}
}

func (k Key) String() string {
	switch k.Kind {
	case KindBlock:
		return fmt.Sprintf("b%d/block/%d/%d", k.Branch, k.Ino, k.Block)
	case KindDirent:
		return fmt.Sprintf("b%d/dirent/%d/%q", k.Branch, k.Ino, k.Name)
	}
	return fmt.Sprintf("b%d/%s/%d", k.Branch, k.Kind, k.Ino)
}

// Compare orders keys by branch, kind, ino, block, name: the order of
// layer objects and of scans.
func (k Key) Compare(o Key) int {
	if c := cmp.Compare(k.Branch, o.Branch); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Kind, o.Kind); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Ino, o.Ino); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Block, o.Block); c != 0 {
		return c
	}
	return strings.Compare(k.Name, o.Name)
}

// MaxNameLen is NAME_MAX: the longest dirent name a key holds. Its
// encoding spends one byte on the length, so a longer name cannot be
// written; file systems refuse such names with ENAMETOOLONG.
const MaxNameLen = 255

// ErrNameTooLong is wrapped by Check for a dirent name over MaxNameLen.
var ErrNameTooLong = errors.New("name longer than 255 bytes")

// Check reports whether k survives AppendKey/DecodeKey unchanged. AppendKey
// drops the fields a kind does not use and cannot hold a name over
// MaxNameLen, so a key failing Check would be stored as another key (or,
// in a log entry, make the entry undecodable). Every encoder of keys calls
// it first.
func (k Key) Check() error {
	switch k.Kind {
	case KindBlock:
		if k.Name != "" {
			return fmt.Errorf("key %v: block key with a name", k)
		}
	case KindInode:
		if k.Name != "" || k.Block != 0 {
			return fmt.Errorf("key %v: inode key with a name or block", k)
		}
	case KindDirent:
		if k.Block != 0 {
			return fmt.Errorf("key %v: dirent key with a block", k)
		}
		if len(k.Name) > MaxNameLen {
			return fmt.Errorf("dirent key b%d/%d (%d-byte name): %w", k.Branch, k.Ino, len(k.Name), ErrNameTooLong)
		}
	default:
		return fmt.Errorf("key %v: invalid kind", k)
	}
	return nil
}

// AppendKey appends the binary encoding of k, which must pass Check. The
// encoding of KindBlock and KindInode keys is fixed-size; dirents carry a
// one-byte name length.
func AppendKey(b []byte, k Key) []byte {
	b = binary.BigEndian.AppendUint32(b, k.Branch)
	b = append(b, byte(k.Kind))
	b = binary.BigEndian.AppendUint64(b, k.Ino)
	switch k.Kind {
	case KindBlock:
		b = binary.BigEndian.AppendUint64(b, k.Block)
	case KindDirent:
		b = append(b, byte(len(k.Name)))
		b = append(b, k.Name...)
	}
	return b
}

var errShortKey = errors.New("truncated key")

// DecodeKey decodes a key written by AppendKey and returns the rest of b.
func DecodeKey(b []byte) (Key, []byte, error) {
	var k Key
	if len(b) < 13 {
		return k, nil, errShortKey
	}
	k.Branch = binary.BigEndian.Uint32(b)
	k.Kind = Kind(b[4])
	k.Ino = binary.BigEndian.Uint64(b[5:])
	b = b[13:]
	switch k.Kind {
	case KindBlock:
		if len(b) < 8 {
			return k, nil, errShortKey
		}
		k.Block = binary.BigEndian.Uint64(b)
		b = b[8:]
	case KindDirent:
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return k, nil, errShortKey
		}
		n := int(b[0])
		k.Name = string(b[1 : 1+n])
		b = b[1+n:]
	case KindInode:
	default:
		return k, nil, fmt.Errorf("unknown key kind %d", k.Kind)
	}
	return k, b, nil
}

// ValueKind says how to read a value: bytes, the all-zero block (Postgres
// zero-fills every new 16 MiB WAL segment, so zeros are stored as a marker),
// or a tombstone (the key was deleted at this version).
type ValueKind uint8

const (
	ValData      ValueKind = 0
	ValZero      ValueKind = 1
	ValTombstone ValueKind = 2
)

// Value is one version's payload. Data is nil unless Kind is ValData.
type Value struct {
	Kind ValueKind
	Data []byte
}

// Check reports whether v survives encoding unchanged: a known kind, and
// data only on ValData.
func (v Value) Check() error {
	switch v.Kind {
	case ValData:
	case ValZero, ValTombstone:
		if len(v.Data) > 0 {
			return fmt.Errorf("value kind %d with %d bytes of data", v.Kind, len(v.Data))
		}
	default:
		return fmt.Errorf("unknown value kind %d", v.Kind)
	}
	return nil
}

// Deleted reports whether the key does not exist at this version.
func (v Value) Deleted() bool { return v.Kind == ValTombstone }

// Size is the memory the value holds, for memtable accounting.
func (v Value) Size() int { return len(v.Data) + 1 }

// BlockValue stores a full page, as the zero marker when it is all zeros.
func BlockValue(page []byte) Value {
	if isZero(page) {
		return Value{Kind: ValZero}
	}
	return Value{Kind: ValData, Data: page}
}

func isZero(b []byte) bool {
	var z [512]byte
	for len(b) > 0 {
		n := min(len(b), len(z))
		if !bytes.Equal(b[:n], z[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// Version is the value a key had from LSN on.
type Version struct {
	LSN   uint64
	Value Value
}

// Entry is one key at one version: the unit of memtables, layers and scans.
type Entry struct {
	Key Key
	Version
}
