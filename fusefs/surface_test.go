package fusefs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/neonfs/neonfs/internal/hist"
)

// TestPostgresSurface covers, one case each, the POSIX calls Postgres makes
// (DESIGN.md "POSIX surface"), with the kernel's writeback cache on and
// the requests counted, as in production.
func TestPostgresSurface(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts FUSE")
	}
	mnt := mountVolume(t, Options{WritebackCache: true, Requests: new(hist.Timings)})
	p := func(name string) string { return filepath.Join(mnt, name) }

	cases := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"create O_EXCL", func(t *testing.T) {
			f, err := os.OpenFile(p("excl"), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
			if _, err := os.OpenFile(p("excl"), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600); !errors.Is(err, os.ErrExist) {
				t.Fatalf("second O_EXCL create: %v", err)
			}
		}},
		{"pwrite at offsets, append, read back", func(t *testing.T) {
			f, err := os.OpenFile(p("pwrite"), os.O_CREATE|os.O_RDWR, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			page := bytes.Repeat([]byte("p"), 8192)
			for _, off := range []int64{8192 * 3, 0, 100, 8192*3 + 4000} {
				if _, err := f.WriteAt(page, off); err != nil {
					t.Fatal(err)
				}
			}
			a, _ := os.OpenFile(p("pwrite"), os.O_APPEND|os.O_WRONLY, 0)
			a.Write([]byte("tail"))
			a.Close()
			want := make([]byte, 8192*3+4000+8192)
			for _, off := range []int{8192 * 3, 0, 100, 8192*3 + 4000} {
				copy(want[off:], page)
			}
			want = append(want, "tail"...)
			got, err := os.ReadFile(p("pwrite"))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read back differs (err %v, len %d want %d)", err, len(got), len(want))
			}
		}},
		{"read through a write-only handle's partial page", func(t *testing.T) {
			os.WriteFile(p("conf"), []byte("a = 1\n"), 0o600)
			f, err := os.OpenFile(p("conf"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte("b = 2\n"))
			f.Close()
			if got, _ := os.ReadFile(p("conf")); string(got) != "a = 1\nb = 2\n" {
				t.Fatalf("got %q", got)
			}
		}},
		{"fsync and fdatasync on files and directories", func(t *testing.T) {
			f, _ := os.Create(p("synced"))
			f.Write([]byte("x"))
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				t.Fatal(err)
			}
			f.Close()
			d, _ := os.Open(mnt)
			defer d.Close()
			if err := d.Sync(); err != nil {
				t.Fatalf("directory fsync: %v", err)
			}
		}},
		{"ftruncate grow and shrink", func(t *testing.T) {
			f, _ := os.Create(p("trunc"))
			defer f.Close()
			f.Write(bytes.Repeat([]byte{0xee}, 20000))
			f.Truncate(10000)
			f.Truncate(30000)
			got, _ := os.ReadFile(p("trunc"))
			want := append(bytes.Repeat([]byte{0xee}, 10000), make([]byte, 20000)...)
			if !bytes.Equal(got, want) {
				t.Fatal("truncate shrink+grow did not zero the cut range")
			}
		}},
		{"rename over an existing file", func(t *testing.T) {
			os.WriteFile(p("new"), []byte("new"), 0o600)
			os.WriteFile(p("old"), []byte("old"), 0o600)
			old, _ := os.Open(p("old"))
			defer old.Close()
			if err := os.Rename(p("new"), p("old")); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(p("old")); string(got) != "new" {
				t.Fatalf("after rename: %q", got)
			}
			if b, _ := os.ReadFile("/proc/self/fd/" + fmt.Sprint(old.Fd())); string(b) != "old" {
				t.Fatalf("open handle of the replaced file reads %q", b)
			}
			if _, err := os.Stat(p("new")); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("source name still exists")
			}
		}},
		{"unlink while open", func(t *testing.T) {
			os.WriteFile(p("doomed"), []byte("still here"), 0o600)
			f, _ := os.Open(p("doomed"))
			defer f.Close()
			if err := os.Remove(p("doomed")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64)
			n, err := f.ReadAt(buf, 0)
			if string(buf[:n]) != "still here" {
				t.Fatalf("read after unlink: %q %v", buf[:n], err)
			}
		}},
		{"mkdir rmdir readdir", func(t *testing.T) {
			os.Mkdir(p("d"), 0o700)
			for i := range 5 {
				os.WriteFile(p(fmt.Sprintf("d/f%d", i)), nil, 0o600)
			}
			ents, _ := os.ReadDir(p("d"))
			if len(ents) != 5 {
				t.Fatalf("readdir: %d entries", len(ents))
			}
			if err := syscall.Rmdir(p("d")); err != syscall.ENOTEMPTY {
				t.Fatalf("rmdir of non-empty: %v", err)
			}
			os.RemoveAll(p("d"))
			if _, err := os.Stat(p("d")); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("directory survived rmdir")
			}
		}},
		{"symlink readlink (pg_wal, tablespaces)", func(t *testing.T) {
			os.Mkdir(p("walreal"), 0o700)
			if err := os.Symlink(p("walreal"), p("pg_wal")); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(p("pg_wal/seg"), []byte("w"), 0o600)
			if got, _ := os.Readlink(p("pg_wal")); got != p("walreal") {
				t.Fatalf("readlink: %q", got)
			}
			if _, err := os.Stat(p("walreal/seg")); err != nil {
				t.Fatal(err)
			}
		}},
		{"hard link", func(t *testing.T) {
			os.WriteFile(p("l1"), []byte("shared"), 0o600)
			if err := os.Link(p("l1"), p("l2")); err != nil {
				t.Fatal(err)
			}
			var st syscall.Stat_t
			syscall.Stat(p("l2"), &st)
			if st.Nlink != 2 {
				t.Fatalf("nlink %d", st.Nlink)
			}
			os.Remove(p("l1"))
			if got, _ := os.ReadFile(p("l2")); string(got) != "shared" {
				t.Fatalf("link content %q", got)
			}
		}},
		{"chmod chown (0700 data dir owned by postgres)", func(t *testing.T) {
			os.Mkdir(p("pgdata"), 0o755)
			if err := os.Chmod(p("pgdata"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p("pgdata"), 101, 104); err != nil {
				t.Fatal(err)
			}
			var st syscall.Stat_t
			syscall.Stat(p("pgdata"), &st)
			if st.Mode&0o7777 != 0o700 || st.Uid != 101 || st.Gid != 104 {
				t.Fatalf("mode %o uid %d gid %d", st.Mode&0o7777, st.Uid, st.Gid)
			}
		}},
		{"utimens", func(t *testing.T) {
			os.WriteFile(p("times"), nil, 0o600)
			mt := time.Date(2020, 1, 2, 3, 4, 5, 6000, time.UTC)
			if err := os.Chtimes(p("times"), mt, mt); err != nil {
				t.Fatal(err)
			}
			fi, _ := os.Stat(p("times"))
			if !fi.ModTime().Equal(mt) {
				t.Fatalf("mtime %v want %v", fi.ModTime(), mt)
			}
		}},
		{"statfs", func(t *testing.T) {
			var st syscall.Statfs_t
			if err := syscall.Statfs(mnt, &st); err != nil {
				t.Fatal(err)
			}
			if st.Blocks == 0 || st.Bsize == 0 || st.Namelen != 255 {
				t.Fatalf("statfs: %+v", st)
			}
		}},
		{"fallocate extends or says EOPNOTSUPP", func(t *testing.T) {
			f, _ := os.Create(p("falloc"))
			defer f.Close()
			if err := unix.Fallocate(int(f.Fd()), 0, 0, 1<<20); err != nil {
				t.Fatal(err)
			}
			if fi, _ := f.Stat(); fi.Size() != 1<<20 {
				t.Fatalf("size after fallocate %d", fi.Size())
			}
			err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 8192)
			if err != unix.EOPNOTSUPP {
				t.Fatalf("punch hole: %v, want EOPNOTSUPP", err)
			}
		}},
		{"large file (1 GiB segment)", func(t *testing.T) {
			f, _ := os.Create(p("seg"))
			defer f.Close()
			tail := bytes.Repeat([]byte{7}, 8192)
			if _, err := f.WriteAt(tail, 1<<30-8192); err != nil {
				t.Fatal(err)
			}
			f.Sync()
			fi, _ := f.Stat()
			buf := make([]byte, 8192)
			f.ReadAt(buf, 1<<30-8192)
			if fi.Size() != 1<<30 || !bytes.Equal(buf, tail) {
				t.Fatalf("size %d, tail ok %v", fi.Size(), bytes.Equal(buf, tail))
			}
			f.ReadAt(buf, 512<<20)
			if !bytes.Equal(buf, make([]byte, 8192)) {
				t.Fatal("hole does not read as zeros")
			}
		}},
		{"many files (thousands of relations)", func(t *testing.T) {
			os.Mkdir(p("base"), 0o700)
			const n = 3000
			for i := range n {
				if err := os.WriteFile(p(fmt.Sprintf("base/%d", 16384+i)), []byte{byte(i)}, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			ents, err := os.ReadDir(p("base"))
			if err != nil || len(ents) != n {
				t.Fatalf("readdir of %d files: %d entries, %v", n, len(ents), err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, tc.fn)
	}
}
