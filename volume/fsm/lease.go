package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/neonfs/neonfs/blockstore"
)

// Writer leases. In a cluster any node could mount a branch read-write, so
// the log decides who may: a node takes a branch's lease with an entry,
// renews it with entries, and releases it on unmount. The lease's token is
// the LSN of the entry that granted it; every puts entry a cluster node
// proposes carries the tokens of the branches it writes (a fenced puts
// entry), and the FSM refuses puts whose token is not the branch's current
// one. So once a new holder's acquire is committed, nothing the old holder
// still has in flight can commit: fencing does not depend on clocks.
//
// Expiry does depend on clocks: a lease expires at the holder's wall-clock
// time at renewal plus the TTL (both in the entry), and an acquire is
// granted over another node's lease only when the acquiring entry's time
// is past that. The holder stops writing before its own deadline (measured
// on its monotonic clock from before the renewal was proposed, minus a
// margin), so with clocks that agree within the margin the old holder has
// stopped before the new one starts. A volume whose branches never had a
// lease (one node) never meets any of this.

// Lease is a branch's writer lease.
type Lease struct {
	Node    string `json:"node"`
	Token   uint64 `json:"token"`   // the LSN of the acquire: the fencing token
	Expires int64  `json:"expires"` // unix ns: the renewing entry's time + TTL
	// Seq is the last fenced puts batch applied under this lease (see
	// Fence.Seq).
	Seq uint64 `json:"seq,omitempty"`
}

// ExpiresAt is Expires as a time.
func (l Lease) ExpiresAt() time.Time { return time.Unix(0, l.Expires) }

// LeaseOp takes, renews or releases a branch's lease.
type LeaseOp struct {
	Op     string `json:"op"` // LeaseAcquire, LeaseRenew, LeaseRelease
	Branch uint32 `json:"branch"`
	Node   string `json:"node"`
	TTL    int64  `json:"ttl,omitempty"`   // ns; acquire and renew
	Token  uint64 `json:"token,omitempty"` // renew and release: the lease being renewed
}

const (
	LeaseAcquire = "acquire"
	LeaseRenew   = "renew"
	LeaseRelease = "release"
)

// LeaseHeldError refuses an acquire: another node holds the branch.
type LeaseHeldError struct {
	Branch uint32
	Lease  Lease
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("branch %d is written by node %s (lease %d, expires %s)", e.Branch, e.Lease.Node,
		e.Lease.Token, e.Lease.ExpiresAt().UTC().Format(time.RFC3339Nano))
}

// ErrLeaseLost refuses a renewal or a fenced write: the lease named is not
// the branch's current one (expired, released, or taken by another node).
var ErrLeaseLost = errors.New("writer lease lost")

// Fence is what a fenced puts entry carries: the proposing node, the
// lease token it holds for each branch it writes, and the batch's sequence
// number, which grows with every batch the node proposes. A batch whose
// sequence is not above the last one applied under a branch's lease is a
// copy of one already applied (a forward that timed out and was proposed
// again, whose first copy committed after all, maybe after a later batch)
// and is skipped: applying it would put old values over newer ones.
type Fence struct {
	Node   string
	Seq    uint64
	Tokens map[uint32]uint64
}

// EncodeLease records a lease op.
func EncodeLease(now int64, op LeaseOp) ([]byte, error) { return encodeJSON(entryLease, now, op) }

// EncodeFencedPuts encodes a puts batch (as EncodePuts) wrapped in fence.
func EncodeFencedPuts(now int64, fence Fence, puts map[blockstore.Key]blockstore.Value, sizeHint int) ([]byte, error) {
	inner, err := EncodePuts(now, puts, sizeHint)
	if err != nil {
		return nil, err
	}
	b := appendHeader(make([]byte, 0, len(inner)+len(fence.Node)+16*len(fence.Tokens)+24), entryFencedPuts, now)
	b = binary.AppendUvarint(b, uint64(len(fence.Node)))
	b = append(b, fence.Node...)
	b = binary.AppendUvarint(b, fence.Seq)
	ids := make([]uint32, 0, len(fence.Tokens))
	for id := range fence.Tokens {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		b = binary.AppendUvarint(b, uint64(id))
		b = binary.AppendUvarint(b, fence.Tokens[id])
	}
	return append(b, inner...), nil
}

