// Package fsm is the volume's state machine: it decodes log entries (the
// encoding is in entry.go) and folds them, in log order, into the block
// map (blockstore) and the branch tree and timeline (snapshot). It is the
// only writer of all three. It is pure: no clock (times come from the
// entries), no disk, no network; the Raft log feeds it and its snapshots
// go to whatever sink Raft hands it. It never imports the volume, the file
// system or the CLI.
package fsm

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/hashicorp/raft"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/snapshot"
)

// FSM folds the log into the volume's state: the block map, the branch
// tree, the inode high-water mark. It is the only writer of all three.
// Lock order: FSM.mu before the store's locks (Apply holds mu only for the
// tree and timeline; the store locks itself).
type FSM struct {
	store *blockstore.Store

	mu       sync.Mutex
	tree     *snapshot.Tree
	timeline *snapshot.Timeline
	maxIno   uint64
	leases   map[uint32]Lease   // branch ID -> its writer lease (lease.go)
	nodes    map[string]Formats // what each cluster node's binary knows (formats.go)
	inUse    Formats            // the formats the cluster switched to
	applied  atomic.Uint64      // the last log entry applied, of any type
	// halted is set by the first entry that cannot be applied; from then on
	// nothing is (see Apply).
	halted atomic.Pointer[HaltError]
	// expected holds the puts of entries this node encoded and proposed,
	// keyed by the entry's first byte (Expect).
	expected sync.Map // *byte -> []blockstore.Entry
	// localApplies counts entries applied from Expect's puts.
	localApplies atomic.Uint64
}

// Expect tells the FSM that data, about to be proposed, encodes puts: when
// raft applies it here, Apply takes them as they are instead of
// decompressing and decoding its own entry (measured: the daemon's CPU
// for pgbench -i -s 20 5.3 -> 4.5 s). On the proposer raft hands Apply the very slice it was
// given, which is how Apply knows it; a replay, a follower or any copy of
// the entry has other bytes and decodes them as always. The encoder made
// data from puts, so both paths apply the same changes (entry_test checks
// the round trip). Call Forget(data) once the proposal is over, applied
// or not.
func (f *FSM) Expect(data []byte, puts map[blockstore.Key]blockstore.Value) {
	if len(data) == 0 {
		return
	}
	list := make([]blockstore.Entry, 0, len(puts))
	for k, v := range puts {
		list = append(list, blockstore.Entry{Key: k, Version: blockstore.Version{Value: v}})
	}
	f.expected.Store(unsafe.SliceData(data), list)
}

// LocalApplies is how many entries were applied from Expect's puts.
func (f *FSM) LocalApplies() uint64 { return f.localApplies.Load() }

