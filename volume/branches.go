package volume

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/snapshot"
	"github.com/neonfs/neonfs/volume/fsm"
)

// BranchInfo describes a branch for listings.
type BranchInfo struct {
	ID       uint32     `json:"id"`
	Name     string     `json:"name"`
	Parent   string     `json:"parent,omitempty"`
	ParentID uint32     `json:"parent_id,omitempty"`
	ForkLSN  uint64     `json:"fork_lsn,omitempty"`
	ForkTime *time.Time `json:"fork_time,omitempty"`
	Created  time.Time  `json:"created"`
	Depth    int        `json:"depth"` // in the tree: 0 for the root
	// LogicalBytes is the size of the files the branch shows.
	LogicalBytes int64 `json:"logical_bytes"` // listings only
	// UniqueBytes is what the branch wrote itself: what it costs beyond
	// the history it shares with its ancestors.
	UniqueBytes int64    `json:"unique_bytes"`
	Mounted     []string `json:"mounted,omitempty"` // mountpoints (read-write and time travel)
}

// ReplaceResult reports a reset or restore.
type ReplaceResult struct {
	Branch BranchInfo `json:"branch"`
	Old    string     `json:"old,omitempty"` // the name the previous state is kept under
}

// parsePoint reads a point in history: an LSN, an RFC3339 time, or a
// negative duration before now ("-15m", "-2h", "-1d").
func parsePoint(s string, now time.Time) (lsn uint64, t time.Time, err error) {
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		if n == 0 {
			return 0, t, fmt.Errorf("invalid point %q: LSNs start at 1", s)
		}
		return n, t, nil
	}
	if strings.HasPrefix(s, "-") {
		d, err := parseAgo(s[1:])
		if err != nil {
			return 0, t, fmt.Errorf("invalid point %q: %w", s, err)
		}
		return 0, now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return 0, t, nil
	}
	return 0, t, fmt.Errorf("invalid point %q: want an LSN (1234), an RFC3339 time (2026-11-24T14:05:00Z) or a duration ago (-15m, -2h, -1d)", s)
}

func parseAgo(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("bad day count %q", days)
		}
		return time.Duration(n * 24 * float64(time.Hour)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("bad duration %q", s)
	}
	return d, nil
}

// resolvePoint turns a point into an LSN of branch b's history, refusing
// points in the future, outside the retention window, or before b's fork
// (that history belongs to b's parent).
func (v *Volume) resolvePoint(point string, b *snapshot.Branch) (uint64, error) {
	now := time.Now()
	lsn, t, err := parsePoint(point, now)
	if err != nil {
		return 0, err
	}
	tl := v.fsm.TimelineClone()
	applied := v.appliedLSN()
	if lsn == 0 {
		if t.After(now) {
			return 0, fmt.Errorf("point %s is in the future", t.UTC().Format(time.RFC3339))
		}
		if t.Before(now.Add(-v.retention)) {
			return 0, fmt.Errorf("point %s is older than the retention window (%s)", t.UTC().Format(time.RFC3339), v.retention)
		}
		if lsn, err = tl.LSNAt(t); err != nil {
			return 0, err
		}
	} else {
		if lsn > applied {
			return 0, fmt.Errorf("LSN %d is not committed yet (the last committed LSN is %d)", lsn, applied)
		}
		if at, ok := tl.TimeOf(lsn); ok && at.Before(now.Add(-v.retention)) {
			return 0, fmt.Errorf("LSN %d (%s) is older than the retention window (%s)", lsn, at.Format(time.RFC3339), v.retention)
		}
	}
	if b.Parent != 0 && lsn < b.ForkLSN {
		return 0, fmt.Errorf("point %s (LSN %d) is before branch %q was forked (LSN %d): use its parent instead", point, lsn, b.Name, b.ForkLSN)
	}
	return lsn, nil
}

// applyBranchOp logs op and returns the branch ID the FSM answered with.
func (v *Volume) applyBranchOp(op fsm.BranchOp) (uint32, error) {
	data, err := fsm.EncodeBranch(now(), op)
	if err != nil {
		return 0, err
	}
	_, resp, err := v.log.Apply(data)
	if err != nil {
		return 0, fmt.Errorf("log branch %s of %q: %w", op.Op, op.Name, err)
	}
	switch r := resp.(type) {
	case error:
		return 0, r
	case uint32:
		return r, nil
	}
	return 0, fmt.Errorf("log branch %s of %q: unexpected answer %T", op.Op, op.Name, resp)
}

