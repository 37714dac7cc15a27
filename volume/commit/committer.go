// Package commit is the volume's commit pipeline: the admission gate a
// change passes first (disk space, back-pressure, the memtable bound) and
// the Committer that groups changes into log entries and proposes them one
// at a time. It encodes entries with the fsm package's encoder and hands
// them to a propose function (the Raft log); it never imports the volume,
// the file system or the log (raftwal).
package commit

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/internal/hist"
	"github.com/neonfs/neonfs/volume/fsm"
)

// Committer turns mutations into log entries (group commit). Mutations
// land in open batches; one goroutine proposes batches one at a time, so
// while an entry is in flight the next batch fills up and N concurrent
// fsyncs cost about one commit. Until a batch is applied its puts are the
// overlay that reads consult first.
//
// Batches wait in two lanes, each first in, first out:
//
//   - the regular lane holds changes no fsync waits for yet (writeback of
//     files not fsynced lately). Its open batch may linger for company, and
//     it fills to MaxBatch before the next one opens.
//   - the express lane holds urgent changes (a file fsynced lately, an
//     O_DSYNC write) and whatever must follow them. Its batches never
//     linger.
//
// When both lanes have a batch ready the proposer alternates between them,
// so an fsync waits for at most one regular batch besides the one in
// flight (a bulk load queues several), and neither lane starves.
//
// Reordering is by owner: an owner is one inode, and its keys are its
// attributes, its blocks and, for a directory, its entries. A change
// (one Submit, committed atomically) goes to the express lane only after
// every pending put of every owner it touches has moved there from the
// regular lane, ahead of the change; a change touching an owner with
// puts in the express lane follows them there. So each owner's changes
// reach the log in the order they were made, while changes to different
// files may overtake each other: the freedom a disk has with writes no
// fsync covered yet. Changes touching several owners (creating, linking,
// renaming, removing) pin their owners: a pinned owner's puts never move,
// and a change that would need to move them goes to the regular lane
// instead (behind, if it touches an owner in the express lane, the
// express lane's newest batch), as every change did before the lanes.
//
// Submit answers a ticket naming the batch that holds the change. A
// ticket is reached once its batch is committed and applied, with every
// batch proposed before it and every express batch that took puts moved
// out of it or out of a regular batch before it: Wait(ticket) is a barrier
// for everything its owners' changes depended on up to that change. Seqs
// number entries in proposal (log) order and are assigned when a batch is
// proposed.
//
// A regular batch lingers until someone waits for it, it fills, an urgent
// change joins it, writers wait for room at the Admission gate
// (setWaiting) or linger passes: every commit costs an fdatasync, and an
// fsync arriving while a commit nobody asked for is in flight has to wait
// for it first. An express batch proposed while the regular lane has only
// its open batch takes that batch's puts along, so lazy changes still
// ride with the commits fsyncs ask for.
type Committer struct {
	propose  ProposeFunc
	encode   Encoder
	maxBatch int // bytes per entry
	linger   time.Duration
	timer    *time.Timer // wakes the proposer when a lazy batch has lingered
	// onChange is called, without mu, after every commit or failure: the
	// Admission gate's waiters look again.
	onChange func()

	mu       sync.Mutex
	changed  *sync.Cond // waiters: done, err or pending changed
	kick     *sync.Cond // the proposer: something may be ready to propose
	regular  lane
	express  lane
	inflight *batch
	// tickets holds every batch not yet reached (applied, with its deps),
	// by ticket; a ticket missing from it has been reached.
	tickets     map[uint64]*batch
	nextTicket  uint64
	lastSeq     uint64 // seq of the last batch proposed (or popped empty)
	lastExpress bool   // the last batch proposed came from the express lane
	pending     int64  // bytes in both lanes + inflight
	done        uint64 // highest committed and applied seq
	durable     uint64 // highest seq known durable in the log (>= done once applied)
	starved     int    // writers blocked at the Admission gate
	closing     bool
	err         error // set when the log is gone for good
	stopped     chan struct{}
	stats       CommitStats

	// How well group commit groups: puts and encoded bytes per committed
	// entry.
	batchPuts  *hist.Histogram
	batchBytes *hist.Histogram
}

