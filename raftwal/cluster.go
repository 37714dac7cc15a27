package raftwal

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
)

// ErrNoLeader: no leader is known right now (an election, or no quorum).
// Transient: proposals retry.
var ErrNoLeader = errors.New("no Raft leader known (election under way, or no quorum)")

// notifyFSM wakes proposals waiting for this node to apply an index.
type notifyFSM struct {
	raft.FSM
	n *Node
}

func (f notifyFSM) Apply(l *raft.Log) any {
	resp := f.FSM.Apply(l)
	f.n.noteApplied()
	return resp
}

func (n *Node) noteApplied() {
	n.appliedMu.Lock()
	close(n.appliedCh)
	n.appliedCh = make(chan struct{})
	n.appliedMu.Unlock()
}

// AppliedFSM is an FSM that knows the last index it applied (snapshot
// restores included). Raft's own AppliedIndex moves when entries are
// handed to the FSM, before they are applied, so a node that must read
// what it just committed asks the FSM.
type AppliedFSM interface {
	raft.FSM
	Applied() uint64
}

// applied is the last index the FSM applied.
func (n *Node) applied() uint64 {
	if a, ok := n.fsm.(AppliedFSM); ok {
		return a.Applied()
	}
	return n.raft.AppliedIndex()
}

// waitApplied returns once this node's FSM has applied index, which must
// be a command (an entry the FSM sees: Raft's own configuration entries
// never reach it). A snapshot restore moves the index without an Apply,
// hence the timer besides the wake-up.
func (n *Node) waitApplied(ctx context.Context, index uint64) error {
	return n.waitIndex(ctx, index, n.applied)
}

// waitIndex waits until applied() reaches index.
func (n *Node) waitIndex(ctx context.Context, index uint64, applied func() uint64) error {
	for applied() < index {
		n.appliedMu.Lock()
		ch := n.appliedCh
		n.appliedMu.Unlock()
		if applied() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Millisecond):
		case <-n.done:
			return ErrClosed
		case <-ctx.Done():
			return fmt.Errorf("wait to apply index %d (applied %d): %w", index, applied(), ctx.Err())
		}
	}
	return nil
}

