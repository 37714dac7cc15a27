package raftwal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// listFSM records the entries it applies; its answer is the entry's text
// and index, so forwarding can be checked end to end.
type listFSM struct {
	mu      sync.Mutex
	entries []string
}

func (f *listFSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = append(f.entries, string(l.Data))
	if string(l.Data) == "refuse" {
		return errors.New("refused")
	}
	return fmt.Sprintf("%s@%d", l.Data, l.Index)
}

func (f *listFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, _ := json.Marshal(f.entries)
	return snapBytes(b), nil
}

func (f *listFSM) Restore(rc io.ReadCloser) error {
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return json.Unmarshal(b, &f.entries)
}

func (f *listFSM) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.entries...)
}

type snapBytes []byte

func (s snapBytes) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}
func (snapBytes) Release() {}

func testReply(v any) []byte {
	if e, ok := v.(error); ok {
		return []byte("E" + e.Error())
	}
	return []byte("S" + fmt.Sprint(v))
}

func testDecode(b []byte) (any, error) {
	if len(b) == 0 {
		return nil, errors.New("empty reply")
	}
	if b[0] == 'E' {
		return errors.New(string(b[1:])), nil
	}
	return string(b[1:]), nil
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type testNode struct {
	cfg  Config
	fsm  *listFSM
	node *Node
}

func newTestNode(t *testing.T, id string) *testNode {
	dir := t.TempDir()
	addr := freeAddr(t)
	return &testNode{cfg: Config{Dir: filepath.Join(dir, "raft"), ID: id, Bind: addr,
		EncodeReply: testReply, DecodeReply: testDecode, Info: func() []byte { return []byte("info of " + id) }},
		fsm: &listFSM{}}
}

func (tn *testNode) open(t *testing.T) {
	t.Helper()
	tn.fsm = &listFSM{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := Open(ctx, tn.cfg, tn.fsm)
	if err != nil {
		t.Fatalf("open %s: %v", tn.cfg.ID, err)
	}
	tn.node = n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startCluster bootstraps n1 and joins n2 and n3 to it (each first asking
// n1 for its info, as `neonfs join` does); the nodes still open at the end
// of the test are closed.
func startCluster(t *testing.T) []*testNode {
	t.Helper()
	nodes := []*testNode{newTestNode(t, "n1"), newTestNode(t, "n2"), newTestNode(t, "n3")}
	if err := Bootstrap(nodes[0].cfg); err != nil {
		t.Fatal(err)
	}
	nodes[0].open(t)
	t.Cleanup(func() {
		for _, tn := range nodes {
			if tn.node != nil {
				tn.node.Close()
			}
		}
	})
	for _, tn := range nodes[1:] {
		info, err := FetchInfo(context.Background(), freeAddr(t), "", nodes[0].cfg.Bind, nil)
		if err != nil || string(info) != "info of n1" {
			t.Fatalf("fetch info: %q %v", info, err)
		}
		if err := PrepareJoin(tn.cfg); err != nil {
			t.Fatal(err)
		}
		tn.open(t)
		if err := tn.node.Join(nodes[0].cfg.Bind); err != nil {
			t.Fatal(err)
		}
	}
	return nodes
}

// TestClusterForwardJoinFailover: three nodes over TCP on loopback. A
// follower's proposal is forwarded and applied on every node; joining
// twice is a no-op; killing the leader elects another that keeps every
// committed entry; a node with an emptied data dir rejoins and catches up.
func TestClusterForwardJoinFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: three Raft nodes")
	}
	nodes := startCluster(t)
	// Joining again with the same ID and address is a no-op; another
	// address for the same ID is refused.
	if err := nodes[2].node.Join(nodes[1].cfg.Bind); err != nil {
		t.Fatalf("second join: %v", err)
	}
	if err := nodes[0].node.AddVoter("n3", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "already a member") {
		t.Fatalf("re-add with another address: %v", err)
	}
	ms, _ := nodes[0].node.Members()
	if len(ms) != 3 {
		t.Fatalf("members: %+v", ms)
	}

	// A follower's proposal is forwarded; its answer comes back typed; the
	// follower has applied it when Apply returns.
	idx, resp, err := retryApply(nodes[2].node, "from-n3")
	if err != nil || resp != fmt.Sprintf("from-n3@%d", idx) {
		t.Fatalf("forwarded apply: %d %v %v", idx, resp, err)
	}
	if l := nodes[2].fsm.list(); l[len(l)-1] != "from-n3" {
		t.Fatalf("follower has not applied its own proposal: %v", l)
	}
	if _, resp, err := retryApply(nodes[1].node, "refuse"); err != nil || fmt.Sprint(resp) != "refused" {
		t.Fatalf("refusal through a forward: %v %v", resp, err)
	}
	st, err := nodes[1].node.Status(2 * time.Second)
	if err != nil || len(st) != 3 {
		t.Fatalf("status: %+v %v", st, err)
	}

	// Kill the leader: another is elected and has everything committed.
	leader := 0
	for i, tn := range nodes {
		if tn.node.IsLeader() {
			leader = i
		}
	}
	nodes[leader].node.Close()
	nodes[leader].node = nil
	other := nodes[(leader+1)%3]
	if _, _, err := retryApply(other.node, "after-failover"); err != nil {
		t.Fatal(err)
	}
	for _, tn := range nodes {
		if tn.node == nil {
			continue
		}
		waitFor(t, tn.cfg.ID+" to apply", func() bool {
			l := tn.fsm.list()
			return len(l) > 0 && l[len(l)-1] == "after-failover" && strings.Contains(strings.Join(l, ","), "from-n3")
		})
	}

	// The old leader's data dir is lost: it rejoins empty and catches up.
	lost := nodes[leader]
	lost.cfg.Dir = filepath.Join(t.TempDir(), "raft")
	if err := PrepareJoin(lost.cfg); err != nil {
		t.Fatal(err)
	}
	lost.open(t)
	if err := lost.node.Join(other.cfg.Bind); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the emptied node to catch up", func() bool {
		l := lost.fsm.list()
		return len(l) > 0 && l[len(l)-1] == "after-failover"
	})
	// Leadership moves where asked.
	if err := other.node.Transfer(lost.cfg.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "leadership on "+lost.cfg.ID, lost.node.IsLeader)
	if err := other.node.RemoveServer("nope"); err == nil {
		t.Fatal("removing a non-member succeeded")
	}
}