// CommitStats counts the committer's work since open.
type CommitStats struct {
	Entries     uint64  `json:"entries"`
	Bytes       uint64  `json:"bytes"`
	Puts        uint64  `json:"puts"`
	Seconds     float64 `json:"seconds"` // time spent committing
	Retries     uint64  `json:"retries"`
	LastError   string  `json:"last_error,omitempty"`
	PendingByte int64   `json:"pending_bytes"`
	// Express counts entries proposed from the express lane; Moved the
	// puts that moved there from the regular lane ahead of an urgent
	// change; Pinned the urgent changes that stayed in the regular lane
	// because an owner they touch was pinned there.
	Express uint64 `json:"express"`
	Moved   uint64 `json:"moved"`
	Pinned  uint64 `json:"pinned"`
}

// BatchPutsBounds and BatchBytesBounds are the buckets of the batch-size
// histograms (BatchSizes). A full entry (MaxBatch, 4 MiB by default) holds
// about 500 block puts.
var (
	BatchPutsBounds  = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}
	BatchBytesBounds = []float64{1 << 9, 1 << 11, 1 << 13, 1 << 15, 1 << 17, 1 << 19, 1 << 21, 1 << 23}
)

// owner is the inode a key belongs to: an inode's attributes and blocks,
// a directory's entries.
type owner struct {
	branch uint32
	ino    uint64
}

func ownerOf(k blockstore.Key) owner { return owner{k.Branch, k.Ino} }

type batch struct {
	ticket uint64
	seq    uint64 // set when proposed: the seq that reaches it
	// proposed is set once the batch is proposed, or popped empty (its
	// seq is then the last one proposed before it).
	proposed bool
	express  bool
	puts     map[blockstore.Key]blockstore.Value
	owners   map[owner][]blockstore.Key // the keys of puts, by owner
	pinned   map[owner]bool             // owners a multi-owner change touched
	bytes    int
	urgent   bool      // holds an urgent change: propose as soon as the log is free
	wanted   bool      // someone waits for it
	first    time.Time // when the first put landed
	// after (regular batches) is an express batch this one is proposed
	// after: it holds a change that follows puts there.
	after *batch
	// deps are the express batches puts moved to from this batch or from
	// a regular batch before it: reaching this ticket needs them too.
	deps []*batch
}

// lane is a queue of batches proposed in order: closed ones, then the
// open one (nil when there is none).
type lane struct {
	queued []*batch
	open   *batch
}

func (l *lane) empty() bool { return len(l.queued) == 0 && l.open == nil }

// each calls fn on the lane's batches, oldest first.
func (l *lane) each(fn func(*batch)) {
	for _, b := range l.queued {
		fn(b)
	}
	if l.open != nil {
		fn(l.open)
	}
}

// newest is the lane's newest batch, or nil.
func (l *lane) newest() *batch {
	if l.open != nil {
		return l.open
	}
	if n := len(l.queued); n > 0 {
		return l.queued[n-1]
	}
	return nil
}

// holds reports whether any batch in the lane holds a put of o.
func (l *lane) holds(o owner) bool {
	found := false
	l.each(func(b *batch) { found = found || len(b.owners[o]) > 0 })
	return found
}

// ErrCommitterClosed is returned for mutations after Close.
var ErrCommitterClosed = errors.New("volume is closing")

// PermanentError marks a propose failure that retrying cannot fix.
type PermanentError struct{ Err error }

func (e PermanentError) Error() string { return e.Err.Error() }
func (e PermanentError) Unwrap() error { return e.Err }

// ProposeFunc appends data to the log and returns once it is committed
// and applied. It may call durable first, as soon as the entry is
// committed (durable in the log) but not yet applied: WaitDurable then
// returns without waiting for the apply.
type ProposeFunc func(data []byte, durable func()) error

// NewCommitter starts a committer. propose must return once data is
// committed and applied; it is retried with backoff on error unless the
// error is a PermanentError. Lazy puts wait up to linger for company.
// onChange (may be nil) is called after every commit and on failure.
func NewCommitter(propose ProposeFunc, maxBatch int, linger time.Duration, onChange func()) *Committer {
	if onChange == nil {
		onChange = func() {}
	}
	c := &Committer{propose: propose, encode: func(now int64, _ uint64, puts map[blockstore.Key]blockstore.Value, hint int) ([]byte, error) {
		return fsm.EncodePuts(now, puts, hint)
	}, maxBatch: maxBatch, linger: linger, onChange: onChange,
		tickets: make(map[uint64]*batch), stopped: make(chan struct{}),
		batchPuts: hist.New(BatchPutsBounds...), batchBytes: hist.New(BatchBytesBounds...)}
	c.changed = sync.NewCond(&c.mu)
	c.kick = sync.NewCond(&c.mu)
	c.timer = time.AfterFunc(time.Hour, func() {
		c.mu.Lock()
		c.kick.Signal()
		c.mu.Unlock()
	})
	c.timer.Stop()
	go c.run()
	return c
}

