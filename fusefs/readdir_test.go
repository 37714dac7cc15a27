package fusefs

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// ls -a lists "." and ".." with the inode numbers stat gives, as on every
// Linux file system; ".." of the root is the root.
func TestReaddirDots(t *testing.T) {
	mnt := mountVolume(t, Options{WritebackCache: true})
	sub := filepath.Join(mnt, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(mnt, "c")
	if err := os.Mkdir(moved, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(moved, filepath.Join(sub, "c")); err != nil {
		t.Fatal(err)
	}
	ino := func(p string) uint64 {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	for _, tc := range []struct{ dir, parent string }{
		{mnt, mnt},
		{filepath.Join(mnt, "a"), mnt},
		{sub, filepath.Join(mnt, "a")},
		{filepath.Join(sub, "c"), sub}, // renamed into sub
	} {
		out, err := exec.Command("ls", "-a1", tc.dir).Output()
		if err != nil {
			t.Fatalf("ls -a %s: %v", tc.dir, err)
		}
		if names := strings.Fields(string(out)); len(names) < 2 || names[0] != "." || names[1] != ".." {
			t.Errorf("ls -a %s: %q, want . and .. first", tc.dir, names)
		}
		// ls stats ".." (at the mount root that is the directory beneath
		// the mount), so read the entries' inode numbers from getdents.
		got := direntInos(t, tc.dir)
		if got["."] != ino(tc.dir) || got[".."] != ino(tc.parent) {
			t.Errorf("getdents %s: . is %d, .. is %d; want %d and %d", tc.dir, got["."], got[".."], ino(tc.dir), ino(tc.parent))
		}
	}
}

// direntInos reads dir with getdents64 and returns each name's d_ino.
func direntInos(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	out := map[string]uint64{}
	buf := make([]byte, 64<<10)
	for {
		n, err := syscall.ReadDirent(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return out
		}
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:]))
			name, _, _ := bytes.Cut(b[19:reclen], []byte{0})
			out[string(name)] = binary.NativeEndian.Uint64(b)
			b = b[reclen:]
		}
	}
}
