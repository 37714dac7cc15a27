package volume

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/snapshot"
)

// fsm folds the log into the volume's state: the block map, the branch
// tree, the inode high-water mark. It is the only writer of all three.
type fsm struct {
	store *blockstore.Store

	mu       sync.Mutex
	tree     *snapshot.Tree
	timeline *snapshot.Timeline
	maxIno   uint64
	applied  atomic.Uint64 // the last log entry applied, of any type
	// halted is set by the first entry that cannot be applied; from then on
	// nothing is (see Apply).
	halted atomic.Pointer[HaltError]
}

// HaltError says which committed log entry could not be applied and why.
// The volume stops there: applying later entries without it would build a
// state no prefix of the log describes, and skipping it would lose writes.
type HaltError struct {
	LSN uint64
	Err error
}

func (e *HaltError) Error() string {
	return fmt.Sprintf("log entry %d cannot be applied (%v): the volume stopped there and applies nothing after it", e.LSN, e.Err)
}

func (e *HaltError) Unwrap() error { return e.Err }

// halt records that entry lsn cannot be applied, once, and returns the
// error every later Apply returns too.
func (f *fsm) halt(lsn uint64, err error) *HaltError {
	h := &HaltError{LSN: lsn, Err: err}
	if f.halted.CompareAndSwap(nil, h) {
		slog.Error("volume stopped: a committed log entry cannot be applied", "lsn", lsn, "err", err)
	}
	return f.halted.Load()
}

func newFSM(store *blockstore.Store) *fsm {
	return &fsm{store: store, tree: snapshot.NewTree(time.Now().UTC()), maxIno: rootIno,
		timeline: &snapshot.Timeline{}}
}

// Apply returns the proposer's response: a value, nil, or an error.
//
// Two kinds of error differ. A refused op (a branch op or merge the current
// tree or layers no longer allow) changes nothing and is an answer, the
// same on every replay. An entry that cannot be applied at all (damaged,
// or of a format this binary does not know) halts the FSM: it and every
// later entry return the HaltError and change nothing, on every replay,
// so the state stays an exact prefix of the log and no write is skipped.
func (f *fsm) Apply(l *raft.Log) any {
	if h := f.halted.Load(); h != nil {
		return h
	}
	defer func() {
		if f.halted.Load() == nil {
			f.applied.Store(l.Index)
		}
	}()
	if l.Type != raft.LogCommand {
		return nil
	}
	// The memtable keeps values aliasing l.Data. That is safe without a copy:
	// on the leader l.Data is the proposer's buffer, never reused after
	// Apply, and raft-wal's decoder allocates a fresh one for every read.
	rec, err := decodeRecord(l.Data)
	if err != nil {
		return f.halt(l.Index, err)
	}
	f.mu.Lock()
	f.timeline.Add(l.Index, rec.Time)
	f.mu.Unlock()
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
		// The flusher publishes this state with the layer it is cutting:
		// the tree and timeline as of the layer's last LSN.
		hdr, tree, err := f.header()
		if err != nil {
			return f.halt(l.Index, err)
		}
		return frozen{lsn: l.Index, header: hdr, tree: tree}
	case entryLayer:
		f.store.AddLayer(rec.Layer)
	case entryBranch:
		return f.applyBranch(l.Index, rec.Time, rec.Branch)
	case entryMerge:
		if err := f.store.ReplaceLayers(rec.Merge.Remove, rec.Merge.Add); err != nil {
			slog.Error("apply merge", "lsn", l.Index, "err", err)
			return err
		}
	}
	return nil
}