func (n *Node) forward(data []byte) (uint64, any, error) {
	addr, id := n.raft.LeaderWithID()
	if addr == "" {
		return 0, nil, ErrNoLeader
	}
	if id == raft.ServerID(n.cfg.id()) {
		// Leadership moved here between the check and now.
		return n.applyLocal(data)
	}
	idx, body, err := n.rpc.call(string(addr), opApply, data, rpcTimeout)
	if err != nil {
		return 0, nil, fmt.Errorf("forward to leader %s: %w", id, err)
	}
	resp, err := n.cfg.DecodeReply(body)
	if err != nil {
		// Committed, but the answer is unreadable: nothing can be assumed.
		return 0, nil, fmt.Errorf("forward to leader %s: %w", id, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	if err := n.waitApplied(ctx, idx); err != nil {
		return 0, nil, err
	}
	return idx, resp, nil
}

func (n *Node) encodeReply(resp any) []byte { return n.cfg.EncodeReply(resp) }

// CatchUp waits (bounded by ctx and a few election timeouts) for a leader
// and until this node has applied what the leader had committed when
// asked. Without a leader it gives up quietly: the node still starts.
func (n *Node) CatchUp(ctx context.Context) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		addr, id := n.raft.LeaderWithID()
		if addr == "" {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		var commit uint64
		if id == raft.ServerID(n.cfg.id()) {
			if err := n.raft.Barrier(10 * time.Second).Error(); err != nil {
				n.log.Warn("catch up with the log", "err", err)
			}
			return
		}
		_, body, err := n.rpc.call(string(addr), opStats, nil, 5*time.Second)
		var st NodeStats
		if err == nil {
			err = json.Unmarshal(body, &st)
			commit = st.CommitIndex
		}
		if err != nil {
			n.log.Warn("ask the leader how far the log is", "leader", string(id), "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		// The leader's commit index may be a configuration entry, which
		// the FSM never sees: wait on Raft's index (which moves as entries
		// are handed to the FSM) rather than the FSM's.
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		err = n.waitIndex(wctx, commit, n.raft.AppliedIndex)
		cancel()
		if err != nil {
			n.log.Warn("catch up with the leader", "leader", string(id), "err", err)
		} else {
			n.log.Info("caught up with the leader", "leader", string(id), "index", commit)
		}
		return
	}
	n.log.Warn("no Raft leader yet: starting as a replica that cannot commit until a quorum is back")
}

// ID is this node's server ID.
func (n *Node) ID() string { return n.cfg.id() }

// Addr is the address peers reach this node at ("local" for one voter).
func (n *Node) Addr() string {
	if n.mux == nil {
		return localAddr
	}
	return n.mux.Addr()
}

// Clustered reports whether the node talks to peers.
func (n *Node) Clustered() bool { return n.mux != nil }

// IsLeader reports whether this node leads now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the current leader's ID and address, empty when none.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// Member is one server of the Raft configuration.
type Member struct {
	ID     string `json:"id"`
	Addr   string `json:"addr"`
	Voter  bool   `json:"voter"`
	Leader bool   `json:"leader"`
}

// Members lists the configuration this node knows.
func (n *Node) Members() ([]Member, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("read Raft configuration: %w", err)
	}
	_, leader := n.raft.LeaderWithID()
	var out []Member
	for _, s := range f.Configuration().Servers {
		out = append(out, Member{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == raft.Voter, Leader: s.ID == leader})
	}
	return out, nil
}

func (n *Node) otherVoters() int {
	ms, err := n.Members()
	if err != nil {
		return 0
	}
	c := 0
	for _, m := range ms {
		if m.Voter && m.ID != n.cfg.id() {
			c++
		}
	}
	return c
}

// NodeStats is what a node says about its own log.
type NodeStats struct {
	ID           string `json:"id"`
	Addr         string `json:"addr"`
	State        string `json:"state"`
	Term         uint64 `json:"term"`
	LastIndex    uint64 `json:"last_index"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	Leader       string `json:"leader,omitempty"`
	Error        string `json:"error,omitempty"` // set by Status for a node that did not answer
}

// LocalStats describes this node's log.
func (n *Node) LocalStats() NodeStats {
	st := n.raft.Stats()
	num := func(k string) uint64 { v, _ := strconv.ParseUint(st[k], 10, 64); return v }
	leader, _ := n.Leader()
	return NodeStats{ID: n.cfg.id(), Addr: n.Addr(), State: n.raft.State().String(), Term: num("term"),
		LastIndex: n.raft.LastIndex(), CommitIndex: num("commit_index"), AppliedIndex: n.raft.AppliedIndex(), Leader: leader}
}

// Status asks every member for its stats (a member that does not answer
// within timeout is listed with the error).
func (n *Node) Status(timeout time.Duration) ([]NodeStats, error) {
	ms, err := n.Members()
	if err != nil {
		return nil, err
	}
	out := make([]NodeStats, len(ms))
	done := make(chan struct{}, len(ms))
	for i, m := range ms {
		go func() {
			defer func() { done <- struct{}{} }()
			if m.ID == n.cfg.id() || n.mux == nil {
				out[i] = n.LocalStats()
				return
			}
			_, body, err := n.rpc.call(m.Addr, opStats, nil, timeout)
			if err == nil {
				err = json.Unmarshal(body, &out[i])
			}
			if err != nil {
				out[i] = NodeStats{ID: m.ID, Addr: m.Addr, State: "unreachable", Error: err.Error()}
			}
		}()
	}
	for range ms {
		<-done
	}
	return out, nil
}

// leaderCall runs op on the leader: here when this node leads, else by RPC.
func (n *Node) leaderCall(op byte, body []byte, local func() error) error {
	if n.IsLeader() || n.mux == nil {
		return local()
	}
	addr, id := n.raft.LeaderWithID()
	if addr == "" {
		return ErrNoLeader
	}
	if _, _, err := n.rpc.call(string(addr), op, body, rpcTimeout); err != nil {
		return fmt.Errorf("leader %s: %w", id, err)
	}
	return nil
}

// AddVoter makes id at addr a voter. Adding a member again with the same
// ID and address is a no-op; reusing either with a different other half
// is refused.
func (n *Node) AddVoter(id, addr string) error {
	if id == "" || addr == "" {
		return errors.New("add voter: node ID and address are both needed")
	}
	body, _ := json.Marshal(Member{ID: id, Addr: addr})
	return n.leaderCall(opJoin, body, func() error {
		ms, err := n.Members()
		if err != nil {
			return err
		}
		for _, m := range ms {
			switch {
			case m.ID == id && m.Addr == addr && m.Voter:
				return nil
			case m.ID == id && m.Addr != addr:
				return fmt.Errorf("node %s is already a member at %s (remove it first to change its address)", id, m.Addr)
			case m.ID != id && m.Addr == addr:
				return fmt.Errorf("address %s is already member %s", addr, m.ID)
			}
		}
		if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 30*time.Second).Error(); err != nil {
			return fmt.Errorf("add voter %s at %s: %w", id, addr, err)
		}
		n.log.Info("added voter", "id", id, "addr", addr)
		return nil
	})
}

// RemoveServer removes id from the configuration.
func (n *Node) RemoveServer(id string) error {
	return n.leaderCall(opRemove, []byte(id), func() error {
		ms, err := n.Members()
		if err != nil {
			return err
		}
		found := false
		for _, m := range ms {
			found = found || m.ID == id
		}
		if !found {
			return fmt.Errorf("node %s is not a member", id)
		}
		if err := n.raft.RemoveServer(raft.ServerID(id), 0, 30*time.Second).Error(); err != nil {
			return fmt.Errorf("remove %s: %w", id, err)
		}
		n.log.Info("removed server", "id", id)
		return nil
	})
}

// Transfer moves leadership to id (any caught-up voter when empty).
func (n *Node) Transfer(id string) error {
	return n.leaderCall(opTransfer, []byte(id), func() error {
		var f raft.Future
		if id == "" {
			f = n.raft.LeadershipTransfer()
		} else {
			var addr string
			ms, err := n.Members()
			if err != nil {
				return err
			}
			for _, m := range ms {
				if m.ID == id {
					addr = m.Addr
				}
			}
			if addr == "" {
				return fmt.Errorf("node %s is not a member", id)
			}
			if id == n.cfg.id() {
				return nil
			}
			f = n.raft.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(addr))
		}
		if err := f.Error(); err != nil {
			return fmt.Errorf("transfer leadership: %w", err)
		}
		return nil
	})
}

// Join asks peer (any member) to add this node as a voter.
func (n *Node) Join(peer string) error {
	if n.mux == nil {
		return errors.New("join: this log is not a cluster node")
	}
	body, _ := json.Marshal(Member{ID: n.cfg.id(), Addr: n.mux.Addr()})
	if _, _, err := n.rpc.call(peer, opJoin, body, rpcTimeout); err != nil {
		return fmt.Errorf("join via %s: %w", peer, err)
	}
	return nil
}

// PrepareJoin creates an empty log in cfg.Dir for a node that will be
// added to an existing cluster: it has no configuration until the leader
// replicates one to it.
func PrepareJoin(cfg Config) error {
	if err := os.MkdirAll(walDir(cfg.Dir), 0o700); err != nil {
		return fmt.Errorf("create log dir: %w", err)
	}
	store, err := openWAL(cfg.Dir)
	if err != nil {
		return err
	}
	return store.Close()
}

// FetchInfo asks peer for its Info without running a node: a joining node
// learns the volume's description this way. It listens briefly on bind
// (the joiner's own Raft address), so a TLS peer sees its certificate.
func FetchInfo(ctx context.Context, bind, advertise, peer string, tlsc *tls.Config) ([]byte, error) {
	m, err := Listen(bind, advertise, tlsc)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	c := &rpcClient{mux: m, idle: map[string][]*rpcConn{}}
	defer c.close()
	timeout := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	_, body, err := c.call(peer, opInfo, nil, timeout)
	if err != nil {
		return nil, fmt.Errorf("ask %s for the volume's description: %w", peer, err)
	}
	return body, nil
}
