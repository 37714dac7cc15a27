package fsm

import (
	"bytes"
	"context"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/objstore"
	"github.com/neonfs/neonfs/snapshot"
)

// TestExpectedPutsApplyAsDecoded: an entry applied with the puts Expect
// recorded for it (the proposer's path) leaves the store as decoding it
// does (a replay's or a follower's path), for plain and fenced entries,
// compressed or not; a copy of the entry, or the entry after Forget, is
// decoded.
func TestExpectedPutsApplyAsDecoded(t *testing.T) {
	main := snapshot.RootBranch
	page := bytes.Repeat([]byte("neonfs page "), blockstore.BlockSize/12+1)[:blockstore.BlockSize]
	puts := map[blockstore.Key]blockstore.Value{
		blockstore.BlockKey(main, 7, 0): blockstore.BlockValue(page),
		blockstore.BlockKey(main, 7, 1): blockstore.BlockValue(make([]byte, blockstore.BlockSize)),
		blockstore.BlockKey(main, 7, 2): {Kind: blockstore.ValTombstone},
	}
	small := map[blockstore.Key]blockstore.Value{blockstore.BlockKey(main, 8, 0): {Kind: blockstore.ValTombstone}}
	encode := func(t *testing.T, fenced bool, p map[blockstore.Key]blockstore.Value) []byte {
		t.Helper()
		var b []byte
		var err error
		if fenced {
			// The lease taken at LSN 1 has token 1.
			b, err = EncodeFencedPuts(2e9, Fence{Node: "n1", Seq: 1, Tokens: map[uint32]uint64{main: 1}}, p, 0)
		} else {
			b, err = EncodePuts(1e9, p, 0)
		}
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	state := func(t *testing.T, f *FSM, store *blockstore.Store, p map[blockstore.Key]blockstore.Value) []string {
		t.Helper()
		tree := f.TreeClone()
		var out []string
		for k := range p {
			ver, found, err := store.Get(context.Background(), k, tree.Lineage(main, math.MaxUint64))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, k.String()+" "+map[bool]string{true: "found", false: "missing"}[found]+" "+string(rune('0'+ver.Value.Kind))+" "+string(ver.Value.Data))
		}
		slices.Sort(out)
		return out
	}
	for _, tc := range []struct {
		name   string
		fenced bool
		puts   map[blockstore.Key]blockstore.Value
	}{{"compressed", false, puts}, {"plain", false, small}, {"fenced", true, puts}} {
		t.Run(tc.name, func(t *testing.T) {
			apply := func(expect, forget, copied bool) (*FSM, *blockstore.Store) {
				store := blockstore.NewStore(objstore.NewMemStore(), 1<<20)
				f := New(store, time.Unix(0, 0), 1)
				lease, err := EncodeLease(1e9, LeaseOp{Op: LeaseAcquire, Branch: main, Node: "n1", TTL: 60e9})
				if err != nil {
					t.Fatal(err)
				}
				if tc.fenced {
					if l, ok := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: lease}).(Lease); !ok || l.Token != 1 {
						t.Fatalf("lease: %v", l)
					}
				}
				data := encode(t, tc.fenced, tc.puts)
				if expect {
					f.Expect(data, tc.puts)
				}
				if forget {
					f.Forget(data)
				}
				applied := data
				if copied {
					applied = slices.Clone(data)
				}
				if resp := f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: applied}); resp != nil {
					t.Fatalf("apply: %v", resp)
				}
				return f, store
			}
			f, store := apply(false, false, false)
			want := state(t, f, store, tc.puts)
			if !strings.Contains(strings.Join(want, "\n"), "found") || strings.Contains(strings.Join(want, "\n"), "missing") {
				t.Fatalf("decoded entry left %q: every put should be found", want)
			}
			for _, c := range []struct {
				name                   string
				expect, forget, copied bool
				local                  uint64
			}{
				{"expected", true, false, false, 1},
				{"copy of an expected entry", true, false, true, 0},
				{"forgotten", true, true, false, 0},
			} {
				f, store := apply(c.expect, c.forget, c.copied)
				if got := f.LocalApplies(); got != c.local {
					t.Errorf("%s: %d entries applied from Expect's puts, want %d", c.name, got, c.local)
				}
				if got := state(t, f, store, tc.puts); !slices.Equal(got, want) {
					t.Errorf("%s: store holds\n%q\nwant (decoded)\n%q", c.name, got, want)
				}
			}
		})
	}
}
