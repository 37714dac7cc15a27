package fsm

import (
	"context"
	"encoding/hex"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/internal/datadriven"
	"github.com/neonfs/neonfs/objstore"
)

// TestApplyData drives the FSM with the entries in testdata/apply/*.txt
// and checks its answers and the state reads see: the block map through a
// branch's ancestry, the branch tree, the inode mark. Entries get LSNs
// 1, 2, ... in file order and time = LSN seconds.
func TestApplyData(t *testing.T) {
	files, _ := filepath.Glob("testdata/apply/*.txt")
	if len(files) == 0 {
		t.Fatal("no testdata/apply/*.txt")
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			store := blockstore.NewStore(objstore.NewMemStore(), 1<<20)
			f := New(store, time.Unix(0, 0), 1)
			var lsn uint64
			apply := func(data []byte) string {
				lsn++
				resp := f.Apply(&raft.Log{Index: lsn, Type: raft.LogCommand, Data: data})
				switch r := resp.(type) {
				case nil:
					return fmt.Sprintf("lsn %d: ok", lsn)
				case uint32:
					return fmt.Sprintf("lsn %d: branch %d", lsn, r)
				case Frozen:
					return fmt.Sprintf("lsn %d: frozen at %d", lsn, r.LSN)
				case FencedOut:
					return fmt.Sprintf("lsn %d: dropped branches %v: %s", lsn, r.Branches, r.Reason)
				case Lease:
					return fmt.Sprintf("lsn %d: lease node=%s token=%d expires=%ds", lsn, r.Node, r.Token, r.Expires/1e9)
				case *HaltError:
					return fmt.Sprintf("lsn %d: halted: %v", lsn, r)
				case error:
					return fmt.Sprintf("lsn %d: refused: %v", lsn, r)
				}
				return fmt.Sprintf("lsn %d: %v", lsn, resp)
			}
			datadriven.RunFile(t, path, func(t *testing.T, c datadriven.Case) string {
				now := int64(lsn+1) * 1e9
				switch c.Cmd {
				case "puts", "fenced":
					// fenced NODE BRANCH:TOKEN,... puts...
					var fence *Fence
					args := c.Args
					if c.Cmd == "fenced" {
						// The batch sequence is the entry's LSN unless seq= says.
						fence = &Fence{Node: args[0], Seq: lsn + 1, Tokens: map[uint32]uint64{}}
						if v, ok := c.Arg("seq"); ok {
							fence.Seq, _ = strconv.ParseUint(v, 10, 64)
						}
						for _, bt := range strings.Split(args[1], ",") {
							bs, ts, _ := strings.Cut(bt, ":")
							br, _ := strconv.ParseUint(bs, 10, 32)
							tok, _ := strconv.ParseUint(ts, 10, 64)
							fence.Tokens[uint32(br)] = tok
						}
						args = args[2:]
					}
					puts := map[blockstore.Key]blockstore.Value{}
					for _, a := range args {
						if strings.Contains(a, "=") && !strings.Contains(a, "/") {
							continue // key=value options
						}
						k, v, err := parsePut(a)
						if err != nil {
							t.Fatalf("%s: %v", c.Pos, err)
						}
						puts[k] = v
					}
					var b []byte
					var err error
					if fence != nil {
						b, err = EncodeFencedPuts(now, *fence, puts, 0)
					} else {
						b, err = EncodePuts(now, puts, 0)
					}
					if err != nil {
						return "encode: " + err.Error()
					}
					return apply(b)
				case "freeze":
					return apply(EncodeFreeze(now))
				case "lease":
					// lease OP BRANCH NODE [ttl=SECONDS] [token=T] [time=SECONDS]
					br, _ := strconv.ParseUint(c.Args[1], 10, 32)
					op := LeaseOp{Op: c.Args[0], Branch: uint32(br), Node: c.Args[2]}
					if v, ok := c.Arg("ttl"); ok {
						s, _ := strconv.ParseInt(v, 10, 64)
						op.TTL = s * 1e9
					}
					if v, ok := c.Arg("token"); ok {
						op.Token, _ = strconv.ParseUint(v, 10, 64)
					}
					if v, ok := c.Arg("time"); ok {
						s, _ := strconv.ParseInt(v, 10, 64)
						now = s * 1e9
					}
					b, err := EncodeLease(now, op)
					if err != nil {
						t.Fatal(err)
					}
					return apply(b)
				case "announce", "switch":
					// announce NODE E L S M; switch E L S M
					args := c.Args
					node := ""
					if c.Cmd == "announce" {
						node, args = args[0], args[1:]
					}
					var n [4]int
					for i := range n {
						n[i], _ = strconv.Atoi(args[i])
					}
					fm := Formats{Entries: n[0], Layers: n[1], Snapshots: n[2], Manifests: n[3]}
					var b []byte
					var err error
					if c.Cmd == "announce" {
						b, err = EncodeNode(now, NodeFormats{Node: node, Formats: fm})
					} else {
						b, err = EncodeSwitch(now, fm)
					}
					if err != nil {
						t.Fatal(err)
					}
					return apply(b)
				case "formats":
					var out strings.Builder
					table := f.NodeTable()
					names := make([]string, 0, len(table))
					for n := range table {
						names = append(names, n)
					}
					slices.Sort(names)
					for _, n := range names {
						fmt.Fprintf(&out, "%s: %+v\n", n, table[n])
					}
					fmt.Fprintf(&out, "in use: %+v\n", f.InUse())
					return out.String()
				case "leases":
					var out strings.Builder
					ls := f.Leases()
					ids := make([]uint32, 0, len(ls))
					for id := range ls {
						ids = append(ids, id)
					}
					slices.Sort(ids)
					for _, id := range ids {
						l := ls[id]
						fmt.Fprintf(&out, "branch %d: node=%s token=%d expires=%ds\n", id, l.Node, l.Token, l.Expires/1e9)
					}
					if len(ids) == 0 {
						return "none"
					}
					return out.String()
				case "branch":
					op := BranchOp{Op: c.Args[0], Name: c.Args[1]}
					if v, ok := c.Arg("parent"); ok {
						p, _ := strconv.ParseUint(v, 10, 32)
						op.Parent = uint32(p)
					}
					if v, ok := c.Arg("at"); ok {
						op.At, _ = strconv.ParseUint(v, 10, 64)
					}
					op.OldName, _ = c.Arg("old")
					_, op.ParentIsOld = c.Arg("parent-is-old")
					b, err := EncodeBranch(now, op)
					if err != nil {
						t.Fatal(err)
					}
					return apply(b)
				case "raw":
					b, err := hex.DecodeString(c.Args[0])
					if err != nil {
						t.Fatalf("%s: %v", c.Pos, err)
					}
					return apply(b)
				case "read":
					tree := f.TreeClone()
					b, ok := tree.ByName(c.Args[0])
					if !ok {
						return "no branch " + c.Args[0]
					}
					k, _, err := parsePut("b0/" + c.Args[1] + "=")
					if err != nil {
						t.Fatalf("%s: %v", c.Pos, err)
					}
					k.Branch = b.ID
					at := uint64(math.MaxUint64)
					if v, ok := c.Arg("at"); ok {
						at, _ = strconv.ParseUint(v, 10, 64)
					}
					ver, found, err := store.Get(context.Background(), k, tree.Lineage(b.ID, at))
					switch {
					case err != nil:
						return "error: " + err.Error()
					case !found || ver.Value.Deleted():
						return "absent"
					}
					return fmt.Sprintf("lsn %d: %s", ver.LSN, showValue(ver.Value))
				case "tree":
					var out strings.Builder
					tree := f.TreeClone()
					ids := make([]uint32, 0, len(tree.Branches))
					for id := range tree.Branches {
						ids = append(ids, id)
					}
					slices.Sort(ids)
					for _, id := range ids {
						b := tree.Branches[id]
						fmt.Fprintf(&out, "%d %s parent=%d fork=%d\n", b.ID, b.Name, b.Parent, b.ForkLSN)
					}
					return out.String()
				case "inomark":
					return strconv.FormatUint(f.InoHighWater(), 10)
				case "snapshot":
					if _, err := f.Snapshot(); err != nil {
						return "refused: " + err.Error()
					}
					return "ok"
				}
				t.Fatalf("%s: unknown command %q", c.Pos, c.Cmd)
				return ""
			})
		})
	}
}

