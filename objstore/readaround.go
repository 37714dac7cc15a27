package objstore

import (
	"errors"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Read-around for DirStore: a small read (a layer record, ~1 KiB for a
// compressed Postgres page) that misses the page cache brings in the
// aligned window of readAroundBytes around it with one disk read. A layer
// keeps its records in key order, so the records around one block are the
// next blocks of the same file, which a cold Postgres (an index scan, a
// heap fetched page by page, every backend after a restart) soon reads:
// with the window they are page-cache hits, not one disk read each. On
// the CI machines a random 128 KiB read costs about what an 8 KiB one
// does (fio, queue depth 1: median ~120 µs vs ~150 µs), and one window
// holds ~140 pgbench pages.
//
// The kernel does not do this by itself: layer reads look random to it.
// And it is not always right: random reads over a database much bigger
// than memory would read 128 KiB to use 1. So it watches whether it pays:
// a window counts as useful once a later read inside it, at another page
// than the one that brought it in, finds its bytes cached. While fewer
// than one window in aroundMinUseful turns out useful (over the recent
// ones, see aroundDecay), only one miss in aroundProbe reads around,
// enough to notice when the reads turn local again.
const (
	readAroundBytes = 128 << 10
	aroundPage      = 4096
	aroundMinUseful = 8
	aroundProbe     = 16
	// aroundDecay: the counts are halved when this many windows have
	// been read around, so the ratio follows the recent reads.
	aroundDecay = 4096
	// aroundProbation: the first windows read around are not judged.
	aroundProbation = 64
)

// Each window's state, in one atomic word: whether it was read around,
// whether it turned out useful, and the page (within the window) whose
// read brought it in.
const (
	windowAround uint32 = 1 << 31
	windowUseful uint32 = 1 << 30
	windowPage   uint32 = readAroundBytes/aroundPage - 1
)

type readAround struct {
	off    atomic.Bool // preadv2(RWF_NOWAIT) unsupported (an old kernel, a file system without it)
	misses atomic.Uint64
	// windows read around and, of those, useful ones
	arounds, useful atomic.Int64
}

func windowsOf(size int64) int64 { return (size + readAroundBytes - 1) / readAroundBytes }

// read reads b at off from o if the page cache holds all of it, and then
// returns true. Otherwise it may start the read of the window around it
// (posix_fadvise WILLNEED) and returns false: the caller's read then waits
// for that one disk read. A preadv2 with RWF_NOWAIT, which copies only
// cached bytes and fails rather than wait for the disk, tells which; a
// read served from the page cache costs that one system call, as before.
func (r *readAround) read(o *openObject, off int64, b []byte) bool {
	if len(b) == 0 || r.off.Load() {
		return false
	}
	n, err := unix.Preadv2(o.fd, [][]byte{b}, off, unix.RWF_NOWAIT)
	w := &o.windows[off/readAroundBytes]
	page := uint32(off%readAroundBytes) / aroundPage
	switch {
	case err == nil && n == len(b):
		if st := w.Load(); st&(windowAround|windowUseful) == windowAround && st&windowPage != page {
			if w.CompareAndSwap(st, st|windowUseful) {
				r.useful.Add(1)
			}
		}
		return true
	case err == nil || errors.Is(err, unix.EAGAIN):
	case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL):
		r.off.Store(true)
		return false
	default:
		return false // the caller's read reports it
	}
	if !r.pays() && r.misses.Add(1)%aroundProbe != 0 {
		return false
	}
	// A window read around before whose bytes are gone again (evicted)
	// is judged afresh.
	w.Store(windowAround | page)
	if r.arounds.Add(1) >= aroundDecay {
		r.arounds.Store(aroundDecay / 2)
		r.useful.Store(r.useful.Load() / 2)
	}
	lo := off &^ (readAroundBytes - 1)
	hi := min(max(lo+readAroundBytes, off+int64(len(b))), o.size)
	// Advice only: a failure costs the read-around, nothing else.
	_ = unix.Fadvise(o.fd, lo, hi-lo, unix.FADV_WILLNEED)
	return false
}

// pays reports whether reading around has been worth it lately.
func (r *readAround) pays() bool {
	a := r.arounds.Load()
	return a < aroundProbation || r.useful.Load()*aroundMinUseful >= a
}
