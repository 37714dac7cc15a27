package volume

import (
	"encoding/binary"
	"fmt"
	"syscall"
)

// rootIno is the inode of every branch's root directory.
const rootIno = 1

// Attr is an inode's attributes as stored in the block map.
type Attr struct {
	Mode   uint32 // type and permission bits, as in stat(2)
	Uid    uint32
	Gid    uint32
	Nlink  uint32
	Rdev   uint32
	Size   uint64
	Atime  int64 // unix nanoseconds
	Mtime  int64
	Ctime  int64
	Target string // symlink target
}

func (a Attr) IsDir() bool     { return a.Mode&syscall.S_IFMT == syscall.S_IFDIR }
func (a Attr) IsRegular() bool { return a.Mode&syscall.S_IFMT == syscall.S_IFREG }

const attrFormat = 1

func encodeAttr(a Attr) []byte {
	b := make([]byte, 0, 64+len(a.Target))
	b = append(b, attrFormat)
	for _, v := range []uint32{a.Mode, a.Uid, a.Gid, a.Nlink, a.Rdev} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	b = binary.BigEndian.AppendUint64(b, a.Size)
	for _, v := range []int64{a.Atime, a.Mtime, a.Ctime} {
		b = binary.BigEndian.AppendUint64(b, uint64(v))
	}
	return append(b, a.Target...)
}

const attrLen = 1 + 5*4 + 8 + 3*8

func decodeAttr(b []byte) (Attr, error) {
	var a Attr
	if len(b) < attrLen || b[0] != attrFormat {
		return a, fmt.Errorf("malformed inode attributes (%d bytes)", len(b))
	}
	u := func(i int) uint32 { return binary.BigEndian.Uint32(b[1+4*i:]) }
	a.Mode, a.Uid, a.Gid, a.Nlink, a.Rdev = u(0), u(1), u(2), u(3), u(4)
	a.Size = binary.BigEndian.Uint64(b[21:])
	a.Atime = int64(binary.BigEndian.Uint64(b[29:]))
	a.Mtime = int64(binary.BigEndian.Uint64(b[37:]))
	a.Ctime = int64(binary.BigEndian.Uint64(b[45:]))
	a.Target = string(b[attrLen:])
	return a, nil
}

// A dirent value is the child's inode number and file type.
func encodeDirent(ino uint64, mode uint32) []byte {
	b := binary.BigEndian.AppendUint64(nil, ino)
	return binary.BigEndian.AppendUint32(b, mode&syscall.S_IFMT)
}

func decodeDirent(b []byte) (ino uint64, mode uint32, err error) {
	if len(b) != 12 {
		return 0, 0, fmt.Errorf("malformed directory entry (%d bytes)", len(b))
	}
	return binary.BigEndian.Uint64(b), binary.BigEndian.Uint32(b[8:]), nil
}
