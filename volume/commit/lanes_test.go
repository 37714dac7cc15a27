package commit

import (
	"encoding/binary"
	"maps"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/neonfs/neonfs/blockstore"
)

// recorder is a log for lane tests: its encoder keeps each entry's puts,
// and its propose waits for release (a test stepping entries through) or
// for a random pause.
type recorder struct {
	mu      sync.Mutex
	entries []map[blockstore.Key]blockstore.Value // encoded, in proposal order
	applied int                                   // entries proposed and applied
	release chan struct{}                         // nil: propose after a random pause
}

func newRecorder(t *testing.T, stepped bool, maxBatch int, linger time.Duration) (*recorder, *Committer) {
	r := &recorder{}
	if stepped {
		r.release = make(chan struct{})
	}
	c := NewCommitter(r.propose, maxBatch, linger, nil)
	c.SetEncoder(func(_ int64, seq uint64, puts map[blockstore.Key]blockstore.Value, _ int) ([]byte, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if int(seq) != len(r.entries)+1 {
			t.Errorf("entry %d proposed as seq %d", len(r.entries)+1, seq)
		}
		r.entries = append(r.entries, maps.Clone(puts))
		return binary.AppendUvarint(nil, seq), nil
	})
	t.Cleanup(func() {
		if stepped {
			close(r.release) // what is left commits at once
		}
		c.Close()
	})
	return r, c
}

func (r *recorder) propose([]byte, func()) error {
	if r.release != nil {
		<-r.release
	} else if d := rand.IntN(300); d > 150 {
		time.Sleep(time.Duration(d) * time.Microsecond)
	}
	r.mu.Lock()
	r.applied++
	r.mu.Unlock()
	return nil
}

// encoded waits until entry n is proposed (encoded).
func (r *recorder) encoded(t *testing.T, n int) {
	t.Helper()
	waitFor(t, func() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.entries) >= n })
}

// step lets entry n, in flight, commit.
func (r *recorder) step(t *testing.T, n int) {
	t.Helper()
	r.encoded(t, n)
	r.release <- struct{}{}
}

// entry returns entry i (from 1) as the unit tags of its keys.
func (r *recorder) entry(i int) map[blockstore.Key]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[blockstore.Key]uint64{}
	for k, v := range r.entries[i-1] {
		out[k] = binary.BigEndian.Uint64(v.Data)
	}
	return out
}

func tagged(k blockstore.Key, tag uint64) blockstore.Entry {
	return blockstore.Entry{Key: k, Version: blockstore.Version{Value: blockstore.Value{
		Kind: blockstore.ValData, Data: binary.BigEndian.AppendUint64(nil, tag)}}}
}

func blk(ino, b uint64) blockstore.Key { return blockstore.BlockKey(1, ino, b) }
func ino(i uint64) blockstore.Key      { return blockstore.InodeKey(1, i) }

func submit(t *testing.T, c *Committer, urgent bool, tag uint64, keys ...blockstore.Key) uint64 {
	t.Helper()
	var puts []blockstore.Entry
	for _, k := range keys {
		puts = append(puts, tagged(k, tag))
	}
	tk, err := c.Submit(urgent, puts)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func waitsOn(c *Committer, ticket uint64) chan struct{} {
	done := make(chan struct{})
	go func() { c.Wait(ticket); close(done) }()
	return done
}

func returned(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-time.After(20 * time.Millisecond):
		return false
	}
}

func wantEntry(t *testing.T, r *recorder, i int, want map[blockstore.Key]uint64) {
	t.Helper()
	if got := r.entry(i); !maps.Equal(got, want) {
		t.Fatalf("entry %d holds %v, want %v", i, got, want)
	}
}

