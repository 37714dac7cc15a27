// Package fusefs serves a branch of a neonfs volume over FUSE. It only
// translates: every decision is made by volume.BranchFS. It imports only
// volume of neonfs's packages: never the storage below it or the CLI.
package fusefs

import (
	"context"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/neonfs/neonfs/volume"
)

// node is one inode of the mounted branch. The inode number is the
// volume's, so hard links resolve to the same node.
type node struct {
	fs.Inode
	bfs *volume.BranchFS
	// walDirect: open WAL segments with FOPEN_DIRECT_IO (Options.WALDirectIO).
	walDirect bool
}

var (
	_ fs.NodeLookuper    = (*node)(nil)
	_ fs.NodeGetattrer   = (*node)(nil)
	_ fs.NodeSetattrer   = (*node)(nil)
	_ fs.NodeCreater     = (*node)(nil)
	_ fs.NodeMkdirer     = (*node)(nil)
	_ fs.NodeMknoder     = (*node)(nil)
	_ fs.NodeSymlinker   = (*node)(nil)
	_ fs.NodeLinker      = (*node)(nil)
	_ fs.NodeUnlinker    = (*node)(nil)
	_ fs.NodeRmdirer     = (*node)(nil)
	_ fs.NodeRenamer     = (*node)(nil)
	_ fs.NodeReadlinker  = (*node)(nil)
	_ fs.NodeReaddirer   = (*node)(nil)
	_ fs.NodeOpener      = (*node)(nil)
	_ fs.NodeReader      = (*node)(nil)
	_ fs.NodeWriter      = (*node)(nil)
	_ fs.NodeFsyncer     = (*node)(nil)
	_ fs.NodeFlusher     = (*node)(nil)
	_ fs.NodeAllocater   = (*node)(nil)
	_ fs.NodeStatfser    = (*node)(nil)
	_ fs.NodeOnForgetter = (*node)(nil)
)

func (n *node) ino() uint64 { return n.StableAttr().Ino }

func fillAttr(out *fuse.Attr, ino uint64, a volume.Attr) {
	out.Ino = ino
	out.Mode = a.Mode
	out.Nlink = a.Nlink
	out.Uid, out.Gid = a.Uid, a.Gid
	out.Rdev = a.Rdev
	out.Size = a.Size
	out.Blksize = 8192
	out.Blocks = (a.Size + 511) / 512
	out.Atime, out.Atimensec = uint64(a.Atime/1e9), uint32(a.Atime%1e9)
	out.Mtime, out.Mtimensec = uint64(a.Mtime/1e9), uint32(a.Mtime%1e9)
	out.Ctime, out.Ctimensec = uint64(a.Ctime/1e9), uint32(a.Ctime%1e9)
}

func (n *node) child(ctx context.Context, ino uint64, a volume.Attr, out *fuse.EntryOut) *fs.Inode {
	fillAttr(&out.Attr, ino, a)
	return n.NewInode(ctx, &node{bfs: n.bfs, walDirect: n.walDirect}, fs.StableAttr{Mode: a.Mode & syscall.S_IFMT, Ino: ino})
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ino, a, errno := n.bfs.Lookup(n.ino(), name)
	if errno != 0 {
		return nil, errno
	}
	return n.child(ctx, ino, a, out), 0
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	a, errno := n.bfs.GetAttr(n.ino())
	if errno == 0 {
		fillAttr(&out.Attr, n.ino(), a)
	}
	return errno
}

func nanos(t time.Time) *int64 {
	v := t.UnixNano()
	return &v
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	var c volume.AttrChange
	if m, ok := in.GetMode(); ok {
		c.Mode = &m
	}
	if u, ok := in.GetUID(); ok {
		c.Uid = &u
	}
	if g, ok := in.GetGID(); ok {
		c.Gid = &g
	}
	if s, ok := in.GetSize(); ok {
		c.Size = &s
	}
	if t, ok := in.GetATime(); ok {
		c.Atime = nanos(t)
	}
	if t, ok := in.GetMTime(); ok {
		c.Mtime = nanos(t)
	}
	a, errno := n.bfs.SetAttr(n.ino(), c)
	if errno == 0 {
		fillAttr(&out.Attr, n.ino(), a)
	}
	return errno
}