// Encoder turns the batch proposed as seq into a log entry. Seqs grow by
// one per entry, in proposal order.
type Encoder func(now int64, seq uint64, puts map[blockstore.Key]blockstore.Value, sizeHint int) ([]byte, error)

// SetEncoder replaces how batches become log entries (fsm.EncodePuts): a
// cluster node fences every batch with its writer leases. Call it before
// the first Put.
func (c *Committer) SetEncoder(enc Encoder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.encode = enc
}

func (c *Committer) encoder() Encoder {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.encode
}

func putSize(e blockstore.Entry) int { return len(e.Value.Data) + 40 }

// pendingBytes is what batches not yet applied hold: the Admission gate's
// back-pressure measure.
func (c *Committer) pendingBytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending
}

// failed returns the error that stops the committer, if any.
func (c *Committer) failed() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.errLocked()
}

// setWaiting tells the committer how many writers wait for room: while
// any do, lingering batches are proposed at once.
func (c *Committer) setWaiting(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.starved = n
	if n > 0 {
		c.kick.Signal()
	}
}

func (c *Committer) errLocked() error {
	if c.err != nil {
		return c.err
	}
	if c.closing {
		return ErrCommitterClosed
	}
	return nil
}

// Put adds puts to the log as one atomic unit (they land in one entry) and
// returns the ticket of the batch holding them; the batch is proposed as
// soon as the log is free. Callers serialise Put with the state changes it
// records, so each owner's log order is its mutation order.
func (c *Committer) Put(puts ...blockstore.Entry) (uint64, error) {
	return c.Submit(true, puts)
}

// PutLazy is Put for changes no fsync is expected to wait for soon (a file
// not fsynced lately): their batch may linger to gather more.
func (c *Committer) PutLazy(puts ...blockstore.Entry) (uint64, error) {
	return c.Submit(false, puts)
}

