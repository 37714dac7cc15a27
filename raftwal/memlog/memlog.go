// Package memlog is an in-memory log with raftwal's contract, for unit
// tests of what sits on the log: Apply commits and applies an entry before
// it returns, Snapshot truncates the entries the FSM's snapshot covers,
// and Open on a log that was closed replays it into a new FSM (the last
// snapshot, then the entries after it), as a restart replays the disk.
// Nothing survives the process.
package memlog

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/neonfs/neonfs/raftwal"
)

// Store holds the log between opens.
type Store struct {
	mu        sync.Mutex
	open      bool
	snapIndex uint64 // entries up to here are in snap
	snap      []byte // nil: none yet
	entries   []*raft.Log
}

// Log is an open Store applying to one FSM.
type Log struct {
	s      *Store
	fsm    raft.FSM
	closed bool
}

// New returns an empty store.
func New() *Store { return &Store{} }

// Open replays the store into fsm and returns the log; one open at a time.
func (s *Store) Open(_ context.Context, fsm raft.FSM) (*Log, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open {
		return nil, fmt.Errorf("memlog: already open")
	}
	if s.snap != nil {
		if err := fsm.Restore(io.NopCloser(bytes.NewReader(s.snap))); err != nil {
			return nil, fmt.Errorf("memlog: restore snapshot at %d: %w", s.snapIndex, err)
		}
	}
	for _, e := range s.entries {
		fsm.Apply(e)
	}
	s.open = true
	return &Log{s: s, fsm: fsm}, nil
}

func (s *Store) last() uint64 {
	if n := len(s.entries); n > 0 {
		return s.entries[n-1].Index
	}
	return s.snapIndex
}

// Apply appends data and applies it; the FSM's answer is returned as is.
func (l *Log) Apply(data []byte) (uint64, any, error) {
	s := l.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.closed {
		return 0, nil, raftwal.ErrClosed
	}
	e := &raft.Log{Index: s.last() + 1, Term: 1, Type: raft.LogCommand, Data: bytes.Clone(data)}
	s.entries = append(s.entries, e)
	return e.Index, l.fsm.Apply(e), nil
}

// Snapshot persists the FSM's snapshot and drops the entries it covers.
func (l *Log) Snapshot() error {
	s := l.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.closed {
		return raftwal.ErrClosed
	}
	if len(s.entries) == 0 {
		return nil
	}
	snap, err := l.fsm.Snapshot()
	if err != nil {
		return fmt.Errorf("memlog: snapshot: %w", err)
	}
	defer snap.Release()
	sink := &sink{}
	if err := snap.Persist(sink); err != nil {
		return fmt.Errorf("memlog: persist snapshot: %w", err)
	}
	if sink.cancelled {
		return fmt.Errorf("memlog: the FSM cancelled its snapshot")
	}
	s.snap, s.snapIndex, s.entries = sink.Bytes(), s.last(), nil
	return nil
}

// Stats reports the last index, applied as well (Apply applies at once).
func (l *Log) Stats() (last, applied uint64) {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	return l.s.last(), l.s.last()
}

// Close ends this open; the store can be opened again.
// IsLeader: an in-memory log has no peers.
func (l *Log) IsLeader() bool { return true }

func (l *Log) Close() error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if !l.closed {
		l.closed, l.s.open = true, false
	}
	return nil
}

// sink is a raft.SnapshotSink in memory.
type sink struct {
	bytes.Buffer
	cancelled bool
}

func (s *sink) ID() string    { return "memlog" }
func (s *sink) Cancel() error { s.cancelled = true; return nil }
func (s *sink) Close() error  { return nil }