// Forget drops what Expect recorded for data.
func (f *FSM) Forget(data []byte) {
	if len(data) > 0 {
		f.expected.Delete(unsafe.SliceData(data))
	}
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
func (f *FSM) halt(lsn uint64, err error) *HaltError {
	h := &HaltError{LSN: lsn, Err: err}
	if f.halted.CompareAndSwap(nil, h) {
		slog.Error("volume stopped: a committed log entry cannot be applied", "lsn", lsn, "err", err)
	}
	return f.halted.Load()
}

// New returns the FSM of an empty volume created at created (the root
// branch's creation time until a snapshot restores the real tree), with
// inode numbers up to inoMark taken.
func New(store *blockstore.Store, created time.Time, inoMark uint64) *FSM {
	return &FSM{store: store, tree: snapshot.NewTree(created.UTC()), maxIno: inoMark,
		timeline: &snapshot.Timeline{}, leases: map[uint32]Lease{}, nodes: map[string]Formats{}}
}

// Halted returns why the FSM stopped applying, or nil.
func (f *FSM) Halted() *HaltError { return f.halted.Load() }

// Applied is the last log entry applied, of any type.
func (f *FSM) Applied() uint64 { return f.applied.Load() }

// Apply returns the proposer's response: a value, nil, or an error.
//
// Two kinds of error differ. A refused op (a branch op or merge the current
// tree or layers no longer allow) changes nothing and is an answer, the
// same on every replay. An entry that cannot be applied at all (damaged,
// or of a format this binary does not know) halts the FSM: it and every
// later entry return the HaltError and change nothing, on every replay,
// so the state stays an exact prefix of the log and no write is skipped.
func (f *FSM) Apply(l *raft.Log) any {
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
	var known []blockstore.Entry
	if len(l.Data) > 0 {
		if v, ok := f.expected.Load(unsafe.SliceData(l.Data)); ok {
			known = v.([]blockstore.Entry)
			f.localApplies.Add(1)
		}
	}
	rec, err := decodeRecordWith(l.Data, known)
	if err != nil {
		return f.halt(l.Index, err)
	}
	f.mu.Lock()
	f.timeline.Add(l.Index, rec.Time)
	f.mu.Unlock()
	switch rec.Type {
	case entryPuts:
		puts, fenced, dup := f.fencePuts(rec.Fence, rec.Puts)
		if dup {
			slog.Warn("skipped a copy of a batch already applied", "lsn", l.Index, "node", rec.Fence.Node, "seq", rec.Fence.Seq)
			return nil
		}
		rec.Puts = puts
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
		if fenced != nil {
			slog.Warn("dropped writes of a node that lost its writer lease", "lsn", l.Index, "branches", fenced.Branches, "why", fenced.Reason)
			return *fenced
		}
	case entryFreeze:
		f.store.Freeze(l.Index)
		// The flusher publishes this state with the layer it is cutting:
		// the tree and timeline as of the layer's last LSN.
		hdr, tree, err := f.Header()
		if err != nil {
			return f.halt(l.Index, err)
		}
		return Frozen{LSN: l.Index, Header: hdr, Tree: tree}
	case entryLayer:
		f.store.AddLayer(rec.Layer)
	case entryBranch:
		return f.applyBranch(l.Index, rec.Time, rec.Branch)
	case entryLease:
		return f.applyLease(l.Index, rec.Time, rec.Lease)
	case entryNode:
		return f.applyNode(rec.Node)
	case entrySwitch:
		return f.applySwitch(rec.Switch)
	case entryMark:
		slog.Info("log mark", "lsn", l.Index, "note", rec.Mark)
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
func (f *FSM) applyBranch(lsn uint64, t int64, op BranchOp) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	tree := f.tree
	switch op.Op {
	case OpCreate:
		id, err := f.createLocked(lsn, t, op, op.Parent)
		if err != nil {
			return err
		}
		return id
	case OpDelete:
		b, ok := tree.ByName(op.Name)
		if !ok {
			return fmt.Errorf("no branch %q", op.Name)
		}
		if err := tree.CheckDeletable(b); err != nil {
			return err
		}
		delete(tree.Branches, b.ID)
		delete(f.leases, b.ID)
		return b.ID
	case OpReplace:
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
			if err := tree.CheckDeletable(old); err != nil {
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
			delete(f.leases, old.ID)
		}
		return id
	}
	return fmt.Errorf("unknown branch op %q", op.Op)
}

func (f *FSM) createLocked(lsn uint64, t int64, op BranchOp, parent uint32) (uint32, error) {
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

// TreeClone returns a copy of the branch tree.
func (f *FSM) TreeClone() *snapshot.Tree {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tree.Clone()
}

// TimeOf is TimeOf on the live timeline, without copying it.
func (f *FSM) TimeOf(lsn uint64) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeline.TimeOf(lsn)
}

// LSNAt is LSNAt on the live timeline, without copying it.
func (f *FSM) LSNAt(t time.Time) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeline.LSNAt(t)
}

// TimelineClone returns a copy of the timeline (LSN to time).
func (f *FSM) TimelineClone() *snapshot.Timeline {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeline.Clone()
}

// InoHighWater is the highest inode number any applied entry used.
func (f *FSM) InoHighWater() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxIno
}

