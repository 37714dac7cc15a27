package volume

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"path"
	"slices"
	"strings"

	"github.com/neonfs/neonfs/blockstore"
)

// so its cost follows the changes, not the database size.
type Diff struct {
	A            string     `json:"a"`
	B            string     `json:"b"`
	Files        []FileDiff `json:"files"`
	BlocksDiffer int64      `json:"blocks_differ"`
	KeysChecked  int        `json:"keys_checked"`
}

// FileDiff is one file that differs. Change is added (only in B), removed
// (only in A), modified (data differs), metadata (attributes only) or
// renamed.
type FileDiff struct {
	Path   string `json:"path"`
	From   string `json:"from,omitempty"` // renamed: the path in A
	Change string `json:"change"`
	Blocks int64  `json:"blocks"`
	SizeA  int64  `json:"size_a"`
	SizeB  int64  `json:"size_b"`
}

type nsEntry struct {
	path string
	attr Attr
}

// namespace maps the inodes visible through lineage to a path and attrs.
func (v *Volume) namespace(ctx context.Context, lineage []blockstore.ReadPoint) (map[uint64]nsEntry, error) {
	attrs := map[uint64]Attr{}
	children := map[uint64][]blockstore.Entry{}
	err := v.store.ScanLatest(ctx, lineage, blockstore.Key{Kind: blockstore.KindDirent}, blockstore.Key{Kind: blockstore.KindBlock},
		func(e blockstore.Entry) error {
			switch e.Key.Kind {
			case blockstore.KindInode:
				a, err := decodeAttr(e.Value.Data)
				if err != nil {
					return fmt.Errorf("%s: %w", e.Key, err)
				}
				attrs[e.Key.Ino] = a
			case blockstore.KindDirent:
				children[e.Key.Ino] = append(children[e.Key.Ino], e)
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	out := map[uint64]nsEntry{rootIno: {path: "/", attr: attrs[rootIno]}}
	queue := []uint64{rootIno}
	for len(queue) > 0 {
		dir := queue[0]
		queue = queue[1:]
		for _, e := range children[dir] {
			child, _, err := decodeDirent(e.Value.Data)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", e.Key, err)
			}
			a, ok := attrs[child]
			if _, seen := out[child]; seen || !ok {
				continue
			}
			out[child] = nsEntry{path: path.Join(out[dir].path, e.Key.Name), attr: a}
			if a.IsDir() {
				queue = append(queue, child)
			}
		}
	}
	return out, nil
}

// divergence lists, per branch, the LSN range (lo, hi] in which one
// lineage may see versions the other does not.
func divergence(a, b []blockstore.ReadPoint) map[uint32][2]uint64 {
	hiA, hiB := map[uint32]uint64{}, map[uint32]uint64{}
	for _, p := range a {
		hiA[p.Branch] = p.MaxLSN
	}
	for _, p := range b {
		hiB[p.Branch] = p.MaxLSN
	}
	out := map[uint32][2]uint64{}
	for br, ha := range hiA {
		if hb, ok := hiB[br]; ok {
			if ha != hb {
				out[br] = [2]uint64{min(ha, hb), max(ha, hb)}
			}
		} else {
			out[br] = [2]uint64{0, ha}
		}
	}
	for br, hb := range hiB {
		if _, ok := hiA[br]; !ok {
			out[br] = [2]uint64{0, hb}
		}
	}
	return out
}

func sameValue(x, y blockstore.Version, okX, okY bool) bool {
	norm := func(v blockstore.Version, ok bool) []byte {
		if !ok || v.Value.Deleted() || v.Value.Kind == blockstore.ValZero {
			return nil
		}
		if len(bytes.TrimRight(v.Value.Data, "\x00")) == 0 {
			return nil
		}
		return v.Value.Data
	}
	if okX && okY && x.LSN == y.LSN && x.Value.Kind == y.Value.Kind {
		return true // one log entry wrote both
	}
	if okX != okY && (x.Value.Deleted() || y.Value.Deleted()) {
		return false
	}
	return bytes.Equal(norm(x, okX), norm(y, okY))
}

// Diff compares branches a and b at their latest committed states.
func (v *Volume) Diff(ctx context.Context, a, b string) (Diff, error) {
	tree := v.fsm.TreeClone()
	ba, ok := tree.ByName(a)
	if !ok {
		return Diff{}, fmt.Errorf("no branch %q", a)
	}
	bb, ok := tree.ByName(b)
	if !ok {
		return Diff{}, fmt.Errorf("no branch %q", b)
	}
	linA, linB := tree.Lineage(ba.ID, math.MaxUint64), tree.Lineage(bb.ID, math.MaxUint64)
	applied := v.appliedLSN()
	for _, lin := range [][]blockstore.ReadPoint{linA, linB} {
		lin[0].MaxLSN = applied // a live branch reads up to what is applied
	}
	d := Diff{A: a, B: b}
	blocks := map[uint64]int64{}
	touched := map[uint64]bool{}
	checked := map[blockstore.Key]bool{} // a key may have been written on several branches
	for br, r := range divergence(linA, linB) {
		err := v.store.KeysWritten(ctx, br, blockstore.Key{Kind: blockstore.KindDirent}, blockstore.Key{Kind: blockstore.KindBlock + 1}, r[0], r[1],
			func(k blockstore.Key) error {
				if checked[k] {
					return nil
				}
				checked[k] = true
				d.KeysChecked++
				x, okX, err := v.store.Get(ctx, k, linA)
				if err != nil {
					return err
				}
				y, okY, err := v.store.Get(ctx, k, linB)
				if err != nil {
					return err
				}
				if k.Kind == blockstore.KindDirent {
					if !sameValue(x, y, okX, okY) {
						for _, ver := range []blockstore.Version{x, y} {
							if !ver.Value.Deleted() && len(ver.Value.Data) > 0 {
								if child, _, err := decodeDirent(ver.Value.Data); err == nil {
									touched[child] = true
								}
							}
						}
					}
					return nil
				}
				if !sameValue(x, y, okX, okY) {
					touched[k.Ino] = true
					if k.Kind == blockstore.KindBlock {
						blocks[k.Ino]++
					}
				}
				return nil
			})
		if err != nil {
			return d, fmt.Errorf("diff %s %s: %w", a, b, err)
		}
	}
	nsA, err := v.namespace(ctx, linA)
	if err != nil {
		return d, fmt.Errorf("diff: namespace of %s: %w", a, err)
	}
	nsB, err := v.namespace(ctx, linB)
	if err != nil {
		return d, fmt.Errorf("diff: namespace of %s: %w", b, err)
	}
	for ino := range touched {
		ea, inA := nsA[ino]
		eb, inB := nsB[ino]
		fd := FileDiff{Blocks: blocks[ino], SizeA: int64(ea.attr.Size), SizeB: int64(eb.attr.Size)}
		switch {
		case inA && inB:
			fd.Path = eb.path
			switch {
			case ea.path != eb.path:
				fd.Change, fd.From = "renamed", ea.path
			case fd.Blocks > 0 || ea.attr.Size != eb.attr.Size:
				fd.Change = "modified"
			default:
				fd.Change = "metadata"
			}
		case inA:
			fd.Path, fd.Change = ea.path, "removed"
		case inB:
			fd.Path, fd.Change = eb.path, "added"
		default:
			continue // unlinked on both sides
		}
		if ea.attr.IsDir() || eb.attr.IsDir() {
			if fd.Change == "metadata" || fd.Change == "modified" {
				continue // a directory changes whenever an entry does; the entries say what
			}
			fd.Path += "/"
		}
		d.BlocksDiffer += fd.Blocks
		d.Files = append(d.Files, fd)
	}
	slices.SortFunc(d.Files, func(x, y FileDiff) int { return strings.Compare(x.Path, y.Path) })
	return d, nil
}