// decodeFence decodes a fenced entry's body: the fence, then an inner puts
// entry.
func decodeFence(b []byte) (Fence, []byte, error) {
	var f Fence
	n, k := binary.Uvarint(b)
	if k <= 0 || n > 255 || n > uint64(len(b)-k) {
		return f, nil, fmt.Errorf("%w: fence node", errBadEntry)
	}
	f.Node, b = string(b[k:k+int(n)]), b[k+int(n):]
	seq, k := binary.Uvarint(b)
	if k <= 0 {
		return f, nil, fmt.Errorf("%w: fence sequence", errBadEntry)
	}
	f.Seq, b = seq, b[k:]
	count, k := binary.Uvarint(b)
	if k <= 0 || count > uint64(len(b)) {
		return f, nil, fmt.Errorf("%w: fence count", errBadEntry)
	}
	b = b[k:]
	f.Tokens = make(map[uint32]uint64, count)
	for range count {
		id, k1 := binary.Uvarint(b)
		if k1 <= 0 || id > 1<<32-1 {
			return f, nil, fmt.Errorf("%w: fence branch", errBadEntry)
		}
		tok, k2 := binary.Uvarint(b[k1:])
		if k2 <= 0 {
			return f, nil, fmt.Errorf("%w: fence token", errBadEntry)
		}
		f.Tokens[uint32(id)] = tok
		b = b[k1+k2:]
	}
	return f, b, nil
}

// applyLease changes the lease table. The answer is the lease as granted
// or renewed, nil for a release, or a refusal.
func (f *FSM) applyLease(lsn uint64, t int64, op LeaseOp) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if op.Node == "" {
		return fmt.Errorf("lease op without a node")
	}
	if _, ok := f.tree.Branches[op.Branch]; !ok {
		return fmt.Errorf("no branch %d", op.Branch)
	}
	cur, held := f.leases[op.Branch]
	switch op.Op {
	case LeaseAcquire:
		if op.TTL <= 0 {
			return fmt.Errorf("lease acquire with TTL %d", op.TTL)
		}
		if held && cur.Node != op.Node && t < cur.Expires {
			return &LeaseHeldError{Branch: op.Branch, Lease: cur}
		}
		l := Lease{Node: op.Node, Token: lsn, Expires: t + op.TTL}
		f.leases[op.Branch] = l
		return l
	case LeaseRenew:
		if !held || cur.Node != op.Node || cur.Token != op.Token || t >= cur.Expires {
			return fmt.Errorf("renew lease %d of branch %d: %w", op.Token, op.Branch, ErrLeaseLost)
		}
		cur.Expires = t + op.TTL
		f.leases[op.Branch] = cur
		return cur
	case LeaseRelease:
		if held && cur.Node == op.Node && cur.Token == op.Token {
			delete(f.leases, op.Branch)
		}
		return nil
	}
	return fmt.Errorf("unknown lease op %q", op.Op)
}

// FencedOut answers a puts entry some of whose branches the proposer no
// longer holds: their puts were dropped (the rest applied), and the
// proposer must stop writing them. It is an answer, not an error: the
// other branches' writes in the batch committed.
type FencedOut struct {
	Branches []uint32
	Reason   string
}

// fencePuts filters a puts entry by the leases. A branch with a lease
// keeps its puts only when the entry is fenced by that lease's holder and
// token; unfenced puts (fence nil) pass only for branches that never had
// a lease (a volume of one node). It returns the puts to apply, the
// branches dropped, and dup for a batch already applied under the leases
// (Fence.Seq), of which nothing is applied. Kept branches record the
// batch's sequence. Dropping per branch keeps one lost lease from failing
// the other branches that share the node's batches.
func (f *FSM) fencePuts(fence *Fence, puts []blockstore.Entry) (keep []blockstore.Entry, out *FencedOut, dup bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.leases) == 0 && fence == nil {
		return puts, nil, false
	}
	ok := map[uint32]bool{}
	for _, e := range puts {
		b := e.Key.Branch
		if _, seen := ok[b]; seen {
			continue
		}
		l, held := f.leases[b]
		switch {
		case fence == nil && !held:
			ok[b] = true
		case fence == nil:
			ok[b] = false
			out = addFenced(out, b, fmt.Sprintf("unfenced write to branch %d, which node %s holds", b, l.Node))
		case !held || l.Node != fence.Node || l.Token != fence.Tokens[b]:
			ok[b] = false
			out = addFenced(out, b, fmt.Sprintf("write to branch %d by node %s with lease %d", b, fence.Node, fence.Tokens[b]))
		case fence.Seq <= l.Seq:
			dup = true
		default:
			ok[b] = true
		}
	}
	if dup {
		return nil, nil, true
	}
	if out == nil {
		keep = puts
	} else {
		for _, e := range puts {
			if ok[e.Key.Branch] {
				keep = append(keep, e)
			}
		}
	}
	if fence != nil {
		for b, good := range ok {
			if good {
				l := f.leases[b]
				l.Seq = fence.Seq
				f.leases[b] = l
			}
		}
	}
	return keep, out, false
}

func addFenced(out *FencedOut, b uint32, why string) *FencedOut {
	if out == nil {
		out = &FencedOut{Reason: why + ": " + ErrLeaseLost.Error()}
	}
	out.Branches = append(out.Branches, b)
	return out
}

// Leases returns a copy of the lease table.
func (f *FSM) Leases() map[uint32]Lease {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.leases)
}

// LeaseOf returns branch id's lease, if it has one.
func (f *FSM) LeaseOf(id uint32) (Lease, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.leases[id]
	return l, ok
}
