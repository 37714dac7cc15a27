package main

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The same null file system on go-fuse's node API, with neonfs's mount
// options: what go-fuse's request loop and bridge add to a request.
type gfRoot struct{ fs.Inode }

type gfFile struct{ fs.Inode }

var (
	_ fs.NodeOnAdder   = (*gfRoot)(nil)
	_ fs.NodeOpener    = (*gfFile)(nil)
	_ fs.NodeWriter    = (*gfFile)(nil)
	_ fs.NodeFsyncer   = (*gfFile)(nil)
	_ fs.NodeGetattrer = (*gfFile)(nil)
)

func (r *gfRoot) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, &gfFile{}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	r.AddChild("f", ch, false)
}

func (f *gfFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (f *gfFile) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	return uint32(len(data)), 0
}

func (f *gfFile) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno { return 0 }

func (f *gfFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o666
	out.Size = 1 << 30
	return 0
}

func serveGoFuse(mnt string) error {
	long := fs.Options{}
	d := time.Hour
	long.EntryTimeout, long.AttrTimeout = &d, &d
	long.MountOptions = fuse.MountOptions{
		AllowOther: true, DirectMount: true, DisableXAttrs: true, MaxWrite: maxWrite,
		DisableSplice: true, FsName: "fusetransport", Name: "fusetransport",
	}
	srv, err := fs.Mount(mnt, &gfRoot{}, &long)
	if err != nil {
		return fmt.Errorf("mount %s: %w", mnt, err)
	}
	slog.Info("mounted", "mountpoint", mnt, "mode", "gofuse")
	srv.Wait()
	return nil
}