// stalePidFiles finds postmaster.pid files in Postgres data directories
// (those holding PG_VERSION) visible through lineage. A branch of a
// running database carries its parent's pid file; Postgres on the branch
// would see the parent postmaster alive and refuse to start.
func (v *Volume) stalePidFiles(ctx context.Context, lineage []blockstore.ReadPoint) ([]fsm.DirentRef, error) {
	if lineage[0].MaxLSN == math.MaxUint64 {
		if m := v.writer(lineage[0].Branch); m != nil {
			// The live namespace is in memory: no need to scan the block map.
			return m.pidFiles(), nil
		}
	}
	pg := map[uint64]bool{}
	var pids []fsm.DirentRef
	err := v.store.ScanLatest(ctx, lineage, blockstore.Key{Kind: blockstore.KindDirent}, blockstore.Key{Kind: blockstore.KindInode},
		func(e blockstore.Entry) error {
			switch e.Key.Name {
			case "PG_VERSION":
				pg[e.Key.Ino] = true
			case "postmaster.pid":
				pids = append(pids, fsm.DirentRef{Dir: e.Key.Ino, Name: e.Key.Name})
			}
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("look for postmaster.pid: %w", err)
	}
	return slices.DeleteFunc(pids, func(r fsm.DirentRef) bool { return !pg[r.Dir] }), nil
}

// CreateBranch creates branch name from parent (default main) at point
// (default: the parent's latest committed state). It writes one log entry
// and copies nothing.
func (v *Volume) CreateBranch(ctx context.Context, name, parent, point string) (BranchInfo, error) {
	if err := snapshot.ValidName(name); err != nil {
		return BranchInfo{}, err
	}
	if parent == "" {
		parent = "main"
	}
	v.branchMu.Lock()
	defer v.branchMu.Unlock()
	tree := v.fsm.TreeClone()
	if _, dup := tree.ByName(name); dup {
		return BranchInfo{}, fmt.Errorf("branch %q already exists", name)
	}
	p, ok := tree.ByName(parent)
	if !ok {
		return BranchInfo{}, fmt.Errorf("no parent branch %q", parent)
	}
	op := fsm.BranchOp{Op: fsm.OpCreate, Name: name, Parent: p.ID}
	readAt := uint64(math.MaxUint64)
	if point != "" {
		lsn, err := v.resolvePoint(point, p)
		if err != nil {
			return BranchInfo{}, err
		}
		op.At, readAt = lsn, lsn
	}
	var err error
	if point == "" {
		// Now means after every change made so far, fsynced or not: changes
		// may linger in the committer (Committer.PutLazy).
		if err = v.commit.Wait(v.commit.Current()); err != nil {
			return BranchInfo{}, fmt.Errorf("commit pending changes: %w", err)
		}
	}
	if op.Remove, err = v.stalePidFiles(ctx, tree.Lineage(p.ID, readAt)); err != nil {
		return BranchInfo{}, err
	}
	id, err := v.applyBranchOp(op)
	if err != nil {
		return BranchInfo{}, err
	}
	// A new branch owns nothing yet: skip counting every branch's bytes.
	now := v.fsm.TreeClone()
	info, err := v.describe(ctx, now, now.Branches[id], nil, false)
	info.Depth = len(now.Lineage(p.ID, math.MaxUint64)) // the parent's ancestry, and the parent
	return info, err
}

// DeleteBranch deletes a branch that is not mounted and has no children.
// What only it used becomes garbage for GC.
func (v *Volume) DeleteBranch(ctx context.Context, name string) error {
	v.branchMu.Lock()
	defer v.branchMu.Unlock()
	tree := v.fsm.TreeClone()
	b, ok := tree.ByName(name)
	if !ok {
		return fmt.Errorf("no branch %q", name)
	}
	if err := tree.CheckDeletable(b); err != nil {
		return err
	}
	if err := v.notMounted(b); err != nil {
		return err
	}
	_, err := v.applyBranchOp(fsm.BranchOp{Op: fsm.OpDelete, Name: name})
	return err
}

func (v *Volume) notMounted(b *snapshot.Branch) error {
	if ms := v.mountsReading(b.ID); len(ms) > 0 {
		var where []string
		for _, m := range ms {
			where = append(where, m.place())
		}
		return fmt.Errorf("branch %q is mounted (%s): unmount it first", b.Name, strings.Join(where, ", "))
	}
	return nil
}

// oldName names the state a reset or restore leaves behind, unique in tree.
func oldName(tree *snapshot.Tree, name string) string {
	suffix := "_old_" + time.Now().UTC().Format("20060102T150405Z")
	if len(name)+len(suffix) > 60 {
		name = name[:60-len(suffix)]
	}
	out := name + suffix
	for i := 2; ; i++ {
		if _, taken := tree.ByName(out); !taken {
			return out
		}
		out = fmt.Sprintf("%s%s-%d", name, suffix, i)
	}
}

// ResetBranch moves branch name to its parent's latest state. The previous
// state is kept as NAME_old_<time> unless preserve is false.
func (v *Volume) ResetBranch(ctx context.Context, name string, preserve bool) (ReplaceResult, error) {
	v.branchMu.Lock()
	defer v.branchMu.Unlock()
	tree := v.fsm.TreeClone()
	b, ok := tree.ByName(name)
	if !ok {
		return ReplaceResult{}, fmt.Errorf("no branch %q", name)
	}
	if b.Parent == 0 {
		return ReplaceResult{}, fmt.Errorf("branch %q is the root: it has no parent to reset to", name)
	}
	if err := v.notMounted(b); err != nil {
		return ReplaceResult{}, err
	}
	op := fsm.BranchOp{Op: fsm.OpReplace, Name: name}
	if preserve {
		op.OldName = oldName(tree, name)
	}
	var err error
	if op.Remove, err = v.stalePidFiles(ctx, tree.Lineage(b.Parent, math.MaxUint64)); err != nil {
		return ReplaceResult{}, err
	}
	return v.replace(ctx, op)
}

// RestoreBranch moves branch name back to point of its own history. The
// state it leaves is kept as NAME_old_<time> unless preserve is false (then
// it is kept hidden, as the restored branch's parent, until GC).
func (v *Volume) RestoreBranch(ctx context.Context, name, point string, preserve bool) (ReplaceResult, error) {
	if point == "" {
		return ReplaceResult{}, errors.New("restore needs a point (--at LSN, time or -duration)")
	}
	v.branchMu.Lock()
	defer v.branchMu.Unlock()
	tree := v.fsm.TreeClone()
	b, ok := tree.ByName(name)
	if !ok {
		return ReplaceResult{}, fmt.Errorf("no branch %q", name)
	}
	if err := v.notMounted(b); err != nil {
		return ReplaceResult{}, err
	}
	lsn, err := v.resolvePoint(point, b)
	if err != nil {
		return ReplaceResult{}, err
	}
	op := fsm.BranchOp{Op: fsm.OpReplace, Name: name, At: lsn, ParentIsOld: true}
	if preserve {
		op.OldName = oldName(tree, name)
	}
	if op.Remove, err = v.stalePidFiles(ctx, tree.Lineage(b.ID, lsn)); err != nil {
		return ReplaceResult{}, err
	}
	return v.replace(ctx, op)
}

func (v *Volume) replace(ctx context.Context, op fsm.BranchOp) (ReplaceResult, error) {
	id, err := v.applyBranchOp(op)
	if err != nil {
		return ReplaceResult{}, err
	}
	info, err := v.branchInfo(ctx, id, false)
	return ReplaceResult{Branch: info, Old: op.OldName}, err
}

// ListBranches describes every branch, in tree order (each parent before
// its children).
func (v *Volume) ListBranches(ctx context.Context) ([]BranchInfo, error) {
	tree := v.fsm.TreeClone()
	var order []*snapshot.Branch
	depth := map[uint32]int{}
	var walk func(b *snapshot.Branch, d int)
	walk = func(b *snapshot.Branch, d int) {
		order = append(order, b)
		depth[b.ID] = d
		for _, c := range tree.Children(b.ID) {
			walk(c, d+1)
		}
	}
	for _, b := range tree.List() {
		if tree.Branches[b.Parent] == nil {
			walk(b, 0)
		}
	}
	unique := v.store.BranchBytes()
	out := make([]BranchInfo, 0, len(order))
	for _, b := range order {
		info, err := v.describe(ctx, tree, b, unique, true)
		if err != nil {
			return nil, err
		}
		info.Depth = depth[b.ID]
		out = append(out, info)
	}
	return out, nil
}

func (v *Volume) branchInfo(ctx context.Context, id uint32, sizes bool) (BranchInfo, error) {
	tree := v.fsm.TreeClone()
	b := tree.Branches[id]
	if b == nil {
		return BranchInfo{}, fmt.Errorf("branch %d vanished", id)
	}
	info, err := v.describe(ctx, tree, b, v.store.BranchBytes(), sizes)
	for p := tree.Branches[b.Parent]; p != nil; p = tree.Branches[p.Parent] {
		info.Depth++
	}
	return info, err
}

// describe fills in a BranchInfo; sizes adds the logical size, which
// costs a scan of the branch's inodes.
func (v *Volume) describe(ctx context.Context, tree *snapshot.Tree, b *snapshot.Branch, unique map[uint32]int64, sizes bool) (BranchInfo, error) {
	info := BranchInfo{ID: b.ID, Name: b.Name, ParentID: b.Parent, Created: b.Created, UniqueBytes: unique[b.ID]}
	if p := tree.Branches[b.Parent]; p != nil {
		info.Parent = p.Name
		info.ForkLSN = b.ForkLSN
		if t, ok := v.fsm.TimeOf(b.ForkLSN); ok {
			info.ForkTime = &t
		}
	}
	for _, m := range v.mountsReading(b.ID) {
		if m.branch == b.ID {
			info.Mounted = append(info.Mounted, m.place())
		}
	}
	if !sizes {
		return info, nil
	}
	if m := v.writer(b.ID); m != nil {
		_, n := m.Counts()
		info.LogicalBytes = int64(n)
		return info, nil
	}
	err := v.store.ScanLatest(ctx, tree.Lineage(b.ID, math.MaxUint64), blockstore.Key{Kind: blockstore.KindInode}, blockstore.Key{Kind: blockstore.KindBlock},
		func(e blockstore.Entry) error {
			if a, err := decodeAttr(e.Value.Data); err == nil && a.IsRegular() {
				info.LogicalBytes += int64(a.Size)
			}
			return nil
		})
	if err != nil {
		return info, fmt.Errorf("size of branch %q: %w", b.Name, err)
	}
	return info, nil
}

// Diff says which files differ between branches A and B and in how many
// blocks. It looks only at keys the two histories wrote since they parted,