// Submit is Put (urgent) or PutLazy. It refuses a put the log cannot hold
// (fsm.CheckPut) before accepting anything. The ticket it returns covers
// every earlier change to the owners of puts.
func (c *Committer) Submit(urgent bool, puts []blockstore.Entry) (uint64, error) {
	size := 0
	var owners []owner
	for _, e := range puts {
		if err := fsm.CheckPut(e); err != nil {
			return 0, err
		}
		size += putSize(e)
		if o := ownerOf(e.Key); !slices.Contains(owners, o) {
			owners = append(owners, o)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.errLocked(); err != nil {
		return 0, err
	}
	follows := false // an owner has puts in the express lane
	for _, o := range owners {
		follows = follows || c.express.holds(o)
	}
	var b *batch
	switch {
	case (urgent || follows) && c.movableLocked(owners):
		b = c.openLocked(&c.express, size, true)
		c.moveLocked(owners, b)
	default:
		if urgent {
			c.stats.Pinned++
		}
		b = c.openLocked(&c.regular, size, false)
		if follows {
			b.after = c.express.newest()
		}
		if !urgent && len(b.puts) == 0 {
			c.timer.Reset(c.linger)
		}
	}
	b.urgent = b.urgent || urgent
	for _, e := range puts {
		c.addLocked(b, e.Key, e.Value)
	}
	if len(owners) > 1 {
		if b.pinned == nil {
			b.pinned = make(map[owner]bool)
		}
		for _, o := range owners {
			b.pinned[o] = true
		}
	}
	if c.readyLocked() {
		c.kick.Signal()
	}
	return b.ticket, nil
}

// movableLocked reports whether every pending regular put of owners can
// move to the express lane: none is pinned.
func (c *Committer) movableLocked(owners []owner) bool {
	ok := true
	c.regular.each(func(b *batch) {
		for _, o := range owners {
			if b.pinned[o] && len(b.owners[o]) > 0 {
				ok = false
			}
		}
	})
	return ok
}

// moveLocked moves every regular put of owners into e, oldest first, so
// newer values overwrite older ones. Every regular batch from the first
// one that gave up a put on now counts e among its deps: a ticket of one
// of them covers the moved puts.
func (c *Committer) moveLocked(owners []owner, e *batch) {
	moved := false
	c.regular.each(func(b *batch) {
		for _, o := range owners {
			keys := b.owners[o]
			if len(keys) == 0 {
				continue
			}
			for _, k := range keys {
				v := b.puts[k]
				delete(b.puts, k)
				n := len(v.Data) + 40
				b.bytes -= n
				c.pending -= int64(n)
				c.addLocked(e, k, v)
				c.stats.Moved++
			}
			delete(b.owners, o)
			moved = true
		}
		if moved && (len(b.deps) == 0 || b.deps[len(b.deps)-1] != e) {
			b.deps = append(b.deps, e)
		}
	})
}

// openLocked returns the lane's open batch, closing it first if size
// more bytes would not fit, or opening one.
func (c *Committer) openLocked(l *lane, size int, express bool) *batch {
	if b := l.open; b != nil && len(b.puts) > 0 && b.bytes+size > c.maxBatch {
		l.queued = append(l.queued, b)
		l.open = nil
	}
	if l.open == nil {
		c.nextTicket++
		b := &batch{ticket: c.nextTicket, express: express, first: time.Now(),
			puts: make(map[blockstore.Key]blockstore.Value), owners: make(map[owner][]blockstore.Key)}
		c.tickets[b.ticket] = b
		l.open = b
	}
	return l.open
}

// addLocked puts k = v in b, replacing an older value of k there.
func (c *Committer) addLocked(b *batch, k blockstore.Key, v blockstore.Value) {
	if old, ok := b.puts[k]; ok {
		d := len(old.Data) + 40
		b.bytes -= d
		c.pending -= int64(d)
	} else {
		o := ownerOf(k)
		b.owners[o] = append(b.owners[o], k)
	}
	if len(b.puts) == 0 {
		b.first = time.Now()
	}
	b.puts[k] = v
	n := len(v.Data) + 40
	b.bytes += n
	c.pending += int64(n)
}

// Lookup returns the newest not-yet-applied value of k. A key pending in
// both lanes is newer in the regular one (a change that could not move
// stays behind the express lane's puts of its owners).
func (c *Committer) Lookup(k blockstore.Key) (blockstore.Value, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range []*lane{&c.regular, &c.express} {
		if l.open != nil {
			if v, ok := l.open.puts[k]; ok {
				return v, true
			}
		}
		for i := len(l.queued) - 1; i >= 0; i-- {
			if v, ok := l.queued[i].puts[k]; ok {
				return v, true
			}
		}
	}
	if c.inflight != nil {
		if v, ok := c.inflight.puts[k]; ok {
			return v, true
		}
	}
	return blockstore.Value{}, false
}

// KeysIn returns the keys in [from, to) of batches not yet applied.
func (c *Committer) KeysIn(from, to blockstore.Key) []blockstore.Key {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []blockstore.Key
	scan := func(b *batch) {
		for k := range b.puts {
			if k.Compare(from) >= 0 && k.Compare(to) < 0 {
				out = append(out, k)
			}
		}
	}
	c.regular.each(scan)
	c.express.each(scan)
	if c.inflight != nil {
		scan(c.inflight)
	}
	return out
}

// Wait returns once the batch of ticket is committed and applied, with
// everything it depends on, or the error that means it never will be.
func (c *Committer) Wait(ticket uint64) error { return c.wait(ticket, false) }

// WaitDurable returns once the batch of ticket is committed, applied or
// not: what an fsync needs. Until applied, the batch stays in the overlay
// reads consult, so nothing reads around it.
func (c *Committer) WaitDurable(ticket uint64) error { return c.wait(ticket, true) }

// WaitAll returns once every change put so far is committed and applied.
func (c *Committer) WaitAll() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	seq := c.lastSeq
	var bs []*batch
	for _, l := range []*lane{&c.regular, &c.express} {
		if b := l.newest(); b != nil {
			bs = append(bs, b)
			c.wantLocked(b)
		}
	}
	reached := func() bool {
		if c.done < seq {
			return false
		}
		for _, b := range bs {
			if !c.reachedLocked(b, false) {
				return false
			}
		}
		return true
	}
	return c.waitLocked(reached)
}

// WaitApplied returns once every batch reported durable so far is
// applied too: an LSN read after it covers every fsync that returned
// before it.
func (c *Committer) WaitApplied() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	seq := c.durable
	return c.waitLocked(func() bool { return c.done >= seq })
}

