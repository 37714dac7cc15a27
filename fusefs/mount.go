package fusefs

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/neonfs/neonfs/volume"
)

// Options tune a mount.
type Options struct {
	// WritebackCache lets the kernel page cache absorb writes until fsync or
	// writeback (the largest single speed lever measured). The kernel may
	// then send one 8 KiB page as two 4 KiB writes at different times, so a
	// page is atomic only as the daemon receives it; Postgres's
	// full_page_writes repairs such a torn page after a crash.
	WritebackCache bool
	Debug          bool
	// ReadAheadKB is the kernel's readahead window for the mount (the
	// FUSE connection's bdi); 0 means DefaultReadAheadKB, -1 the kernel's
	// own 128 KiB.
	ReadAheadKB int
	// Requests, if not nil, counts every FUSE request with the time the
	// file system took, by go-fuse's opcode name ("WRITE", "FSYNC"); it
	// is called on every request, so Add must be cheap and safe for
	// concurrent use. One recorder may serve several mounts.
	Requests fuse.LatencyMap
	// WALDirectIO opens Postgres WAL segments (files in a directory named
	// pg_wal) with FOPEN_DIRECT_IO, and makes a write through a handle
	// opened O_DSYNC return once committed (see walFile).
	WALDirectIO bool
	// MaxBackground is the kernel's limit of background requests
	// (writeback, readahead, async reads) in flight; 0 is its default, 12.
	MaxBackground int
}

// DefaultReadAheadKB: a sequential read of a cold 512 MiB file went from
// 1.2-1.3 s with the kernel's 128 KiB to 0.7-0.95 s with 1 MiB (one READ
// round trip per MiB instead of per 128 KiB); 4 MiB was no better. Random
// reads are not affected: the kernel grows the window only for
// sequential access.
const DefaultReadAheadKB = 1024

// Mount serves bfs at mountpoint. The caller waits on the returned server
// and unmounts it.
func Mount(bfs *volume.BranchFS, mountpoint string, o Options) (*fuse.Server, error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("mountpoint %s: %w", abs, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("mountpoint %s is not a directory", abs)
	}
	if mounted, err := IsMounted(abs); err != nil {
		return nil, err
	} else if mounted {
		return nil, fmt.Errorf("mountpoint %s is already mounted (unmount it first)", abs)
	}
	long := time.Minute
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:    true,
			Options:       []string{"default_permissions"},
			FsName:        "neonfs:" + bfs.Name(),
			Name:          "neonfs",
			DirectMount:   true,
			DisableXAttrs: true,
			MaxWrite:      1 << 20,
			MaxBackground: o.MaxBackground,
			// go-fuse tries a pipe splice on every READ reply before falling
			// back to a copy, and neonfs never hands it a file to splice
			// from: about 8% of the daemon's CPU in a cold pgbench -S.
			DisableSplice: true,
			Debug:         o.Debug,
		},
		// The daemon is the only writer of a mounted branch, so the kernel can
		// cache names and attributes for long.
		EntryTimeout:    &long,
		AttrTimeout:     &long,
		NegativeTimeout: &long,
		NullPermissions: true,
		RootStableAttr:  &fs.StableAttr{Ino: 1},
	}
	if o.WritebackCache {
		opts.MountOptions.ExtraCapabilities |= fuse.CAP_WRITEBACK_CACHE
	}
	if bfs.ReadOnly() {
		// The kernel then answers writes with EROFS itself; the branch
		// refuses them too. "ro" is a mount flag, not a FUSE option.
		opts.MountOptions.DirectMountFlags = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_RDONLY
	}
	// fs.Mount, with the request counter around the node bridge.
	raw := fs.NewNodeFS(&node{bfs: bfs, walDirect: o.WALDirectIO}, opts)
	if o.Requests != nil {
		raw = &timedFS{RawFileSystem: raw, rec: o.Requests}
	}
	srv, err := fuse.NewServer(raw, abs, &opts.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", abs, err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return nil, fmt.Errorf("mount %s: %w", abs, err)
	}
	closeFuseOnExec()
	if ra := o.ReadAheadKB; ra >= 0 {
		if ra == 0 {
			ra = DefaultReadAheadKB
		}
		if err := setReadAhead(abs, ra); err != nil {
			// Slower sequential reads, nothing worse.
			slog.Warn("cannot set the mount's readahead", "mountpoint", abs, "kb", ra, "err", err)
		}
	}
	return srv, nil
}

// closeFuseOnExec marks every /dev/fuse descriptor of this process
// close-on-exec. go-fuse opens /dev/fuse without O_CLOEXEC, so Postgres
// (which the daemon starts) inherited the connection: when the daemon
// died, its own Postgres kept the dead connection alive and hung in D
// state on requests no one would answer, instead of failing at once.
// (A process forked between go-fuse's open and this call still inherits
// it; mounts are rare and short, so the window is small.)
func closeFuseOnExec() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		slog.Warn("cannot list this process's descriptors to mark /dev/fuse close-on-exec", "err", err)
		return
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
				slog.Warn("mark /dev/fuse close-on-exec", "fd", fd, "err", err)
			}
		}
	}
}

// setReadAhead sets the readahead window of the FUSE connection mounted
// at mnt, through its bdi in sysfs (named by the mount's device number).
func setReadAhead(mnt string, kb int) error {
	var st syscall.Stat_t
	if err := syscall.Stat(mnt, &st); err != nil {
		return err
	}
	path := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(path, []byte(strconv.Itoa(kb)), 0)
}

// IsMounted reports whether path is a mount point.
func IsMounted(path string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMount(fields[4]) == path {
			return true, nil
		}
	}
	return false, sc.Err()
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}