func retryApply(n *Node, data string) (uint64, any, error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		idx, resp, err := n.Apply([]byte(data))
		if err == nil || time.Now().After(deadline) {
			return idx, resp, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTruncatedTailReopens: a leader that appended an entry it could not
// commit (its peers were down) and then rejoined a cluster that moved on
// truncates that entry from its log; it must still open afterwards.
// raft-wal before v0.4.1 marked the truncated segment sealed without an
// index block, and the next open panicked ("sealed segment has no index
// block").
func TestTruncatedTailReopens(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: three Raft nodes")
	}
	nodes := startCluster(t)
	if _, _, err := retryApply(nodes[0].node, "committed"); err != nil {
		t.Fatal(err)
	}
	leader := nodes[0]
	waitFor(t, "n1 to lead", leader.node.IsLeader)
	// The followers go away; the leader appends what it cannot commit.
	for _, tn := range nodes[1:] {
		tn.node.Close()
		tn.node = nil
	}
	done := make(chan struct{})
	go func() { leader.node.Apply([]byte("uncommitted")); close(done) }()
	time.Sleep(300 * time.Millisecond)
	leader.node.Close()
	leader.node = nil
	<-done
	// The others come back without it and commit something else.
	for _, tn := range nodes[1:] {
		tn.open(t)
	}
	if _, _, err := retryApply(nodes[1].node, "moved on"); err != nil {
		t.Fatal(err)
	}
	// The old leader rejoins: its uncommitted tail is replaced.
	leader.open(t)
	waitFor(t, "n1 to have the new entries", func() bool {
		l := leader.fsm.list()
		return len(l) > 0 && l[len(l)-1] == "moved on"
	})
	leader.node.Close()
	leader.node = nil
	leader.open(t) // panicked with raft-wal v0.4.0
	for _, e := range leader.fsm.list() {
		if e == "uncommitted" {
			t.Fatalf("the uncommitted entry was applied: %v", leader.fsm.list())
		}
	}
}