// applyBranch changes the tree. The proposer checked the op against the
// tree it saw; the checks repeat here because another op may have applied
// in between, and the FSM is the only place that decides. A refused op
// returns an error and changes nothing.
func (f *fsm) applyBranch(lsn uint64, t int64, op branchOp) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	tree := f.tree
	switch op.Op {
	case opCreate:
		id, err := f.createLocked(lsn, t, op, op.Parent)
		if err != nil {
			return err
		}
		return id
	case opDelete:
		b, ok := tree.ByName(op.Name)
		if !ok {
			return fmt.Errorf("no branch %q", op.Name)
		}
		if err := deletable(tree, b); err != nil {
			return err
		}
		delete(tree.Branches, b.ID)
		return b.ID
	case opReplace:
		old, ok := tree.ByName(op.Name)
		if !ok {
			return fmt.Errorf("no branch %q", op.Name)
		}
		parent := old.Parent
		if op.ParentIsOld {
			parent = old.ID
		}
		if parent == 0 {
			return fmt.Errorf("branch %q has no parent to reset to", op.Name)
		}
		if op.OldName == "" && !op.ParentIsOld {
			if err := deletable(tree, old); err != nil {
				return err
			}
		} else if op.OldName != "" {
			if _, dup := tree.ByName(op.OldName); dup {
				return fmt.Errorf("branch %q already exists", op.OldName)
			}
		}
		// Take the name first so the new branch can have it.
		saved := *old
		old.Name = op.OldName
		if op.OldName == "" {
			old.Name = fmt.Sprintf(".replaced-%d", old.ID)
		}
		id, err := f.createLocked(lsn, t, op, parent)
		if err != nil {
			*old = saved
			return err
		}
		if op.OldName == "" && !op.ParentIsOld {
			delete(tree.Branches, old.ID)
		}
		return id
	}
	return fmt.Errorf("unknown branch op %q", op.Op)
}

func deletable(tree *snapshot.Tree, b *snapshot.Branch) error {
	if b.Parent == 0 {
		return fmt.Errorf("branch %q is the root of the volume and cannot be deleted", b.Name)
	}
	if kids := tree.Children(b.ID); len(kids) > 0 {
		names := make([]string, len(kids))
		for i, k := range kids {
			names[i] = k.Name
		}
		return fmt.Errorf("branch %q has child branches (%s): delete them first", b.Name, strings.Join(names, ", "))
	}
	return nil
}

func (f *fsm) createLocked(lsn uint64, t int64, op branchOp, parent uint32) (uint32, error) {
	tree := f.tree
	if _, dup := tree.ByName(op.Name); dup {
		return 0, fmt.Errorf("branch %q already exists", op.Name)
	}
	p := tree.Branches[parent]
	if p == nil {
		return 0, fmt.Errorf("parent branch %d does not exist", parent)
	}
	for _, r := range op.Remove {
		// The memtable must hold only keys a layer can encode.
		if err := blockstore.DirentKey(tree.NextID, r.Dir, r.Name).Check(); err != nil {
			return 0, fmt.Errorf("branch %q: entry to remove: %w", op.Name, err)
		}
	}
	at := op.At
	if at == 0 {
		at = lsn - 1
	}
	if at >= lsn {
		return 0, fmt.Errorf("fork point %d is not committed yet", at)
	}
	if p.Parent != 0 && at < p.ForkLSN {
		return 0, fmt.Errorf("LSN %d is before branch %q's fork point (LSN %d)", at, p.Name, p.ForkLSN)
	}
	b := &snapshot.Branch{ID: tree.NextID, Name: op.Name, Parent: parent, ForkLSN: at,
		Created: time.Unix(0, t).UTC()}
	tree.NextID++
	tree.Branches[b.ID] = b
	if len(op.Remove) > 0 {
		puts := make([]blockstore.Entry, len(op.Remove))
		for i, r := range op.Remove {
			puts[i] = blockstore.Entry{Key: blockstore.DirentKey(b.ID, r.Dir, r.Name),
				Version: blockstore.Version{Value: blockstore.Value{Kind: blockstore.ValTombstone}}}
		}
		f.store.Apply(lsn, puts)
	}
	return b.ID, nil
}

func (f *fsm) treeClone() *snapshot.Tree {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tree.Clone()
}