func (c *Committer) wait(ticket uint64, durable bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.tickets[ticket]
	if b == nil {
		return nil // reached, or nothing (ticket 0)
	}
	c.wantLocked(b)
	return c.waitLocked(func() bool { return c.reachedLocked(b, durable) })
}

func (c *Committer) waitLocked(reached func() bool) error {
	for !reached() && c.err == nil {
		c.changed.Wait()
	}
	if reached() {
		return nil
	}
	return c.err
}

// wantLocked marks b waited for: a lingering batch is proposed at once.
func (c *Committer) wantLocked(b *batch) {
	if !b.wanted {
		b.wanted = true
		c.kick.Signal()
	}
}

// reachedLocked reports whether b and its deps are applied (or, durable,
// at least durable).
func (c *Committer) reachedLocked(b *batch, durable bool) bool {
	mark := c.done
	if durable {
		mark = max(mark, c.durable)
	}
	if !b.proposed || b.seq > mark {
		return false
	}
	for _, d := range b.deps {
		if !d.proposed || d.seq > mark {
			return false
		}
	}
	return true
}

// CommitStats returns the counters.
func (c *Committer) CommitStats() CommitStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stats
	st.PendingByte = c.pending
	return st
}

// BatchSizes returns the histograms of puts and encoded bytes per
// committed entry.
func (c *Committer) BatchSizes() (puts, bytes hist.Snapshot) {
	return c.batchPuts.Snapshot(), c.batchBytes.Snapshot()
}

// Stats reports pending bytes and the committed seq.
func (c *Committer) Stats() (pending int64, done uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending, c.done
}

// regularHeadLocked is the regular lane's next batch if it may be
// proposed now: queued batches may, the open one when openReadyLocked;
// neither before the express batch it is after.
func (c *Committer) regularHeadLocked() *batch {
	var b *batch
	switch {
	case len(c.regular.queued) > 0:
		b = c.regular.queued[0]
	case c.regular.open != nil && (len(c.regular.open.puts) == 0 || c.openReadyLocked()):
		b = c.regular.open
	default:
		return nil
	}
	if b.after != nil && !b.after.proposed {
		return nil
	}
	return b
}

func (l *lane) head() *batch {
	if len(l.queued) > 0 {
		return l.queued[0]
	}
	return l.open
}

func (l *lane) pop() *batch {
	if len(l.queued) > 0 {
		b := l.queued[0]
		l.queued = l.queued[1:]
		return b
	}
	b := l.open
	l.open = nil
	return b
}

// readyLocked reports whether the proposer has something to do.
func (c *Committer) readyLocked() bool {
	return c.express.head() != nil || c.regularHeadLocked() != nil
}

// nextLocked takes the next batch to propose: the express lane's or the
// regular lane's head, alternating while both are ready. A regular head
// emptied by moves is popped on the way; it is reached with everything
// proposed before it. An express batch taken while the regular lane holds
// just its open batch takes that batch's puts along.
func (c *Committer) nextLocked() *batch {
	for {
		r := c.regularHeadLocked()
		if r != nil && len(r.puts) == 0 {
			c.regular.pop()
			r.seq, r.proposed = c.lastSeq, true
			if r.seq <= c.done {
				c.finishLocked()
			}
			continue
		}
		e := c.express.head()
		if e != nil && (r == nil || !c.lastExpress) {
			c.express.pop()
			c.lastSeq++
			e.seq, e.proposed = c.lastSeq, true
			c.lastExpress = true
			// A key pending in both lanes is newer in the regular one, so
			// the open regular batch may follow e in e's entry unless it
			// must follow a later express batch.
			if o := c.regular.open; len(c.regular.queued) == 0 && o != nil &&
				(o.after == nil || o.after.proposed) {
				for k, v := range o.puts {
					c.addLocked(e, k, v)
				}
				c.pending -= int64(o.bytes)
				o.puts, o.owners, o.pinned, o.bytes = nil, nil, nil, 0
				c.regular.pop()
				o.seq, o.proposed = e.seq, true
			}
			return e
		}
		if r == nil {
			return nil
		}
		c.regular.pop()
		c.lastSeq++
		r.seq, r.proposed = c.lastSeq, true
		c.lastExpress = false
		return r
	}
}

