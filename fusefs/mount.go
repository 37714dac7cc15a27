package fusefs

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
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
}

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
	srv, err := fs.Mount(abs, &node{bfs: bfs}, opts)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", abs, err)
	}
	return srv, nil
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
