package objstore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// evicted puts an object of size random bytes in a fresh store and drops
// its pages from the page cache (they are clean: Put syncs). It skips the
// test where that does not work (tmpfs keeps them).
func evicted(t *testing.T, size int) (*DirStore, []byte, string) {
	t.Helper()
	s := newTestDirStore(t)
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(data)
	if err := s.Put(context.Background(), "o", data); err != nil {
		t.Fatal(err)
	}
	path := s.path("o")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Skipf("posix_fadvise(DONTNEED): %v", err)
	}
	if n := resident(t, path, 0, size); n != 0 {
		t.Skipf("%d pages still cached after DONTNEED (tmpfs?)", n)
	}
	return s, data, path
}

// resident counts the pages of [off, off+n) of the file in the page cache.
func resident(t *testing.T, path string, off, n int) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), int64(off), n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (n+aroundPage-1)/aroundPage)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(n), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	c := 0
	for _, v := range vec {
		c += int(v & 1)
	}
	return c
}

func readAt(t *testing.T, s *DirStore, data []byte, off, n int) {
	t.Helper()
	b, err := s.GetRange(context.Background(), "o", int64(off), int64(n))
	if err != nil || !bytes.Equal(b, data[off:off+n]) {
		t.Fatalf("GetRange(%d, %d): %v, or wrong bytes", off, n, err)
	}
}

// waitResident waits (up to 5 s) for the window's asynchronous read.
func waitResident(t *testing.T, path string, off, n int) int {
	t.Helper()
	var c int
	for range 500 {
		if c = resident(t, path, off, n); c == n/aroundPage {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return c
}

func TestDirStoreReadAround(t *testing.T) {
	s, data, path := evicted(t, 4*readAroundBytes)
	// A record in the second window: the whole window comes in, nothing
	// around it.
	off := readAroundBytes + 5000
	readAt(t, s, data, off, 900)
	if s.around.off.Load() {
		t.Skip("preadv2(RWF_NOWAIT) not supported here")
	}
	if c := waitResident(t, path, readAroundBytes, readAroundBytes); c != readAroundBytes/aroundPage {
		t.Fatalf("%d of the window's %d pages cached", c, readAroundBytes/aroundPage)
	}
	if c := resident(t, path, 0, readAroundBytes) + resident(t, path, 2*readAroundBytes, 2*readAroundBytes); c != 0 {
		t.Errorf("%d pages cached outside the window", c)
	}
	if a, u := s.around.arounds.Load(), s.around.useful.Load(); a != 1 || u != 0 {
		t.Fatalf("after one miss: %d windows read around, %d useful; want 1, 0", a, u)
	}
	// The same record again is no proof; a neighbour is.
	readAt(t, s, data, off, 900)
	if u := s.around.useful.Load(); u != 0 {
		t.Fatalf("re-reading the record made the window useful")
	}
	readAt(t, s, data, off+3*aroundPage, 1200)
	readAt(t, s, data, off+5*aroundPage, 1200)
	if a, u := s.around.arounds.Load(), s.around.useful.Load(); a != 1 || u != 1 {
		t.Fatalf("after two neighbours: %d windows read around, %d useful; want 1, 1", a, u)
	}
	// A read as long as a window is not read around.
	readAt(t, s, data, 3*readAroundBytes, readAroundBytes)
	if a := s.around.arounds.Load(); a != 1 {
		t.Fatalf("a window-sized read was read around")
	}
}

// Random reads that never use their windows stop reading around, except
// for one miss in aroundProbe.
func TestDirStoreReadAroundBacksOff(t *testing.T) {
	const windows = 256
	s, data, _ := evicted(t, windows*readAroundBytes)
	order := rand.New(rand.NewPCG(3, 4)).Perm(windows)
	for i, w := range order {
		readAt(t, s, data, w*readAroundBytes+100, 900)
		if i == 0 && s.around.off.Load() {
			t.Skip("preadv2(RWF_NOWAIT) not supported here")
		}
	}
	a, u := s.around.arounds.Load(), s.around.useful.Load()
	// Fewer when the kernel's own readahead turns a miss into a hit.
	most := int64(aroundProbation + (windows-aroundProbation)/aroundProbe + 1)
	if u != 0 || a < aroundProbation || a > most {
		t.Fatalf("%d random misses: %d windows read around, %d useful; want %d to %d, 0", windows, a, u, aroundProbation, most)
	}
	if s.around.pays() {
		t.Fatal("read-around still judged worth it")
	}
}
