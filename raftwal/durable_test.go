package raftwal

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/raft"
)

// blockFSM holds every apply until released, so a test can see what
// happens between an entry's fsync and its apply.
type blockFSM struct {
	listFSM
	release chan struct{}
}

func (f *blockFSM) Apply(l *raft.Log) any {
	if l.Type == raft.LogCommand {
		<-f.release
	}
	return f.listFSM.Apply(l)
}

// On a single-voter node ApplyDurable reports each entry durable once it
// is in the log, while its apply is still held, exactly once, and only
// for its own entry.
func TestApplyDurable(t *testing.T) {
	cfg := Config{Dir: t.TempDir()}
	if err := Bootstrap(cfg); err != nil {
		t.Fatal(err)
	}
	f := &blockFSM{release: make(chan struct{})}
	n, err := Open(context.Background(), cfg, f)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for i := range 3 {
		var calls atomic.Int32
		durable := make(chan struct{})
		data := []byte(fmt.Sprintf("entry %d", i))
		applied := make(chan error, 1)
		go func() {
			_, _, err := n.ApplyDurable(data, func() {
				if calls.Add(1) == 1 {
					close(durable)
				}
			})
			applied <- err
		}()
		<-durable // the FSM holds the apply: durable came first
		select {
		case err := <-applied:
			t.Fatalf("entry %d: Apply returned (%v) while its apply was held", i, err)
		default:
		}
		f.release <- struct{}{}
		if err := <-applied; err != nil {
			t.Fatal(err)
		}
		if c := calls.Load(); c != 1 {
			t.Fatalf("entry %d: durable called %d times, want 1", i, c)
		}
	}
	if got := f.list(); len(got) != 3 || got[2] != "entry 2" {
		t.Fatalf("applied %q", got)
	}
	n.store.storedMu.Lock()
	defer n.store.storedMu.Unlock()
	if len(n.store.stored) != 0 {
		t.Fatalf("%d callbacks left registered", len(n.store.stored))
	}
}
