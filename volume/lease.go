package volume

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/volume/fsm"
)

// Writer leases on a cluster node (fsm/lease.go has the rules the log
// applies). A read-write mount takes its branch's lease first; a goroutine
// renews it every TTL/2; if no renewal commits before the holder's own
// deadline (TTL minus ClockMargin after the last successful renewal was
// proposed, on the monotonic clock), the mount is fenced: every write and
// fsync gets EIO from then on, and Options.OnLeaseLost is told so the
// daemon stops Postgres and unmounts. Unmount releases the lease.

const (
	// DefaultLeaseTTL: a dead writer's branch can be taken this long after
	// its last renewal. Renewals come every TTL/2, which leaves an
	// election (about a second here) plenty of room.
	DefaultLeaseTTL = 4 * time.Second
	// ClockMargin is how far apart nodes' wall clocks may be: the holder
	// stops this much before its lease expires, and another node waits
	// this much past the expiry before taking it.
	ClockMargin = 500 * time.Millisecond
)

// leases is this node's held leases: branch ID -> token, read by the
// committer's encoder for every batch.
type leases struct {
	mu     sync.Mutex
	tokens map[uint32]uint64
}

func (l *leases) set(id uint32, token uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if token == 0 {
		delete(l.tokens, id)
		return
	}
	l.tokens[id] = token
}

func (l *leases) snapshot() map[uint32]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.tokens)
}

// encodePuts is the committer's encoder. On a cluster node every batch is
// fenced with the leases this node holds. The FSM is told what the entry
// holds, so applying it here skips decoding it (fsm.Expect).
func (v *Volume) encodePuts(now int64, seq uint64, puts map[blockstore.Key]blockstore.Value, hint int) ([]byte, error) {
	var data []byte
	var err error
	if v.cluster != nil {
		data, err = fsm.EncodeFencedPuts(now, fsm.Fence{Node: v.cluster.ID(), Seq: seq, Tokens: v.held.snapshot()}, puts, hint)
	} else {
		data, err = fsm.EncodePuts(now, puts, hint)
	}
	if err == nil {
		v.fsm.Expect(data, puts) // propose Forgets it
	}
	return data, err
}

// lease is a mount's hold on its branch.
type lease struct {
	token    uint64
	deadline time.Time // monotonic: stop writing before this
	stop     chan struct{}
	stopped  chan struct{}
}

// acquireLease takes branch id's lease for f. Another node's unexpired
// lease refuses with *fsm.LeaseHeldError.
func (v *Volume) acquireLease(f *BranchFS) error {
	start := time.Now()
	b, err := fsm.EncodeLease(now(), fsm.LeaseOp{Op: fsm.LeaseAcquire, Branch: f.branch, Node: v.cluster.ID(), TTL: int64(v.opts.LeaseTTL)})
	if err != nil {
		return err
	}
	resp, err := v.proposeUntil(b, start.Add(v.opts.LeaseTTL), false)
	if err != nil {
		return fmt.Errorf("take the writer lease of branch %q: %w", f.name, err)
	}
	if e, ok := resp.(error); ok {
		return fmt.Errorf("take the writer lease of branch %q: %w", f.name, e)
	}
	l, ok := resp.(fsm.Lease)
	if !ok {
		return fmt.Errorf("take the writer lease of branch %q: unexpected answer %v", f.name, resp)
	}
	f.fencedCh = make(chan struct{})
	f.lease = &lease{token: l.Token, deadline: start.Add(v.opts.LeaseTTL - ClockMargin),
		stop: make(chan struct{}), stopped: make(chan struct{})}
	v.held.set(f.branch, l.Token)
	slog.Info("took writer lease", "branch", f.name, "node", l.Node, "token", l.Token, "ttl", v.opts.LeaseTTL)
	go v.keepLease(f, f.lease)
	if v.opts.LeadWrites && !v.log.IsLeader() {
		// Not needed for correctness: forwarding works from any node.
		if err := v.cluster.Transfer(v.cluster.ID()); err != nil {
			slog.Warn("move leadership to the writer", "branch", f.name, "err", err)
		} else {
			slog.Info("moved leadership to the writer", "branch", f.name)
		}
	}
	return nil
}

// proposeUntil proposes data, retrying transient failures (no leader, a
// forward that failed) until deadline. With overlap, an attempt that has
// not answered within a second is left running and another one starts:
// a forward to a leader that vanished can hang until its RPC timeout,
// while a new leader is elected in about a second. Only an op that may
// commit twice (a renewal: same token, later expiry) may overlap.
func (v *Volume) proposeUntil(data []byte, deadline time.Time, overlap bool) (any, error) {
	type result struct {
		resp any
		err  error
	}
	results := make(chan result, 64)
	attempt := func() {
		_, resp, err := v.log.Apply(data)
		results <- result{resp, err}
	}
	go attempt()
	pending, backoff := 1, 20*time.Millisecond
	var lastErr error
	for {
		wait := time.Until(deadline)
		if overlap {
			wait = min(wait, time.Second)
		}
		select {
		case r := <-results:
			pending--
			if r.err == nil {
				return r.resp, nil
			}
			lastErr = r.err
			if time.Now().Add(backoff).After(deadline) {
				return nil, lastErr
			}
			if pending == 0 {
				time.Sleep(backoff)
				backoff = min(2*backoff, 200*time.Millisecond)
				pending++
				go attempt()
			}
		case <-time.After(wait):
			if !time.Now().Before(deadline) {
				if lastErr == nil {
					lastErr = errors.New("no commit in time (no quorum?)")
				}
				return nil, lastErr
			}
			if pending < cap(results) {
				pending++
				go attempt()
			}
		}
	}
}

