package volume

import (
	"log/slog"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/objstore"
)

// DefaultPrewarmBytes is the page cache a mount may fill with its layers
// when Options.PrewarmBytes is 0: an eighth of the machine's memory.
func DefaultPrewarmBytes() int64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 256 << 20
	}
	return int64(si.Totalram) * int64(si.Unit) / 8
}

// prewarm asks the object store to read the layers that hold f's data
// into memory, newest first, up to Options.PrewarmBytes in all, and
// returns without waiting for the reads. A branch mounted after a stop
// (a wake) then answers its first reads from the page cache instead of
// one disk read per page. Layers are compressed, so this costs a fraction of the data's size, and it is
// page cache the kernel reclaims like any other. Only a local object
// store (DirStore) prefetches; S3 layers are fetched as reads need them.
func (v *Volume) prewarm(f *BranchFS) {
	p, ok := v.store.Objects().(objstore.Prefetcher)
	if !ok || v.opts.PrewarmBytes < 0 {
		return
	}
	budget := v.opts.PrewarmBytes
	if budget == 0 {
		budget = DefaultPrewarmBytes()
	}
	start := time.Now()
	var n int
	var bytes int64
	for _, l := range prewarmPlan(v.store.Layers(), f.lineage, budget) {
		select {
		case <-v.stop:
			return
		default:
		}
		if err := p.Prefetch(l.Name); err != nil {
			slog.Debug("prewarm layer", "layer", l.Name, "err", err)
			continue
		}
		n++
		bytes += l.Size
	}
	if n > 0 {
		slog.Info("prewarm: layers queued for the page cache", "branch", f.name, "layers", n, "bytes", bytes, "took", time.Since(start).Round(time.Millisecond))
	}
}

// prewarmPlan picks the layers to prefetch for a mount of lineage: those
// holding data of a branch in it, newest first, while they fit in budget
// (a layer bigger than what is left is skipped, a smaller older one may
// still fit).
func prewarmPlan(layers []blockstore.LayerMeta, lineage []blockstore.ReadPoint, budget int64) []blockstore.LayerMeta {
	mine := map[uint32]bool{}
	for _, rp := range lineage {
		mine[rp.Branch] = true
	}
	var out []blockstore.LayerMeta
	for _, l := range slices.Backward(layers) {
		holds := len(l.BranchBytes) == 0 // written before layers kept the map
		for b := range l.BranchBytes {
			holds = holds || mine[b]
		}
		if !holds || l.Size > budget {
			continue
		}
		budget -= l.Size
		out = append(out, l)
	}
	return out
}