// Two queued regular batches and an open one are ahead of an urgent
// change of another file: it waits for one of them, not all three.
func TestLanesExpressOvertakes(t *testing.T) {
	r, c := newRecorder(t, true, 2*(8+40), time.Hour)
	submit(t, c, true, 1, blk(9, 0))
	r.encoded(t, 1) // in flight
	for b := range uint64(5) {
		submit(t, c, false, 2+b, blk(1, b))
	}
	tb := submit(t, c, true, 10, blk(2, 0))
	done := waitsOn(c, tb)
	r.step(t, 1)
	r.step(t, 2) // the proposer alternates: one regular batch first
	wantEntry(t, r, 2, map[blockstore.Key]uint64{blk(1, 0): 2, blk(1, 1): 3})
	r.step(t, 3)
	wantEntry(t, r, 3, map[blockstore.Key]uint64{blk(2, 0): 10})
	if !returned(done) {
		t.Fatal("the urgent change's Wait did not return once its entry committed")
	}
}

// An urgent change takes its file's lazy puts along, ahead of other
// files' puts, and a ticket of a batch they left covers them.
func TestLanesMoveOwner(t *testing.T) {
	r, c := newRecorder(t, true, 2*(8+40), time.Hour)
	submit(t, c, true, 1, blk(9, 0))
	r.encoded(t, 1) // in flight
	ta := submit(t, c, false, 2, blk(1, 0))
	submit(t, c, false, 3, blk(3, 0))
	submit(t, c, false, 4, blk(3, 1))
	submit(t, c, false, 5, blk(1, 1))
	submit(t, c, true, 6, blk(1, 2), ino(1))
	if st := c.CommitStats(); st.Moved != 2 {
		t.Fatalf("moved %d puts, want 2", st.Moved)
	}
	oldTicket := waitsOn(c, ta)
	r.step(t, 1)
	r.step(t, 2) // the last entry was express: a regular batch goes
	wantEntry(t, r, 2, map[blockstore.Key]uint64{blk(3, 0): 3})
	if returned(oldTicket) {
		t.Fatal("a ticket of a batch that gave up puts returned before they committed")
	}
	r.step(t, 3)
	// The regular lane holds just its open batch: it rides along.
	wantEntry(t, r, 3, map[blockstore.Key]uint64{blk(1, 0): 2, blk(1, 1): 5, blk(1, 2): 6, ino(1): 6, blk(3, 1): 4})
	if !returned(oldTicket) {
		t.Fatal("Wait on the old ticket did not return once the moved puts committed")
	}
}

// A change touching several owners pins them: an urgent change to one of
// them stays behind it in the regular lane.
func TestLanesPinned(t *testing.T) {
	r, c := newRecorder(t, true, 1<<20, time.Hour)
	submit(t, c, true, 1, blk(9, 0))
	r.encoded(t, 1) // in flight
	dirent := blockstore.DirentKey(1, 5, "a")
	submit(t, c, false, 2, ino(5), dirent, ino(1)) // a create
	submit(t, c, false, 3, blk(4, 0))
	submit(t, c, true, 4, blk(1, 0), ino(1))
	if st := c.CommitStats(); st.Pinned != 1 || st.Moved != 0 {
		t.Fatalf("stats %+v, want 1 pinned change, nothing moved", st)
	}
	r.step(t, 1)
	r.step(t, 2)
	wantEntry(t, r, 2, map[blockstore.Key]uint64{ino(5): 2, dirent: 2, ino(1): 4, blk(4, 0): 3, blk(1, 0): 4})
}

// A lazy change to a file with puts in the express lane follows them
// there, and an express batch takes the open regular batch along when
// no regular batch is queued.
func TestLanesFollowAndRideAlong(t *testing.T) {
	r, c := newRecorder(t, true, 1<<20, time.Hour)
	submit(t, c, true, 1, blk(9, 0))
	r.encoded(t, 1) // in flight
	submit(t, c, true, 2, blk(1, 0), ino(1))
	submit(t, c, false, 3, ino(1)) // a SETATTR of its mtime
	submit(t, c, false, 4, blk(4, 0))
	r.step(t, 1)
	r.step(t, 2)
	wantEntry(t, r, 2, map[blockstore.Key]uint64{blk(1, 0): 2, ino(1): 3, blk(4, 0): 4})
	// Pending bytes count the ride-along batch once.
	waitFor(t, func() bool { p, done := c.Stats(); return done == 2 && p == 0 })
}

