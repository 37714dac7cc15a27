package commit

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/objstore"
	"github.com/neonfs/neonfs/volume/fsm"
)

// gate is a propose function the test releases one entry at a time.
type gate struct {
	mu      sync.Mutex
	entries [][]byte
	release chan error
}

func newGate() *gate { return &gate{release: make(chan error)} }

func (g *gate) propose(data []byte, _ func()) error {
	err := <-g.release
	if err == nil {
		g.mu.Lock()
		g.entries = append(g.entries, data)
		g.mu.Unlock()
	}
	return err
}

func (g *gate) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.entries)
}

func blockPut(ino, b uint64, fill byte) blockstore.Entry {
	return blockstore.Entry{Key: blockstore.BlockKey(1, ino, b),
		Version: blockstore.Version{Value: blockstore.BlockValue(bytes.Repeat([]byte{fill}, bs))}}
}

func TestCommitterGroupCommit(t *testing.T) {
	g := newGate()
	c := NewCommitter(g.propose, 4<<20, time.Millisecond, nil)
	defer func() { go func() { g.release <- nil }(); c.Close() }()

	first, _ := c.Put(blockPut(1, 0, 1))
	// While the first entry is in flight, 50 writers put and wait: they must
	// share one entry, not take 50 round trips.
	time.Sleep(10 * time.Millisecond)
	var wg sync.WaitGroup
	var seqs sync.Map
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seq, err := c.Put(blockPut(2, uint64(i), 2))
			if err != nil {
				t.Error(err)
				return
			}
			seqs.Store(seq, true)
			if err := c.Wait(seq); err != nil {
				t.Error(err)
			}
		}()
	}
	waitFor(t, func() bool { p, _ := c.Stats(); return p >= 51*(bs+40) })
	g.release <- nil // first entry
	g.release <- nil // the group
	wg.Wait()
	if err := c.Wait(first); err != nil {
		t.Fatal(err)
	}
	n := 0
	seqs.Range(func(_, _ any) bool { n++; return true })
	if n != 1 || g.count() != 2 {
		t.Fatalf("50 concurrent writers used %d batches and %d entries; want 1 batch, 2 entries in all", n, g.count())
	}
	_, puts, err := fsm.DecodePuts(g.entries[1])
	if err != nil || len(puts) != 50 {
		t.Fatalf("group entry holds %d puts (err %v), want 50", len(puts), err)
	}
}

func TestCommitterBarrierAndOverlay(t *testing.T) {
	g := newGate()
	c := NewCommitter(g.propose, 4<<20, time.Millisecond, nil)
	defer c.Close()
	seq, _ := c.Put(blockPut(1, 0, 7))
	var done atomic.Bool
	go func() { c.Wait(seq); done.Store(true) }()
	time.Sleep(20 * time.Millisecond)
	if done.Load() {
		t.Fatal("Wait returned before the entry was committed")
	}
	if v, ok := c.Lookup(blockstore.BlockKey(1, 1, 0)); !ok || v.Data[0] != 7 {
		t.Fatal("uncommitted write not visible in the overlay")
	}
	g.release <- nil
	waitFor(t, done.Load)
	if _, ok := c.Lookup(blockstore.BlockKey(1, 1, 0)); ok {
		t.Fatal("applied write still in the overlay")
	}
}

func TestCommitterCoalescesRewrites(t *testing.T) {
	g := newGate()
	c := NewCommitter(g.propose, 4<<20, time.Millisecond, nil)
	defer c.Close()
	c.Put(blockPut(1, 0, 1)) // in flight
	time.Sleep(10 * time.Millisecond)
	for i := range 10 {
		c.Put(blockPut(1, 1, byte(i)))
	}
	seq := c.Current()
	go func() { g.release <- nil; g.release <- nil }()
	if err := c.Wait(seq); err != nil {
		t.Fatal(err)
	}
	_, puts, _ := fsm.DecodePuts(g.entries[1])
	if len(puts) != 1 || puts[0].Value.Data[0] != 9 {
		t.Fatalf("10 rewrites of one block gave %d puts", len(puts))
	}
	if p, _ := c.Stats(); p != 0 {
		t.Fatalf("pending bytes %d after everything committed", p)
	}
}

// testGate is the Admission gate over committer c, bounding its pending
// bytes at maxPending (and nothing else that binds).
func testGate(t *testing.T, c **Committer, propose ProposeFunc, maxBatch int, maxPending int64, linger time.Duration) *Admission {
	t.Helper()
	store := blockstore.NewStore(objstore.NewMemStore(), 1<<20)
	a := NewAdmission(t.TempDir(), Limits{ReserveBytes: 1, MaxPending: maxPending}, store, func() {})
	*c = NewCommitter(propose, maxBatch, linger, a.Changed)
	a.Attach(*c)
	a.CheckDisk()
	return a
}

func TestCommitterBackPressure(t *testing.T) {
	g := newGate()
	limit := int64(4 * (bs + 40))
	var c *Committer
	gate := testGate(t, &c, g.propose, 1<<20, limit, time.Millisecond)
	defer func() {
		go func() {
			for range 10 {
				g.release <- nil
			}
		}()
		c.Close()
	}()
	for i := range 4 {
		if err := gate.Wait(bs); err != nil {
			t.Fatal(err)
		}
		c.Put(blockPut(1, uint64(i), 1))
	}
	var through atomic.Bool
	go func() { gate.Wait(bs); through.Store(true) }()
	time.Sleep(20 * time.Millisecond)
	if through.Load() {
		t.Fatal("a writer got room while pending bytes were at the limit")
	}
	g.release <- nil
	waitFor(t, through.Load)
}

