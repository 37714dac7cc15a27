package fusefs

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
	"github.com/neonfs/neonfs/volume"
)

// mountVolume mounts the main branch of a fresh volume and returns the
// mountpoint. It skips when FUSE cannot be mounted here.
func mountVolume(t *testing.T, opts Options) string {
	t.Helper()
	mnt, _ := mountVolumeOpen(t, opts)
	return mnt
}

// mountVolumeOpen is mountVolume, with the open volume.
func mountVolumeOpen(t *testing.T, opts Options) (string, *volume.Volume) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "vol")
	if err := volume.Init(ctx, dir); err != nil {
		t.Fatal(err)
	}
	vol, err := volume.Open(ctx, dir, volume.Options{ReserveBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	bfs, err := vol.Mount(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	srv, err := Mount(bfs, mnt, opts)
	if err != nil {
		vol.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		if err := vol.Unmount(bfs); err != nil {
			t.Errorf("volume unmount: %v", err)
		}
		if err := vol.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return mnt, vol
}

// notApplicable lists posixtest cases for features neonfs leaves out on
// purpose: xattrs are disabled (the kernel would otherwise ask for
// security.capability before every write) and POSIX locks stay in the
// kernel (one writer per branch).
var notApplicable = map[string]string{
	"XAttr":               "xattrs disabled",
	"XAttrLarge":          "xattrs disabled",
	"FcntlFlockLocksFile": "locks handled by the kernel",
	"FcntlFlockSetLk":     "locks handled by the kernel",
	"DirectIO":            "tests a go-fuse feature (FOPEN_DIRECT_IO), not a file system",
}

func TestPosix(t *testing.T) {
	for _, wb := range []bool{false, true} {
		name := "direct"
		if wb {
			name = "writeback"
		}
		t.Run(name, func(t *testing.T) {
			for tc, fn := range posixtest.All {
				t.Run(tc, func(t *testing.T) {
					if why, skip := notApplicable[tc]; skip {
						t.Skip(why)
					}
					fn(t, mountVolume(t, Options{WritebackCache: wb}))
				})
			}
		})
	}
}
