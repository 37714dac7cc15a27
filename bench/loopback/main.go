// Command loopback serves a directory through a plain go-fuse loopback
// mounted with the options neonfs uses (writeback cache, xattrs off, long
// entry and attribute timeouts, direct mount as root). bench/pgbench.sh runs
// Postgres on it beside native ext4 and neonfs, so a run shows how much of
// neonfs's gap to native is FUSE itself and how much is neonfs.
//
//	loopback DIR MOUNTPOINT   # serves until SIGINT/SIGTERM, then unmounts
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is a loopback node whose files are opened read-write even when
// asked for write-only: with the writeback cache the kernel reads partial
// pages through any handle (go-fuse's loopback would answer EBADF there).
type node struct{ *fs.LoopbackNode }

var (
	_ fs.NodeWrapChilder = (*node)(nil)
	_ fs.NodeOpener      = (*node)(nil)
	_ fs.NodeCreater     = (*node)(nil)
)

func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &node{ops.(*fs.LoopbackNode)}
}

func readWrite(flags uint32) uint32 {
	if flags&syscall.O_ACCMODE == syscall.O_WRONLY {
		flags = flags&^syscall.O_ACCMODE | syscall.O_RDWR
	}
	return flags
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return n.LoopbackNode.Open(ctx, readWrite(flags))
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return n.LoopbackNode.Create(ctx, name, readWrite(flags), mode, out)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: loopback DIR MOUNTPOINT")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "loopback:", err)
		os.Exit(1)
	}
}

func run(dir, mountpoint string) error {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	root := &fs.LoopbackRoot{Path: dir, Dev: st.Dev}
	root.RootNode = &node{&fs.LoopbackNode{RootData: root}}
	long := time.Minute
	srv, err := fs.Mount(mountpoint, root.RootNode, &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:        true,
			Options:           []string{"default_permissions"},
			FsName:            "loopback:" + dir,
			Name:              "loopback",
			DirectMount:       true,
			DisableXAttrs:     true,
			MaxWrite:          1 << 20,
			ExtraCapabilities: fuse.CAP_WRITEBACK_CACHE,
		},
		EntryTimeout:    &long,
		AttrTimeout:     &long,
		NegativeTimeout: &long,
		NullPermissions: true,
	})
	if err != nil {
		return fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		if err := srv.Unmount(); err != nil {
			fmt.Fprintln(os.Stderr, "loopback: unmount:", err)
		}
	}()
	srv.Wait()
	return nil
}
