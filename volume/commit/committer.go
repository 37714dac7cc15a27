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
	"sync"
	"time"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/internal/hist"
	"github.com/neonfs/neonfs/volume/fsm"
)

// Committer turns mutations into log entries (group commit). Mutations
// land in the open batch; one goroutine proposes batches one at a time, so
// while an entry is in flight the next batch fills up and N concurrent
// fsyncs cost about one commit. Until a batch is applied its puts are the
// overlay that reads consult first.
//
// Seqs number batches in proposal order; a batch's seq is committed once
// its entry is committed and applied, and seqs commit in order, so
// Wait(seq) is a barrier for everything put up to that batch.
//
// A batch of lazy puts (PutLazy) lingers until someone waits for it, it
// fills, an urgent put joins it, writers wait for room at the Admission
// gate (setWaiting) or linger passes: every commit costs an fdatasync, and an fsync arriving while a
// commit nobody asked for is in flight has to wait for it first.
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
	open     *batch
	queued   []*batch // closed, oldest first
	inflight *batch
	pending  int64  // bytes in open + queued + inflight
	done     uint64 // highest committed and applied seq
	durable  uint64 // highest seq known durable in the log (>= done once applied)
	wanted   uint64 // highest seq a Wait is blocked on
	starved  int    // writers blocked at the Admission gate
	closing  bool
	err      error // set when the log is gone for good
	stopped  chan struct{}
	stats    CommitStats

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
}

// BatchPutsBounds and BatchBytesBounds are the buckets of the batch-size
// histograms (BatchSizes). A full entry (MaxBatch, 4 MiB by default) holds
// about 500 block puts.
var (
	BatchPutsBounds  = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}
	BatchBytesBounds = []float64{1 << 9, 1 << 11, 1 << 13, 1 << 15, 1 << 17, 1 << 19, 1 << 21, 1 << 23}
)

type batch struct {
	seq    uint64
	puts   map[blockstore.Key]blockstore.Value
	bytes  int
	urgent bool      // holds a Put: propose as soon as the log is free
	first  time.Time // when the first put landed
}

func newBatch(seq uint64) *batch {
	return &batch{seq: seq, puts: make(map[blockstore.Key]blockstore.Value)}
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
		open: newBatch(1), stopped: make(chan struct{}),
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

// Encoder turns batch seq into a log entry. Sequence numbers grow by one
// per batch, in proposal order.
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
// returns the seq of the batch holding them; the batch is proposed as soon
// as the log is free. Callers serialise Put with the state changes it
// records, so the log order is the mutation order.
func (c *Committer) Put(puts ...blockstore.Entry) (uint64, error) {
	return c.Submit(true, puts)
}

// PutLazy is Put for changes no fsync is expected to wait for soon (a file
// not fsynced lately): their batch may linger to gather more.
func (c *Committer) PutLazy(puts ...blockstore.Entry) (uint64, error) {
	return c.Submit(false, puts)
}

// Submit is Put (urgent) or PutLazy. It refuses a put the log cannot hold
// (fsm.CheckPut) before accepting anything.
func (c *Committer) Submit(urgent bool, puts []blockstore.Entry) (uint64, error) {
	size := 0
	for _, e := range puts {
		if err := fsm.CheckPut(e); err != nil {
			return 0, err
		}
		size += putSize(e)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.errLocked(); err != nil {
		return 0, err
	}
	if len(c.open.puts) > 0 && c.open.bytes+size > c.maxBatch {
		c.queued = append(c.queued, c.open)
		c.open = newBatch(c.open.seq + 1)
	}
	b := c.open
	if len(b.puts) == 0 {
		b.first = time.Now()
		if !urgent {
			c.timer.Reset(c.linger)
		}
	}
	b.urgent = b.urgent || urgent
	for _, e := range puts {
		if old, ok := b.puts[e.Key]; ok {
			d := len(old.Data) + 40
			b.bytes -= d
			c.pending -= int64(d)
		}
		b.puts[e.Key] = e.Value
	}
	b.bytes += size
	c.pending += int64(size)
	if len(c.queued) > 0 || c.openReadyLocked() {
		c.kick.Signal()
	}
	return b.seq, nil
}

// Lookup returns the newest not-yet-applied value of k.
func (c *Committer) Lookup(k blockstore.Key) (blockstore.Value, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.open.puts[k]; ok {
		return v, true
	}
	for i := len(c.queued) - 1; i >= 0; i-- {
		if v, ok := c.queued[i].puts[k]; ok {
			return v, true
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
	scan(c.open)
	for _, b := range c.queued {
		scan(b)
	}
	if c.inflight != nil {
		scan(c.inflight)
	}
	return out
}

// Current is the seq of the open batch: Wait(Current()) is a barrier for
// everything put so far.
func (c *Committer) Current() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.open.puts) == 0 {
		return c.open.seq - 1
	}
	return c.open.seq
}

// Wait returns once batch seq is committed and applied, or the error that
// means it never will be.
func (c *Committer) Wait(seq uint64) error { return c.wait(seq, false) }

// WaitDurable returns once batch seq is committed, applied or not: what
// an fsync needs. Until applied, the batch stays in the overlay reads
// consult, so nothing reads around it.
func (c *Committer) WaitDurable(seq uint64) error { return c.wait(seq, true) }

// WaitApplied returns once every batch reported durable so far is
// applied too: an LSN read after it covers every fsync that returned
// before it.
func (c *Committer) WaitApplied() error {
	c.mu.Lock()
	seq := c.durable
	c.mu.Unlock()
	return c.Wait(seq)
}

func (c *Committer) wait(seq uint64, durable bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	reached := func() bool { return c.done >= seq || durable && c.durable >= seq }
	if seq > c.wanted && !reached() {
		c.wanted = seq
		c.kick.Signal()
	}
	for !reached() && c.err == nil {
		c.changed.Wait()
	}
	if reached() {
		return nil
	}
	return c.err
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

func (c *Committer) run() {
	defer close(c.stopped)
	for {
		c.mu.Lock()
		for len(c.queued) == 0 && !c.openReadyLocked() && !c.closing {
			c.kick.Wait()
		}
		var b *batch
		switch {
		case len(c.queued) > 0:
			b = c.queued[0]
			c.queued = c.queued[1:]
		case len(c.open.puts) > 0:
			b = c.open
			c.open = newBatch(b.seq + 1)
		default: // closing with nothing left
			c.mu.Unlock()
			return
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
		c.done = b.seq
		c.durable = max(c.durable, b.seq)
		c.changed.Broadcast()
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

// openReadyLocked reports whether the open batch should be proposed now.
func (c *Committer) openReadyLocked() bool {
	b := c.open
	if len(b.puts) == 0 {
		return false
	}
	return b.urgent || c.wanted >= b.seq || c.starved > 0 || c.closing ||
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
