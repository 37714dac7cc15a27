package commit

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/neonfs/neonfs/blockstore"
)

// Admission is the one gate on the write path: every change passes Wait
// before the file system changes anything. It holds the write path's
// limits and decides, in one place:
//
//   - ENOSPC, at once, when the data dir's disk cannot hold the change
//     twice: in the log now, and in a layer when the memtable is flushed
//     (only then is the log truncated). So the disk must keep the reserve,
//     everything not yet flushed, and the change.
//   - wait, while the committer holds MaxPending bytes not yet applied
//     (back-pressure on a slow log), or while the memtable holds
//     MaxUnflushed bytes no layer holds yet (the object store is behind or
//     away: the log should not grow without bound).
//
// Nothing polls: commits and flushes call Changed, which wakes the
// waiters to look again. While writers wait, the committer proposes
// lingering batches at once and the flusher is kicked.
//
// Lock order: Admission.mu before Committer.mu (Wait reads the committer's
// pending bytes); the committer calls Changed only after releasing its own.
type Admission struct {
	dir          string
	reserve      int64 // the reserve and the log's headroom
	maxPending   int64
	maxUnflushed int64 // 0: no bound (inspection opens never flush)
	store        *blockstore.Store
	commit       *Committer
	kickFlush    func()

	free     atomic.Int64 // free bytes on the data dir at the last statfs
	accepted atomic.Int64 // bytes admitted since that statfs
	full     atomic.Bool

	mu      sync.Mutex
	room    *sync.Cond
	waiting int
	since   time.Time // when the memtable bound started holding writers
	closed  bool
}

// errNoSpace and errClosing are what Wait refuses with.
var (
	errNoSpace = errors.New("no space left for the change on the data dir")
	errClosing = errors.New("volume is closing")
)

// Limits are the write path's bounds.
type Limits struct {
	ReserveBytes int64 // free disk the data dir keeps
	MaxPending   int64 // bytes the committer holds not yet applied
	MaxUnflushed int64 // memtable bytes no layer holds yet; 0: no bound
	// LogHeadroom is the disk the log may take beyond its entries (it
	// grows by whole segments).
	LogHeadroom int64
}

// NewAdmission returns the gate for the volume in dir; kickFlush asks the
// flusher to run now. Attach the committer before the first Wait.
func NewAdmission(dir string, l Limits, store *blockstore.Store, kickFlush func()) *Admission {
	a := &Admission{dir: dir, reserve: l.ReserveBytes + l.LogHeadroom, maxPending: l.MaxPending,
		maxUnflushed: l.MaxUnflushed, store: store, kickFlush: kickFlush}
	a.room = sync.NewCond(&a.mu)
	return a
}

// Attach sets the committer whose pending bytes the gate bounds.
func (a *Admission) Attach(c *Committer) { a.commit = c }

// Full reports whether the last disk check found the disk too full.
func (a *Admission) Full() bool { return a.full.Load() }

// Errno maps Wait's error for a file-system caller.
func Errno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errNoSpace):
		return syscall.ENOSPC
	default:
		return syscall.EIO
	}
}

// Wait admits a change of about n bytes: it returns nil once there is
// room, errNoSpace when the disk cannot take it, or the error that stops
// the volume.
func (a *Admission) Wait(n int) error {
	if !a.diskAdmits(n) {
		return errNoSpace
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		if a.closed {
			return errClosing
		}
		if err := a.commit.failed(); err != nil {
			return err
		}
		pendingFull, memFull := a.overLocked(n)
		if !pendingFull && !memFull {
			break
		}
		if memFull && a.since.IsZero() {
			a.since = time.Now()
			slog.Warn("memtable over its bound: writes wait for a flush to the object store", "bound_bytes", a.maxUnflushed)
		}
		a.waiting++
		a.commit.setWaiting(a.waiting) // lingering batches must go now
		if memFull {
			a.kickFlush()
		}
		a.room.Wait()
		a.waiting--
		a.commit.setWaiting(a.waiting)
	}
	if !a.since.IsZero() {
		slog.Info("memtable back under its bound: writes resume", "waited", time.Since(a.since).Round(time.Millisecond))
		a.since = time.Time{}
	}
	return nil
}

// overLocked reports which bound a change of n bytes would cross. A change
// alone may exceed MaxPending: the bound holds writers back, it does not
// refuse big ones.
func (a *Admission) overLocked(n int) (pending, mem bool) {
	p := a.commit.pendingBytes()
	pending = p > 0 && p+int64(n) > a.maxPending
	if a.maxUnflushed > 0 {
		active, frozen := a.store.MemBytes()
		mem = active+frozen > a.maxUnflushed
	}
	return pending, mem
}

// Changed wakes waiters to look again: a commit or a flush freed room.
func (a *Admission) Changed() {
	a.mu.Lock()
	if a.waiting > 0 {
		a.room.Broadcast()
	}
	a.mu.Unlock()
}

// Close fails every waiter and every later Wait.
func (a *Admission) Close() {
	a.mu.Lock()
	a.closed = true
	a.room.Broadcast()
	a.mu.Unlock()
}

// diskAdmits reports whether n more bytes fit on the data dir's disk,
// taking a fresh statfs when the last one no longer covers them.
func (a *Admission) diskAdmits(n int) bool {
	acc := a.accepted.Add(int64(n))
	if a.free.Load()-acc < a.diskNeed() {
		a.CheckDisk()
		return !a.full.Load()
	}
	return true
}

// diskNeed is the free space the data dir must keep: the reserve, room to
// write everything unflushed once more (as a layer or a snapshot), and the
// log's headroom, since it grows a whole segment at a time.
func (a *Admission) diskNeed() int64 {
	active, frozen := a.store.MemBytes()
	var pending int64
	if a.commit != nil {
		pending = a.commit.pendingBytes()
	}
	return a.reserve + active + frozen + pending
}

// CheckDisk takes a statfs of the data dir (the disk watcher calls it
// every 250 ms; Wait when its estimate runs out).
func (a *Admission) CheckDisk() {
	var st syscall.Statfs_t
	if err := syscall.Statfs(a.dir, &st); err != nil {
		return
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	a.free.Store(free)
	a.accepted.Store(0)
	full := free < a.diskNeed()
	if full != a.full.Swap(full) {
		if full {
			slog.Error("disk nearly full: refusing writes with ENOSPC", "dir", a.dir, "free_bytes", free, "reserve_bytes", a.reserve)
		} else {
			slog.Info("disk space recovered: accepting writes", "dir", a.dir, "free_bytes", free)
		}
	}
}