func TestCommitterRetriesTransientErrors(t *testing.T) {
	g := newGate()
	c := NewCommitter(g.propose, 1<<20, time.Millisecond, nil)
	defer c.Close()
	seq, _ := c.Put(blockPut(1, 0, 1))
	var done atomic.Bool
	go func() {
		if err := c.Wait(seq); err != nil {
			t.Error(err)
		}
		done.Store(true)
	}()
	g.release <- errors.New("disk stalled")
	g.release <- errors.New("disk stalled")
	time.Sleep(20 * time.Millisecond)
	if done.Load() {
		t.Fatal("fsync returned while the entry was failing")
	}
	g.release <- nil
	waitFor(t, done.Load)
}

func TestCommitterPermanentError(t *testing.T) {
	g := newGate()
	c := NewCommitter(g.propose, 1<<20, time.Millisecond, nil)
	seq, _ := c.Put(blockPut(1, 0, 1))
	g.release <- PermanentError{Err: errors.New("log closed")}
	if err := c.Wait(seq); err == nil {
		t.Fatal("Wait succeeded for an entry that was never committed")
	}
	if _, err := c.Put(blockPut(1, 1, 1)); err == nil {
		t.Fatal("Put accepted after a permanent failure")
	}
	c.Close()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCommitterLazyPuts checks what ends a lazy batch's lingering: a Wait
// for it, an urgent put joining it, the linger time, a full batch, and
// writers blocked on back-pressure. Nothing else may propose it.
func TestCommitterLazyPuts(t *testing.T) {
	const never = time.Hour
	entry := bs + 40
	tests := []struct {
		name       string
		linger     time.Duration
		maxBatch   int
		maxPending int64
		trigger    func(c *Committer, gate *Admission, seq uint64)
	}{
		{"wait", never, 1 << 20, 1 << 30, func(c *Committer, _ *Admission, seq uint64) { go c.Wait(seq) }},
		{"urgent put", never, 1 << 20, 1 << 30, func(c *Committer, _ *Admission, _ uint64) { c.Put(blockPut(1, 1, 1)) }},
		{"linger", 50 * time.Millisecond, 1 << 20, 1 << 30, nil},
		{"full batch", never, entry, 1 << 30, func(c *Committer, _ *Admission, _ uint64) { c.PutLazy(blockPut(1, 1, 1)) }},
		{"back-pressure", never, 1 << 20, int64(entry), func(_ *Committer, gate *Admission, _ uint64) { go gate.Wait(entry) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var proposed atomic.Int32
			var c *Committer
			gate := testGate(t, &c, func([]byte, func()) error { proposed.Add(1); return nil }, tt.maxBatch, tt.maxPending, tt.linger)
			defer c.Close()
			seq, err := c.PutLazy(blockPut(1, 0, 1))
			if err != nil {
				t.Fatal(err)
			}
			if tt.trigger != nil {
				time.Sleep(20 * time.Millisecond)
				if n := proposed.Load(); n != 0 {
					t.Fatalf("lazy batch proposed %d times with nothing asking for it", n)
				}
				tt.trigger(c, gate, seq)
			}
			waitFor(t, func() bool { _, done := c.Stats(); return done >= seq })
		})
	}
}

const bs = blockstore.BlockSize

// The committer refuses what the log cannot hold, whatever the caller
// checked: a bad put fails its Put, never the commit.
func TestCommitterRefusesUnencodablePuts(t *testing.T) {
	g := newGate()
	c := NewCommitter(g.propose, 1<<20, 0, nil)
	defer func() { close(g.release); c.Close() }()
	bad := []blockstore.Entry{
		{Key: blockstore.DirentKey(1, 1, strings.Repeat("x", 256))},
		{Key: blockstore.Key{Branch: 1, Kind: 9, Ino: 1}},
		{Key: blockstore.BlockKey(1, 1, 1), Version: blockstore.Version{Value: blockstore.Value{Kind: 7}}},
		{Key: blockstore.BlockKey(1, 1, 1), Version: blockstore.Version{Value: blockstore.Value{Kind: blockstore.ValTombstone, Data: []byte{1}}}},
	}
	for _, e := range bad {
		if _, err := c.Put(e); err == nil {
			t.Errorf("Put(%v, kind %d) accepted", e.Key, e.Value.Kind)
		}
	}
	if _, err := c.Put(bad[0]); !errors.Is(err, blockstore.ErrNameTooLong) {
		t.Errorf("long name: %v, want ErrNameTooLong", err)
	}
	if n := g.count(); n != 0 {
		t.Errorf("%d entries proposed", n)
	}
}

// WaitDurable returns once propose reports the entry durable, before it
// is applied; Wait still waits for the apply, and the batch stays in the
// overlay until then.
func TestWaitDurable(t *testing.T) {
	durable, applied := make(chan struct{}), make(chan struct{})
	c := NewCommitter(func(_ []byte, onDurable func()) error {
		<-durable
		onDurable()
		<-applied
		return nil
	}, 1<<20, time.Millisecond, nil)
	defer c.Close()
	k := blockstore.BlockKey(1, 2, 3)
	seq, err := c.Put(blockstore.Entry{Key: k, Version: blockstore.Version{Value: blockstore.BlockValue(make([]byte, 8192))}})
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan string, 2)
	go func() { c.WaitDurable(seq); waited <- "durable" }()
	go func() { c.Wait(seq); waited <- "applied" }()
	close(durable)
	if got := <-waited; got != "durable" {
		t.Fatalf("%s returned first, want WaitDurable", got)
	}
	if _, ok := c.Lookup(k); !ok {
		t.Fatal("a durable batch not yet applied left the overlay")
	}
	close(applied)
	if got := <-waited; got != "applied" {
		t.Fatalf("second return %q, want Wait's", got)
	}
}
