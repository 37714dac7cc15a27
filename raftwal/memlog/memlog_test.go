package memlog

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/neonfs/neonfs/raftwal"
)

// joinFSM's state is its entries joined; its answer to an entry is the
// state so far.
type joinFSM struct{ s string }

func (f *joinFSM) Apply(l *raft.Log) any { f.s += string(l.Data); return f.s }
func (f *joinFSM) Snapshot() (raft.FSMSnapshot, error) {
	return snap(f.s), nil
}
func (f *joinFSM) Restore(rc io.ReadCloser) error {
	b, err := io.ReadAll(rc)
	f.s = string(b)
	return err
}

type snap string

func (s snap) Persist(sink raft.SnapshotSink) error {
	_, err := io.WriteString(sink, string(s))
	return err
}
func (snap) Release() {}

func TestReplayAfterSnapshot(t *testing.T) {
	ctx := context.Background()
	st := New()
	l, err := st.Open(ctx, &joinFSM{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Open(ctx, &joinFSM{}); err == nil {
		t.Fatal("a second open of an open store was allowed")
	}
	for i, want := range []string{"a", "ab"} {
		idx, resp, err := l.Apply([]byte(want[i:]))
		if err != nil || idx != uint64(i+1) || resp != want {
			t.Fatalf("apply %d: %d %v %v", i, idx, resp, err)
		}
	}
	if err := l.Snapshot(); err != nil {
		t.Fatal(err)
	}
	l.Apply([]byte("c"))
	if last, applied := l.Stats(); last != 3 || applied != 3 {
		t.Fatalf("stats %d %d", last, applied)
	}
	l.Close()
	if _, _, err := l.Apply([]byte("x")); !errors.Is(err, raftwal.ErrClosed) {
		t.Fatalf("apply after close: %v", err)
	}
	f := &joinFSM{}
	l2, err := st.Open(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	if f.s != "abc" || len(st.entries) != 1 {
		t.Fatalf("replayed %q from %d entries after the snapshot", f.s, len(st.entries))
	}
	if idx, _, _ := l2.Apply([]byte("d")); idx != 4 || !strings.HasSuffix(f.s, "d") {
		t.Fatalf("index after reopen %d", idx)
	}
}
