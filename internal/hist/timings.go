package hist

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Timings counts events and their total duration by name (FUSE requests
// by opcode). Add is called on every request, so it takes no lock once a
// name has been seen: the names are few and fixed, and each is added to
// the map once. It has the method set of go-fuse's fuse.LatencyMap. The
// zero value is ready to use; safe for concurrent use.
type Timings struct {
	byName atomic.Pointer[map[string]*timing] // copied on write: never changed once stored
	mu     sync.Mutex                         // serializes the copies
}

type timing struct {
	n  atomic.Uint64
	ns atomic.Uint64
	_  [48]byte // one cache line each: two names' counters do not share one
}

// Timing is one name's count and total duration.
type Timing struct {
	Name    string  `json:"name"`
	Count   uint64  `json:"count"`
	Seconds float64 `json:"seconds"`
}

// Add counts one event that took d.
func (t *Timings) Add(name string, d time.Duration) {
	e := t.entry(name)
	e.n.Add(1)
	e.ns.Add(uint64(max(d, 0)))
}

func (t *Timings) entry(name string) *timing {
	if m := t.byName.Load(); m != nil {
		if e := (*m)[name]; e != nil {
			return e
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var old map[string]*timing
	if p := t.byName.Load(); p != nil {
		old = *p
	}
	if e := old[name]; e != nil {
		return e // added while we waited
	}
	m := make(map[string]*timing, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	e := &timing{}
	m[name] = e
	t.byName.Store(&m)
	return e
}

// Snapshot returns every name seen so far, sorted. A name's count and
// duration are read one after the other, not at one instant.
func (t *Timings) Snapshot() []Timing {
	p := t.byName.Load()
	if p == nil {
		return nil
	}
	out := make([]Timing, 0, len(*p))
	for name, e := range *p {
		out = append(out, Timing{Name: name, Count: e.n.Load(), Seconds: float64(e.ns.Load()) / 1e9})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