func caller(ctx context.Context) (uid, gid uint32) {
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

func (n *node) create(ctx context.Context, name string, mode, rdev uint32, target string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	uid, gid := caller(ctx)
	ino, a, errno := n.bfs.Create(n.ino(), name, mode, uid, gid, rdev, target)
	if errno != 0 {
		return nil, errno
	}
	return n.child(ctx, ino, a, out), 0
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	in, errno := n.create(ctx, name, syscall.S_IFREG|mode&07777, 0, "", out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	if n.walDirect && isWALDir(n.EmbeddedInode()) {
		return in, walHandle(flags), fuse.FOPEN_DIRECT_IO, 0
	}
	return in, nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.create(ctx, name, syscall.S_IFDIR|mode&07777, 0, "", out)
}

func (n *node) Mknod(ctx context.Context, name string, mode, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.create(ctx, name, mode, dev, "", out)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if target == "" {
		return nil, syscall.ENOENT
	}
	return n.create(ctx, name, syscall.S_IFLNK|0o777, 0, target, out)
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	t := target.EmbeddedInode()
	a, errno := n.bfs.Link(t.StableAttr().Ino, n.ino(), name)
	if errno != 0 {
		return nil, errno
	}
	fillAttr(&out.Attr, t.StableAttr().Ino, a)
	return t, 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.bfs.Remove(n.ino(), name, false)
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	return n.bfs.Remove(n.ino(), name, true)
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np := newParent.EmbeddedInode().StableAttr().Ino
	return n.bfs.Rename(n.ino(), name, np, newName, flags)
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	t, errno := n.bfs.Readlink(n.ino())
	return []byte(t), errno
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	ents, errno := n.bfs.Readdir(n.ino())
	if errno != 0 {
		return nil, errno
	}
	list := make([]fuse.DirEntry, len(ents))
	for i, e := range ents {
		list[i] = fuse.DirEntry{Name: e.Name, Ino: e.Ino, Mode: e.Mode}
	}
	return fs.NewListDirStream(list), 0
}

// Open keeps the kernel's page cache across opens: this daemon is the only
// writer of the branch, so cached pages cannot go stale behind its back.
// WAL segments are the exception (walFile).
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.bfs.ReadOnly() && flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	if n.walDirect {
		if _, parent := n.Parent(); parent != nil && isWALDir(parent) {
			return walHandle(flags), fuse.FOPEN_DIRECT_IO, 0
		}
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// walFile is an open handle of a file in a directory named pg_wal: a
// Postgres WAL segment (or its temporary while it is zero-filled). Every
// handle of such a file bypasses the kernel's page cache
// (FOPEN_DIRECT_IO), so each write(2) reaches the daemon as it is made:
// without the writeback cache's SETATTR for mtime before each fsync, and,
// when Postgres opened the segment O_DSYNC (wal_sync_method =
// open_datasync), as one WRITE that returns once committed: a commit
// costs one FUSE round trip instead of WRITE, SETATTR and FSYNC. All of
// a WAL file's handles are direct, never some cached and some not, so no
// stale cached page can hide a direct write (walsenders reread the last,
// growing page). fsync/fdatasync on them stays a barrier: it waits for
// the file's last change like any other.
type walFile struct{ dsync bool }

func walHandle(openFlags uint32) *walFile {
	// O_SYNC is O_DSYNC plus a bit; both make every write durable.
	return &walFile{dsync: openFlags&syscall.O_DSYNC != 0}
}

// isWALDir reports whether dir is named pg_wal (where Postgres keeps its
// WAL, whatever the data directory's place on the mount).
func isWALDir(dir *fs.Inode) bool {
	name, _ := dir.Parent()
	return name == "pg_wal"
}

// Read serves any handle, write-only ones included: with writeback caching
// the kernel reads partial pages through whatever handle it has.
func (n *node) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	cnt, errno := n.bfs.Read(n.ino(), dest, off)
	if errno != 0 {
		return nil, errno
	}
	return fuse.ReadResultData(dest[:cnt]), 0
}

func (n *node) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	write := n.bfs.Write
	if w, ok := f.(*walFile); ok {
		write = n.bfs.WriteDirect
		if w.dsync {
			write = n.bfs.WriteSync
		}
	}
	cnt, errno := write(n.ino(), data, off)
	return uint32(cnt), errno
}

func (n *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	const fdatasync = 1 // FUSE_FSYNC_FDATASYNC
	return n.bfs.Fsync(n.ino(), flags&fdatasync != 0)
}

// Flush (close) does not wait for the log: durability is fsync's job.
func (n *node) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return 0 }

func (n *node) Allocate(ctx context.Context, f fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	return n.bfs.Allocate(n.ino(), off, size, mode)
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	st, err := n.bfs.Statfs()
	if err != nil {
		return syscall.EIO
	}
	out.Bsize = uint32(st.Bsize)
	out.Frsize = uint32(st.Bsize)
	out.Blocks, out.Bfree, out.Bavail = st.Blocks, st.Bfree, st.Bavail
	out.Files, out.Ffree = st.Files, st.Ffree
	out.NameLen = 255
	return 0
}

func (n *node) OnForget() { n.bfs.Forget(n.ino()) }