// Frozen is the FSM's answer to a freeze entry: the state a layer cut at
// LSN is published with.
type Frozen struct {
	LSN    uint64
	Header []byte // the non-store part of a snapshot, as of LSN
	Tree   []byte // the branch tree in it
}

type fsmSnapshot struct {
	header []byte
	store  *blockstore.Capture
}

// The snapshot header starts with snapshotMagic, whose last digit is its
// version. Version 0 had no magic: it began with the inode mark (a
// uvarint), which can never read as "NEONFSM" followed by a digit, since
// the tree length after the mark is followed by the JSON tree's '{'.
// Version 2 adds the cluster state (leases, nodes' formats, the formats
// in use: clusterState, JSON) after the timeline.
const (
	snapshotMagic   = "NEONFSM2"
	SnapshotVersion = 2
)

// Header encodes what a snapshot holds besides the store: the inode
// high-water mark, the branch tree and the timeline.
func (f *FSM) Header() (hdr, tree []byte, err error) {
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
	hdr = append(hdr, tl...)
	cs := f.marshalCluster()
	hdr = binary.AppendUvarint(hdr, uint64(len(cs)))
	return append(hdr, cs...), tree, nil
}

// Snapshot runs on the FSM goroutine, with no Apply in flight: capture
// here, write in Persist while applies continue. A halted FSM refuses: a
// snapshot would let Raft truncate the entry it stopped at, and the next
// open would start past it.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	if h := f.halted.Load(); h != nil {
		return nil, h
	}
	hdr, _, err := f.Header()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{header: hdr, store: f.store.Capture()}, nil
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := WriteSnapshot(sink, s.header, s.store); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

// WriteSnapshot writes a snapshot: a header from Header or a freeze, then
// the store capture.
func WriteSnapshot(w io.Writer, header []byte, store *blockstore.Capture) error {
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

func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 1<<20)
	version, err := readSnapshotMagic(br)
	if err != nil {
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
	var cs clusterState
	if version >= 2 {
		n, err = binary.ReadUvarint(br)
		if err != nil || n > 64<<20 {
			return fmt.Errorf("restore snapshot: cluster state length: %v", err)
		}
		lb := make([]byte, n)
		if _, err := io.ReadFull(br, lb); err != nil {
			return fmt.Errorf("restore snapshot: cluster state: %w", err)
		}
		if err := json.Unmarshal(lb, &cs); err != nil {
			return fmt.Errorf("restore snapshot: cluster state: %w", err)
		}
	}
	if cs.Leases == nil {
		cs.Leases = map[uint32]Lease{}
	}
	if cs.Nodes == nil {
		cs.Nodes = map[string]Formats{}
	}
	if err := f.store.ReadSnapshot(br); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.tree, f.maxIno, f.timeline = tree, maxIno, timeline
	f.leases, f.nodes, f.inUse = cs.Leases, cs.Nodes, cs.InUse
	f.applied.Store(max(f.applied.Load(), f.store.Applied()))
	f.mu.Unlock()
	return nil
}

// readSnapshotMagic consumes the header's magic and returns its version,
// refusing a version this binary does not know; a version 0 header (no
// magic) is left unread.
func readSnapshotMagic(br *bufio.Reader) (int, error) {
	prefix := snapshotMagic[:len(snapshotMagic)-1]
	b, err := br.Peek(len(snapshotMagic))
	if err != nil || string(b[:len(prefix)]) != prefix {
		return 0, nil // version 0, or too short for anything: the fields below fail
	}
	v := b[len(prefix)]
	if v < '1' || v > '0'+SnapshotVersion {
		return 0, fmt.Errorf("FSM snapshot format %c is unknown to this binary (written by a newer neonfs?)", v)
	}
	_, err = br.Discard(len(snapshotMagic))
	return int(v - '0'), err
}