// timeOf is TimeOf on the live timeline, without copying it.
func (f *fsm) timeOf(lsn uint64) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeline.TimeOf(lsn)
}

// lsnAt is LSNAt on the live timeline, without copying it.
func (f *fsm) lsnAt(t time.Time) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeline.LSNAt(t)
}

func (f *fsm) timelineClone() *snapshot.Timeline {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeline.Clone()
}

func (f *fsm) inoHighWater() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxIno
}

// frozen is the FSM's answer to a freeze entry.
type frozen struct {
	lsn    uint64
	header []byte // the non-store part of a snapshot, as of lsn
	tree   []byte // the branch tree in it
}

type fsmSnapshot struct {
	header []byte
	store  *blockstore.Capture
}

// The snapshot header starts with snapshotMagic, whose last digit is its
// version. Version 0 had no magic: it began with the inode mark (a
// uvarint), which can never read as "NEONFSM" followed by a digit, since
// the tree length after the mark is followed by the JSON tree's '{'.
const (
	snapshotMagic   = "NEONFSM1"
	snapshotVersion = 1
)

// header encodes what a snapshot holds besides the store: the inode
// high-water mark, the branch tree and the timeline.
func (f *fsm) header() (hdr, tree []byte, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tree, err = f.tree.Marshal()
	if err != nil {
		return nil, nil, err
	}
	hdr = append(hdr, snapshotMagic...)
	hdr = binary.AppendUvarint(hdr, f.maxIno)
	hdr = binary.AppendUvarint(hdr, uint64(len(tree)))
	hdr = append(hdr, tree...)
	tl := f.timeline.AppendBinary(nil)
	hdr = binary.AppendUvarint(hdr, uint64(len(tl)))
	return append(hdr, tl...), tree, nil
}

// Snapshot runs on the FSM goroutine, with no Apply in flight: capture
// here, write in Persist while applies continue. A halted FSM refuses: a
// snapshot would let Raft truncate the entry it stopped at, and the next
// open would start past it.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	if h := f.halted.Load(); h != nil {
		return nil, h
	}
	hdr, _, err := f.header()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{header: hdr, store: f.store.Capture()}, nil
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := writeSnapshot(sink, s.header, s.store); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func writeSnapshot(w io.Writer, header []byte, store *blockstore.Capture) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	_, err := bw.Write(header)
	if err == nil {
		err = store.Write(bw)
	}
	if err == nil {
		err = bw.Flush()
	}
	return err
}

func (s *fsmSnapshot) Release() {}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 1<<20)
	if err := readSnapshotMagic(br); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
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
	n, err = binary.ReadUvarint(br)
	if err != nil || n > 1<<30 {
		return fmt.Errorf("restore snapshot: timeline length: %v", err)
	}
	tlb := make([]byte, n)
	if _, err := io.ReadFull(br, tlb); err != nil {
		return fmt.Errorf("restore snapshot: timeline: %w", err)
	}
	timeline, _, err := snapshot.DecodeTimeline(tlb)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if err := f.store.ReadSnapshot(br); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.tree, f.maxIno, f.timeline = tree, maxIno, timeline
	f.applied.Store(max(f.applied.Load(), f.store.Applied()))
	f.mu.Unlock()
	return nil
}

// readSnapshotMagic consumes the header's magic, refusing a version this
// binary does not know; a version 0 header (no magic) is left unread.
func readSnapshotMagic(br *bufio.Reader) error {
	prefix := snapshotMagic[:len(snapshotMagic)-1]
	b, err := br.Peek(len(snapshotMagic))
	if err != nil || string(b[:len(prefix)]) != prefix {
		return nil // version 0, or too short for anything: the fields below fail
	}
	if v := b[len(prefix)]; v < '1' || v > '0'+snapshotVersion {
		return fmt.Errorf("FSM snapshot format %c is unknown to this binary (written by a newer neonfs?)", v)
	}
	_, err = br.Discard(len(snapshotMagic))
	return err
}