// finishLocked drops the tickets now reached and wakes the waiters.
func (c *Committer) finishLocked() {
	for t, b := range c.tickets {
		if c.reachedLocked(b, false) {
			delete(c.tickets, t)
		}
	}
	c.changed.Broadcast()
}

func (c *Committer) run() {
	defer close(c.stopped)
	for {
		c.mu.Lock()
		for !c.readyLocked() && !c.closing {
			c.kick.Wait()
		}
		b := c.nextLocked()
		if b == nil {
			if c.closing && c.express.empty() && c.regular.empty() {
				c.mu.Unlock()
				return
			}
			c.mu.Unlock()
			continue
		}
		c.inflight = b
		c.mu.Unlock()

		// put checked every entry, so encoding cannot fail; if it did,
		// nothing reaches the log and the committer stops.
		data, err := c.encoder()(time.Now().UnixNano(), b.seq, b.puts, b.bytes)
		start := time.Now()
		if err == nil {
			err = c.proposeRetrying(data, c.durableFunc(b.seq))
		} else {
			err = PermanentError{Err: err}
		}

		if err == nil {
			// Before done moves: a waiter that returns sees its entry
			// counted.
			c.batchPuts.Observe(float64(len(b.puts)))
			c.batchBytes.Observe(float64(len(data)))
		}
		c.mu.Lock()
		c.stats.Entries++
		if b.express {
			c.stats.Express++
		}
		c.stats.Bytes += uint64(len(data))
		c.stats.Puts += uint64(len(b.puts))
		c.stats.Seconds += time.Since(start).Seconds()
		c.inflight = nil
		c.pending -= int64(b.bytes)
		if err != nil {
			c.err = err
			c.changed.Broadcast()
			c.mu.Unlock()
			c.onChange()
			return
		}
		b.puts, b.owners, b.pinned = nil, nil, nil // applied: the memtable has them
		c.done = b.seq
		c.durable = max(c.durable, b.seq)
		c.finishLocked()
		c.mu.Unlock()
		c.onChange()
	}
}

// durableFunc is what propose calls when batch seq is durable: the
// fsyncs waiting for it go on while it is applied.
func (c *Committer) durableFunc(seq uint64) func() {
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if seq > c.durable {
			c.durable = seq
			c.changed.Broadcast()
		}
	}
}

// openReadyLocked reports whether the regular lane's open batch should be
// proposed now.
func (c *Committer) openReadyLocked() bool {
	b := c.regular.open
	if b == nil || len(b.puts) == 0 {
		return false
	}
	return b.urgent || b.wanted || c.starved > 0 || c.closing ||
		time.Since(b.first) >= c.linger
}

// shutdownRetry bounds how long Close keeps retrying a failing commit.
const shutdownRetry = 30 * time.Second

// proposeRetrying retries transient failures (a full or stalled disk, a lost
// quorum): an fsync waiting on this batch must block, not fail, because
// Postgres treats a failed fsync as data loss and PANICs. Only when closing
// does it give up, after shutdownRetry: what is left was never fsynced.
func (c *Committer) proposeRetrying(data []byte, durable func()) error {
	backoff := 10 * time.Millisecond
	var closingSince time.Time
	for attempt := 1; ; attempt++ {
		err := c.propose(data, durable)
		if err == nil {
			return nil
		}
		var perm PermanentError
		if errors.As(err, &perm) {
			slog.Error("commit failed permanently", "err", err)
			return err
		}
		slog.Warn("commit failed, retrying", "attempt", attempt, "backoff", backoff, "err", err)
		c.mu.Lock()
		c.stats.Retries++
		c.stats.LastError = err.Error()
		closing, pending := c.closing, c.pending
		c.mu.Unlock()
		if closing {
			if closingSince.IsZero() {
				closingSince = time.Now()
			} else if time.Since(closingSince) > shutdownRetry {
				return PermanentError{Err: fmt.Errorf("shutting down: %d bytes of writes that were never fsynced could not be committed: %w", pending, err)}
			}
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, 2*time.Second)
	}
}

// Close commits what is pending and stops the committer.
func (c *Committer) Close() error {
	c.mu.Lock()
	c.closing = true
	c.changed.Broadcast()
	c.kick.Signal()
	c.mu.Unlock()
	c.onChange()
	c.timer.Stop()
	<-c.stopped
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
