package volume

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/snapshot"
)

// fsm folds the log into the volume's state: the block map, the branch
// tree, the inode high-water mark. It is the only writer of all three.
type fsm struct {
	store *blockstore.Store

	mu     sync.Mutex
	tree   *snapshot.Tree
	maxIno uint64
}

func newFSM(store *blockstore.Store) *fsm {
	return &fsm{store: store, tree: snapshot.NewTree(time.Now().UTC()), maxIno: rootIno}
}

// Apply returns nil or an error; the proposer sees it as the response.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	// The log store may reuse l.Data; the memtable keeps values, so copy once.
	rec, err := decodeRecord(slices.Clone(l.Data))
	if err != nil {
		slog.Error("apply log entry", "lsn", l.Index, "err", err)
		return fmt.Errorf("apply entry %d: %w", l.Index, err)
	}
	switch rec.Type {
	case entryPuts:
		var hi uint64
		for _, e := range rec.Puts {
			if e.Key.Kind == blockstore.KindInode {
				hi = max(hi, e.Key.Ino)
			}
		}
		f.store.Apply(l.Index, rec.Puts)
		f.mu.Lock()
		f.maxIno = max(f.maxIno, hi)
		f.mu.Unlock()
	case entryFreeze:
		f.store.Freeze(l.Index)
		return l.Index
	case entryLayer:
		f.store.AddLayer(rec.Layer)
	case entryBranch:
		f.mu.Lock()
		defer f.mu.Unlock()
		b := rec.Branch
		if _, dup := f.tree.ByName(b.Name); dup {
			return fmt.Errorf("branch %q already exists", b.Name)
		}
		b.ID = f.tree.NextID
		f.tree.NextID++
		f.tree.Branches[b.ID] = &b
		return b.ID
	}
	return nil
}

func (f *fsm) treeClone() *snapshot.Tree {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tree.Clone()
}

func (f *fsm) inoHighWater() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxIno
}

type fsmSnapshot struct {
	tree   []byte
	maxIno uint64
	store  *blockstore.Capture
}

// Snapshot runs on the FSM goroutine, with no Apply in flight: capture
// here, write in Persist while applies continue.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	tree, err := f.tree.Marshal()
	maxIno := f.maxIno
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{tree: tree, maxIno: maxIno, store: f.store.Capture()}, nil
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriterSize(sink, 1<<20)
	var hdr []byte
	hdr = binary.AppendUvarint(hdr, s.maxIno)
	hdr = binary.AppendUvarint(hdr, uint64(len(s.tree)))
	hdr = append(hdr, s.tree...)
	_, err := w.Write(hdr)
	if err == nil {
		err = s.store.Write(w)
	}
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 1<<20)
	maxIno, err := binary.ReadUvarint(br)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	n, err := binary.ReadUvarint(br)
	if err != nil || n > 64<<20 {
		return fmt.Errorf("restore snapshot: branch tree length: %v", err)
	}
	tb := make([]byte, n)
	if _, err := io.ReadFull(br, tb); err != nil {
		return fmt.Errorf("restore snapshot: branch tree: %w", err)
	}
	tree, err := snapshot.Unmarshal(tb)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if err := f.store.ReadSnapshot(br); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.tree, f.maxIno = tree, maxIno
	f.mu.Unlock()
	return nil
}
