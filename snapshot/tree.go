// Package snapshot holds the branch tree of a volume: which branches exist,
// their parents and fork points, and how a read on a branch walks its
// ancestry. It is pure data: the FSM changes it by applying log entries.
// It never imports the volume, the fs or the log.
package snapshot

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/neonfs/neonfs/blockstore"
)

// RootBranch is the ID of the branch every volume starts with.
const RootBranch uint32 = 1

// Branch is (name, parent, fork LSN): a branch sees its parent's state at
// ForkLSN plus its own entries after it. The root has Parent 0.
type Branch struct {
	ID      uint32    `json:"id"`
	Name    string    `json:"name"`
	Parent  uint32    `json:"parent,omitempty"`
	ForkLSN uint64    `json:"fork_lsn,omitempty"`
	Created time.Time `json:"created"`
}

// Tree is every branch of a volume.
type Tree struct {
	Branches map[uint32]*Branch `json:"branches"`
	NextID   uint32             `json:"next_id"`
}

// NewTree returns a tree holding only the root branch "main".
func NewTree(created time.Time) *Tree {
	return &Tree{
		Branches: map[uint32]*Branch{RootBranch: {ID: RootBranch, Name: "main", Created: created}},
		NextID:   RootBranch + 1,
	}
}

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// ValidName reports why name cannot name a branch, or nil.
func ValidName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("invalid branch name %q: use 1-63 letters, digits, '_', '.', '-', starting with a letter or digit", name)
	}
	return nil
}

// ByName finds a branch.
func (t *Tree) ByName(name string) (*Branch, bool) {
	for _, b := range t.Branches {
		if b.Name == name {
			return b, true
		}
	}
	return nil, false
}

// List returns the branches ordered by ID (creation order).
func (t *Tree) List() []*Branch {
	out := make([]*Branch, 0, len(t.Branches))
	for _, b := range t.Branches {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b *Branch) int { return int(a.ID) - int(b.ID) })
	return out
}

// Lineage is the read path of branch id at LSN at: the branch up to at,
// then each ancestor up to the lower of at and the fork point below it.
func (t *Tree) Lineage(id uint32, at uint64) []blockstore.ReadPoint {
	var out []blockstore.ReadPoint
	for b := t.Branches[id]; b != nil; b = t.Branches[b.Parent] {
		out = append(out, blockstore.ReadPoint{Branch: b.ID, MaxLSN: at})
		if b.Parent == 0 {
			break
		}
		at = min(at, b.ForkLSN)
	}
	return out
}

// Children returns the branches whose parent is id, by ID.
func (t *Tree) Children(id uint32) []*Branch {
	var out []*Branch
	for _, b := range t.List() {
		if b.Parent == id {
			out = append(out, b)
		}
	}
	return out
}

// IsAncestor reports whether anc is id or one of its ancestors.
func (t *Tree) IsAncestor(anc, id uint32) bool {
	for b := t.Branches[id]; b != nil; b = t.Branches[b.Parent] {
		if b.ID == anc {
			return true
		}
	}
	return false
}

// Clone returns a deep copy.
func (t *Tree) Clone() *Tree {
	c := &Tree{Branches: make(map[uint32]*Branch, len(t.Branches)), NextID: t.NextID}
	for id, b := range t.Branches {
		bb := *b
		c.Branches[id] = &bb
	}
	return c
}

// Marshal encodes the tree for snapshots.
func (t *Tree) Marshal() ([]byte, error) { return json.Marshal(t) }

// Unmarshal decodes a tree written by Marshal.
func Unmarshal(b []byte) (*Tree, error) {
	var t Tree
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("decode branch tree: %w", err)
	}
	if t.Branches == nil || t.Branches[RootBranch] == nil {
		return nil, fmt.Errorf("decode branch tree: no root branch")
	}
	return &t, nil
}

// CheckDeletable says why b cannot be deleted: it is the root of the
// volume, or has children (they read through it).
func (tree *Tree) CheckDeletable(b *Branch) error {
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