// parsePut parses bB/inode/INO=V, bB/dirent/PARENT/NAME=V or
// bB/block/INO/N=V, where V is zero, tomb or the data as text.
func parsePut(s string) (blockstore.Key, blockstore.Value, error) {
	ks, vs, ok := strings.Cut(s, "=")
	if !ok {
		return blockstore.Key{}, blockstore.Value{}, fmt.Errorf("put %q has no =", s)
	}
	parts := strings.Split(ks, "/")
	num := func(i int) uint64 {
		if i >= len(parts) {
			return 0
		}
		n, _ := strconv.ParseUint(strings.TrimPrefix(parts[i], "b"), 10, 64)
		return n
	}
	var k blockstore.Key
	switch {
	case len(parts) == 3 && parts[1] == "inode":
		k = blockstore.InodeKey(uint32(num(0)), num(2))
	case len(parts) == 4 && parts[1] == "dirent":
		name := parts[3]
		if n, err := strconv.Atoi(strings.TrimPrefix(name, "x")); err == nil && strings.HasPrefix(name, "x") {
			name = strings.Repeat("a", n) // x256: a name of 256 bytes
		}
		k = blockstore.DirentKey(uint32(num(0)), num(2), name)
	case len(parts) == 4 && parts[1] == "block":
		k = blockstore.BlockKey(uint32(num(0)), num(2), num(3))
	default:
		return k, blockstore.Value{}, fmt.Errorf("key %q", ks)
	}
	switch vs {
	case "zero":
		return k, blockstore.Value{Kind: blockstore.ValZero}, nil
	case "tomb":
		return k, blockstore.Value{Kind: blockstore.ValTombstone}, nil
	}
	if strings.HasPrefix(vs, "x") && len(vs) > 1 {
		if n, err := strconv.Atoi(vs[1:]); err == nil {
			return k, blockstore.Value{Data: []byte(strings.Repeat("a", n))}, nil
		}
	}
	return k, blockstore.Value{Data: []byte(vs)}, nil
}

func showValue(v blockstore.Value) string {
	switch v.Kind {
	case blockstore.ValZero:
		return "zero"
	case blockstore.ValTombstone:
		return "tomb"
	}
	if len(v.Data) > 32 {
		return fmt.Sprintf("%d bytes", len(v.Data))
	}
	return strconv.Quote(string(v.Data))
}
