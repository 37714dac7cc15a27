package fusefs

import (
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// timedFS counts every request the kernel sends, with the time the file
// system took to answer it, under go-fuse's name for its opcode
// ("WRITE", "FSYNC", "SETATTR"). go-fuse's own Server.RecordLatencies
// does nothing since v2.2, so the counting is done here, around the
// node bridge. The time excludes reading the request from /dev/fuse and
// writing the answer back (and a READ's splice, if any).
//
// A BATCH_FORGET is counted as one FORGET per node it forgets: the bridge
// is called once per node. Requests go-fuse answers itself (INIT,
// INTERRUPT, xattrs, which are disabled) are not counted.
type timedFS struct {
	fuse.RawFileSystem
	rec fuse.LatencyMap
}

func (t *timedFS) done(op string, start time.Time) { t.rec.Add(op, time.Since(start)) }

func (t *timedFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	defer t.done("LOOKUP", time.Now())
	return t.RawFileSystem.Lookup(cancel, h, name, out)
}

func (t *timedFS) Forget(nodeid, nlookup uint64) {
	defer t.done("FORGET", time.Now())
	t.RawFileSystem.Forget(nodeid, nlookup)
}

func (t *timedFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	defer t.done("GETATTR", time.Now())
	return t.RawFileSystem.GetAttr(cancel, in, out)
}

func (t *timedFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	defer t.done("SETATTR", time.Now())
	return t.RawFileSystem.SetAttr(cancel, in, out)
}

func (t *timedFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	defer t.done("MKNOD", time.Now())
	return t.RawFileSystem.Mknod(cancel, in, name, out)
}

func (t *timedFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	defer t.done("MKDIR", time.Now())
	return t.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (t *timedFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	defer t.done("UNLINK", time.Now())
	return t.RawFileSystem.Unlink(cancel, h, name)
}

func (t *timedFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	defer t.done("RMDIR", time.Now())
	return t.RawFileSystem.Rmdir(cancel, h, name)
}

// opRename2 is FUSE_RENAME2 (rename with flags), which go-fuse hands to
// the same method as RENAME.
const opRename2 = 45

func (t *timedFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	op := "RENAME"
	if in.Opcode == opRename2 {
		op = "RENAME2"
	}
	defer t.done(op, time.Now())
	return t.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (t *timedFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	defer t.done("LINK", time.Now())
	return t.RawFileSystem.Link(cancel, in, name, out)
}

func (t *timedFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	defer t.done("SYMLINK", time.Now())
	return t.RawFileSystem.Symlink(cancel, h, target, name, out)
}

func (t *timedFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	defer t.done("READLINK", time.Now())
	return t.RawFileSystem.Readlink(cancel, h)
}

func (t *timedFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	defer t.done("ACCESS", time.Now())
	return t.RawFileSystem.Access(cancel, in)
}

func (t *timedFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	defer t.done("GETXATTR", time.Now())
	return t.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

func (t *timedFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	defer t.done("LISTXATTR", time.Now())
	return t.RawFileSystem.ListXAttr(cancel, h, dest)
}

func (t *timedFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	defer t.done("SETXATTR", time.Now())
	return t.RawFileSystem.SetXAttr(cancel, in, attr, data)
}

func (t *timedFS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	defer t.done("REMOVEXATTR", time.Now())
	return t.RawFileSystem.RemoveXAttr(cancel, h, attr)
}

func (t *timedFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	defer t.done("CREATE", time.Now())
	return t.RawFileSystem.Create(cancel, in, name, out)
}

func (t *timedFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	defer t.done("TMPFILE", time.Now())
	return t.RawFileSystem.Tmpfile(cancel, in, out)
}

func (t *timedFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	defer t.done("OPEN", time.Now())
	return t.RawFileSystem.Open(cancel, in, out)
}

func (t *timedFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	defer t.done("READ", time.Now())
	return t.RawFileSystem.Read(cancel, in, buf)
}

func (t *timedFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	defer t.done("LSEEK", time.Now())
	return t.RawFileSystem.Lseek(cancel, in, out)
}

func (t *timedFS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	defer t.done("GETLK", time.Now())
	return t.RawFileSystem.GetLk(cancel, in, out)
}

func (t *timedFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	defer t.done("SETLK", time.Now())
	return t.RawFileSystem.SetLk(cancel, in)
}

func (t *timedFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	defer t.done("SETLKW", time.Now())
	return t.RawFileSystem.SetLkw(cancel, in)
}

func (t *timedFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	defer t.done("RELEASE", time.Now())
	t.RawFileSystem.Release(cancel, in)
}

// Write is go-fuse's fallback when Writev answers ENOSYS (the node bridge
// implements Writev), so a request is counted by one of the two.
func (t *timedFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	defer t.done("WRITE", time.Now())
	return t.RawFileSystem.Write(cancel, in, data)
}

func (t *timedFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	start := time.Now()
	n, st := t.RawFileSystem.Writev(cancel, in, data)
	if st != fuse.ENOSYS {
		t.done("WRITE", start)
	}
	return n, st
}

func (t *timedFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	defer t.done("COPY_FILE_RANGE", time.Now())
	return t.RawFileSystem.CopyFileRange(cancel, in)
}

func (t *timedFS) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	defer t.done("IOCTL", time.Now())
	return t.RawFileSystem.Ioctl(cancel, in, inbuf, out, outbuf)
}

func (t *timedFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	defer t.done("FLUSH", time.Now())
	return t.RawFileSystem.Flush(cancel, in)
}

func (t *timedFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	defer t.done("FSYNC", time.Now())
	return t.RawFileSystem.Fsync(cancel, in)
}

func (t *timedFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	defer t.done("FALLOCATE", time.Now())
	return t.RawFileSystem.Fallocate(cancel, in)
}

func (t *timedFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	defer t.done("OPENDIR", time.Now())
	return t.RawFileSystem.OpenDir(cancel, in, out)
}

func (t *timedFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	defer t.done("READDIR", time.Now())
	return t.RawFileSystem.ReadDir(cancel, in, out)
}

func (t *timedFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	defer t.done("READDIRPLUS", time.Now())
	return t.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (t *timedFS) ReleaseDir(in *fuse.ReleaseIn) {
	defer t.done("RELEASEDIR", time.Now())
	t.RawFileSystem.ReleaseDir(in)
}

func (t *timedFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	defer t.done("FSYNCDIR", time.Now())
	return t.RawFileSystem.FsyncDir(cancel, in)
}

func (t *timedFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	defer t.done("STATFS", time.Now())
	return t.RawFileSystem.StatFs(cancel, h, out)
}

func (t *timedFS) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	defer t.done("STATX", time.Now())
	return t.RawFileSystem.Statx(cancel, in, out)
}