// keepLease renews l every TTL/2 until it is released, or fences f when a
// renewal cannot commit in time.
func (v *Volume) keepLease(f *BranchFS, l *lease) {
	defer close(l.stopped)
	ttl := v.opts.LeaseTTL
	for {
		select {
		case <-l.stop:
			return
		case <-time.After(ttl / 2):
		}
		start := time.Now()
		b, _ := fsm.EncodeLease(now(), fsm.LeaseOp{Op: fsm.LeaseRenew, Branch: f.branch, Node: v.cluster.ID(), TTL: int64(ttl), Token: l.token})
		resp, err := v.proposeUntil(b, l.deadline, true)
		if err == nil {
			if e, ok := resp.(error); ok {
				err = e
			}
		}
		if err != nil {
			v.fence(f, fmt.Errorf("renew the writer lease of branch %q: %w", f.name, err))
			return
		}
		l.deadline = start.Add(ttl - ClockMargin)
	}
}

// fence stops f writing for good: its lease is lost or about to be.
func (v *Volume) fence(f *BranchFS, why error) {
	if !f.fenced.CompareAndSwap(false, true) {
		return
	}
	v.held.set(f.branch, 0)
	slog.Error("writer lease lost: the branch is fenced (writes and fsyncs fail) and must be unmounted", "branch", f.name, "err", why)
	if fn := v.leaseLost.Load(); fn != nil {
		go (*fn)(f.name, why)
	}
	close(f.fencedCh)
}

// OnLeaseLost replaces Options.OnLeaseLost (the daemon, made after the
// volume, serves the mounts that must stop).
func (v *Volume) OnLeaseLost(fn func(branch string, err error)) { v.leaseLost.Store(&fn) }

// waitCommit waits for batch seq like Committer.WaitDurable, except that a
// fenced mount stops waiting (EIO): a log without quorum would otherwise
// hold its fsyncs, and with them its Postgres, until the partition heals.
func (f *BranchFS) waitCommit(seq uint64) error {
	if f.lease == nil {
		return f.vol.commit.WaitDurable(seq)
	}
	done := make(chan error, 1)
	go func() { done <- f.vol.commit.WaitDurable(seq) }()
	select {
	case err := <-done:
		return err
	case <-f.fencedCh:
		return errors.New("writer lease lost")
	}
}

// releaseLease stops renewing f's lease and gives it up through the log
// (best effort: an unreleased lease expires).
func (v *Volume) releaseLease(f *BranchFS) {
	l := f.lease
	if l == nil {
		return
	}
	close(l.stop)
	<-l.stopped
	v.held.set(f.branch, 0)
	if f.fenced.Load() {
		return
	}
	b, _ := fsm.EncodeLease(now(), fsm.LeaseOp{Op: fsm.LeaseRelease, Branch: f.branch, Node: v.cluster.ID(), Token: l.token})
	if _, err := v.proposeUntil(b, time.Now().Add(v.opts.LeaseTTL), true); err != nil {
		slog.Warn("release writer lease; it expires by itself", "branch", f.name, "err", err)
		return
	}
	slog.Info("released writer lease", "branch", f.name, "token", l.token)
}

// LeaseState describes a branch's writer lease as this node sees it.
type LeaseState struct {
	Held    bool      // some node holds it
	Node    string    // the holder
	Mine    bool      // this node holds it
	Token   uint64    //
	Expires time.Time // the holder's clock
	// Orphaned: held by another node and expired past ClockMargin by this
	// node's clock: the holder stopped renewing without releasing (it
	// died), and a node configured to serve the branch should take over.
	Orphaned bool
}

// Lease returns branch name's lease state.
func (v *Volume) Lease(name string) (LeaseState, error) {
	b, ok := v.fsm.TreeClone().ByName(name)
	if !ok {
		return LeaseState{}, fmt.Errorf("no branch %q", name)
	}
	l, held := v.fsm.LeaseOf(b.ID)
	if !held {
		return LeaseState{}, nil
	}
	st := LeaseState{Held: true, Node: l.Node, Token: l.Token, Expires: l.ExpiresAt()}
	st.Mine = v.cluster != nil && l.Node == v.cluster.ID()
	st.Orphaned = !st.Mine && time.Now().After(st.Expires.Add(ClockMargin))
	return st, nil
}

// IsLeaseHeld reports whether err refuses a mount because another node
// holds the branch.
func IsLeaseHeld(err error) bool {
	var h *fsm.LeaseHeldError
	return errors.As(err, &h)
}
