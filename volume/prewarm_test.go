package volume

import (
	"slices"
	"testing"

	"github.com/neonfs/neonfs/blockstore"
)

func TestPrewarmPlan(t *testing.T) {
	layer := func(name string, size int64, branches ...uint32) blockstore.LayerMeta {
		m := blockstore.LayerMeta{Name: name, Size: size}
		if len(branches) > 0 {
			m.BranchBytes = map[uint32]int64{}
			for _, b := range branches {
				m.BranchBytes[b] = size
			}
		}
		return m
	}
	// Oldest first, as Store.Layers lists them.
	layers := []blockstore.LayerMeta{
		layer("old-unknown", 10),
		layer("main-1", 40, 1),
		layer("child-only", 30, 2),
		layer("both", 50, 1, 2),
		layer("other", 20, 3),
		layer("main-2", 60, 1),
	}
	main := []blockstore.ReadPoint{{Branch: 1}}
	child := []blockstore.ReadPoint{{Branch: 2}, {Branch: 1}}
	for _, tc := range []struct {
		name    string
		lineage []blockstore.ReadPoint
		budget  int64
		want    []string
	}{
		{"main, all fit", main, 1000, []string{"main-2", "both", "main-1", "old-unknown"}},
		{"child sees its ancestry", child, 1000, []string{"main-2", "both", "child-only", "main-1", "old-unknown"}},
		{"budget: newest first, a big one skipped, smaller older ones fit", main, 100, []string{"main-2", "main-1"}},
		{"nothing fits", main, 5, nil},
		{"unknown branch holds only legacy layers", []blockstore.ReadPoint{{Branch: 9}}, 1000, []string{"old-unknown"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, l := range prewarmPlan(layers, tc.lineage, tc.budget) {
				got = append(got, l.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("plan %v, want %v", got, tc.want)
			}
		})
	}
}
