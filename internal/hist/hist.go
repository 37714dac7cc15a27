// Package hist counts observations into fixed buckets, and events with
// their total duration by name (Timings), for the metrics: storage,
// compute and FUSE packages record into them without importing
// Prometheus, and the metrics collector reads Snapshots.
package hist

import (
	"sort"
	"sync"
)

// SyncBounds are the buckets, in seconds, of the histograms of sync
// latency (a log fdatasync, an fsync, a write waiting for its commit):
// from about 100 µs on a local NVMe disk up to seconds on a stalled one.
var SyncBounds = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Histogram is safe for concurrent use.
type Histogram struct {
	bounds []float64 // ascending upper bounds; one more bucket holds the rest

	mu     sync.Mutex
	counts []uint64
	sum    float64
	n      uint64
}

// New returns a histogram with the given upper bounds (sorted here).
func New(bounds ...float64) *Histogram {
	b := append([]float64(nil), bounds...)
	sort.Float64s(b)
	return &Histogram{bounds: b, counts: make([]uint64, len(b)+1)}
}

// Observe records one value.
func (h *Histogram) Observe(v float64) {
	i := sort.SearchFloat64s(h.bounds, v) // first bound >= v: buckets are "le"
	h.mu.Lock()
	h.counts[i]++
	h.sum += v
	h.n++
	h.mu.Unlock()
}

// Snapshot is a histogram's state at one moment. Counts are per bucket
// (not cumulative); Counts[len(Bounds)] is above the last bound.
type Snapshot struct {
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"`
	Sum    float64   `json:"sum"`
	Count  uint64    `json:"count"`
}

// Snapshot copies the histogram's state.
func (h *Histogram) Snapshot() Snapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Snapshot{Bounds: h.bounds, Counts: append([]uint64(nil), h.counts...), Sum: h.sum, Count: h.n}
}

// Cumulative returns the count at or below each bound, as Prometheus
// wants it.
func (s Snapshot) Cumulative() map[float64]uint64 {
	out := make(map[float64]uint64, len(s.Bounds))
	var acc uint64
	for i, b := range s.Bounds {
		acc += s.Counts[i]
		out[b] = acc
	}
	return out
}
