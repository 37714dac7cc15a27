package volume

import (
	"log/slog"
	"runtime/debug"
	"time"
)

// ReleaseMemory is for a daemon going idle (its last endpoint suspended):
// once nothing is mounted, the flusher writes the memtable out as a layer,
// empties the block cache and returns the freed memory to the OS, so the
// daemon's RSS falls back to its floor. It returns at once; a mount in the
// meantime cancels it (the memory is wanted again).
func (v *Volume) ReleaseMemory() {
	v.releaseAsked.Store(true)
	v.kickFlush()
}

func (v *Volume) unmounted() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.mounts) == 0
}

// dropMemory runs in the flusher, after the memtable went to a layer.
func (v *Volume) dropMemory() {
	start := time.Now()
	v.store.DropCache()
	debug.FreeOSMemory()
	slog.Info("released memory: nothing mounted", "took", time.Since(start).Round(time.Millisecond))
}