// A change that must follow express puts but cannot move goes to the
// regular lane, and is not proposed before the express batch it follows.
func TestLanesAfter(t *testing.T) {
	const full = 3 * (8 + 40)
	r, c := newRecorder(t, true, full, time.Hour)
	submit(t, c, true, 1, blk(9, 0))
	r.encoded(t, 1) // in flight
	dx, dy := blockstore.DirentKey(1, 5, "x"), blockstore.DirentKey(1, 5, "y")
	submit(t, c, false, 2, ino(5), dx, ino(7))          // R1, full; pins 5 and 7
	submit(t, c, true, 3, blk(1, 0), blk(1, 1), ino(1)) // E1, full
	submit(t, c, true, 4, blk(2, 0))                    // E2
	// Follows 2 (in E2), cannot move 5: R2, proposed after E2.
	submit(t, c, false, 5, ino(2), ino(5), dy)
	submit(t, c, false, 6, blk(6, 0)) // R3: R2 is queued
	for i := 1; i <= 5; i++ {
		r.step(t, i)
	}
	wantEntry(t, r, 2, map[blockstore.Key]uint64{ino(5): 2, dx: 2, ino(7): 2})
	wantEntry(t, r, 3, map[blockstore.Key]uint64{blk(1, 0): 3, blk(1, 1): 3, ino(1): 3})
	wantEntry(t, r, 4, map[blockstore.Key]uint64{blk(2, 0): 4})
	wantEntry(t, r, 5, map[blockstore.Key]uint64{ino(2): 5, ino(5): 5, dy: 5})
}

// TestLanesRandom submits random changes (one file or several, urgent or
// lazy) while entries commit at random speed and waiters come and go, and
// checks the log against what a disk may do with writes:
//   - a change lands in one entry (its puts that a later change in the
//     same batch did not overwrite);
//   - each key's values reach the log in the order they were put, and
//     the last one is the last put;
//   - each owner's changes reach the log in the order they were made;
//   - when Wait(ticket) returns, the change and every earlier change to
//     its owners are committed; when WaitAll returns, every change before
//     it is.
func TestLanesRandom(t *testing.T) {
	rounds := 3
	if testing.Short() {
		rounds = 1
	}
	for round := range rounds {
		testLanesRandom(t, uint64(round))
	}
}

func testLanesRandom(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 42))
	r, c := newRecorder(t, false, 6*(8+40), time.Millisecond)
	type unit struct {
		keys   []blockstore.Key
		owners []uint64
	}
	units := []unit{{}} // tags from 1
	newest := map[blockstore.Key]uint64{}
	type check struct {
		tag       uint64 // 0: WaitAll
		committed int    // entries applied when the wait returned
	}
	var wg sync.WaitGroup
	checks := make(chan check, 4096)
	const n = 1500
	for tag := uint64(1); tag <= n; tag++ {
		var u unit
		owners := 1
		if rng.IntN(5) == 0 {
			owners = 2 + rng.IntN(2)
		}
		for len(u.owners) < owners {
			o := 1 + rng.Uint64N(6)
			if !slicesContains(u.owners, o) {
				u.owners = append(u.owners, o)
			}
		}
		for _, o := range u.owners {
			u.keys = append(u.keys, ino(o))
			for range rng.IntN(3) {
				k := blk(o, rng.Uint64N(4))
				if rng.IntN(4) == 0 {
					k = blockstore.DirentKey(1, o, string(rune('a'+rng.IntN(2))))
				}
				if !slicesContains(u.keys, k) {
					u.keys = append(u.keys, k)
				}
			}
		}
		units = append(units, u)
		ticket := submit(t, c, rng.IntN(3) == 0, tag, u.keys...)
		for _, k := range u.keys {
			newest[k] = tag
		}
		// Reads see the newest value of a key not yet applied.
		for range 3 {
			k := blk(1+rng.Uint64N(6), rng.Uint64N(4))
			if v, ok := c.Lookup(k); ok && binary.BigEndian.Uint64(v.Data) != newest[k] {
				t.Fatalf("Lookup(%v) after change %d: change %d, want %d", k, tag, binary.BigEndian.Uint64(v.Data), newest[k])
			}
		}
		switch rng.IntN(8) {
		case 0:
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.Wait(ticket); err != nil {
					t.Error(err)
				}
				r.mu.Lock()
				checks <- check{tag, r.applied}
				r.mu.Unlock()
			}()
		case 1:
			if err := c.WaitAll(); err != nil {
				t.Fatal(err)
			}
			r.mu.Lock()
			checks <- check{0, r.applied}
			r.mu.Unlock()
			checks <- check{tag, -1} // marks where the WaitAll was
		}
		if rng.IntN(20) == 0 {
			time.Sleep(time.Duration(rng.IntN(500)) * time.Microsecond)
		}
	}
	wg.Wait()
	if err := c.WaitAll(); err != nil {
		t.Fatal(err)
	}
	close(checks)
	if p, _ := c.Stats(); p != 0 {
		t.Fatalf("%d bytes pending after WaitAll", p)
	}

	// Where each change landed, and each key's history in the log.
	entryOf := make([]int, n+1) // 0: every put overwritten in its batch
	history := map[blockstore.Key][]uint64{}
	for i := range r.entries {
		for k, tag := range r.entry(i + 1) {
			if e := entryOf[tag]; e != 0 && e != i+1 {
				t.Fatalf("change %d split across entries %d and %d", tag, e, i+1)
			}
			entryOf[tag] = i + 1
			history[k] = append(history[k], tag)
		}
	}
	last := map[blockstore.Key]uint64{}
	for tag, u := range units[1:] {
		for _, k := range u.keys {
			last[k] = uint64(tag + 1)
		}
	}
	for k, h := range history {
		for i := 1; i < len(h); i++ {
			if h[i] <= h[i-1] {
				t.Fatalf("key %v: change %d reached the log after change %d", k, h[i], h[i-1])
			}
		}
		if h[len(h)-1] != last[k] {
			t.Fatalf("key %v ends as change %d, want %d", k, h[len(h)-1], last[k])
		}
	}
	if len(history) != len(last) {
		t.Fatalf("%d keys in the log, %d put", len(history), len(last))
	}
	// Owner order, and the entry by which each change and the changes its
	// owners made before it are in the log.
	latest := map[uint64]int{} // owner -> highest entry of its changes so far
	need := make([]int, n+1)
	for tag := 1; tag <= n; tag++ {
		e := entryOf[tag]
		for _, o := range units[tag].owners {
			if e != 0 && e < latest[o] {
				t.Fatalf("change %d (entry %d) reached the log before an earlier change to owner %d (entry %d)", tag, e, o, latest[o])
			}
			need[tag] = max(need[tag], latest[o])
		}
		need[tag] = max(need[tag], e)
		for _, o := range units[tag].owners {
			latest[o] = max(latest[o], e)
		}
	}
	var all []check
	for ch := range checks {
		all = append(all, ch)
	}
	for i, ch := range all {
		switch {
		case ch.committed < 0:
		case ch.tag != 0:
			if ch.committed < need[ch.tag] {
				t.Fatalf("Wait for change %d returned with %d entries applied; it needs %d", ch.tag, ch.committed, need[ch.tag])
			}
		default:
			upTo := all[i+1].tag
			for tag := uint64(1); tag <= upTo; tag++ {
				if entryOf[tag] > ch.committed {
					t.Fatalf("WaitAll after change %d returned with %d entries applied; change %d is in entry %d", upTo, ch.committed, tag, entryOf[tag])
				}
			}
		}
	}
	st := c.CommitStats()
	t.Logf("seed %d: %d entries (%d express), %d puts moved, %d urgent changes pinned", seed, st.Entries, st.Express, st.Moved, st.Pinned)
}

func slicesContains[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
