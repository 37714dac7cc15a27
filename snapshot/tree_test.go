package snapshot

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/neonfs/neonfs/internal/datadriven"
)

// TestLineageData checks branch ancestry reads (testdata/lineage.txt): the
// read points of a branch at a point in time, and which branches are
// ancestors of which.
func TestLineageData(t *testing.T) {
	tree := NewTree(time.Unix(0, 0))
	byName := func(c datadriven.Case, name string) *Branch {
		b, ok := tree.ByName(name)
		if !ok {
			t.Fatalf("%s: no branch %q", c.Pos, name)
		}
		return b
	}
	datadriven.RunFile(t, "testdata/lineage.txt", func(t *testing.T, c datadriven.Case) string {
		switch c.Cmd {
		case "create": // create NAME parent=NAME at=LSN
			p, _ := c.Arg("parent")
			at, _ := c.Arg("at")
			fork, _ := strconv.ParseUint(at, 10, 64)
			b := &Branch{ID: tree.NextID, Name: c.Args[0], Parent: byName(c, p).ID, ForkLSN: fork}
			tree.NextID++
			tree.Branches[b.ID] = b
			return fmt.Sprintf("branch %d", b.ID)
		case "lineage": // lineage NAME [at=LSN]
			at := uint64(math.MaxUint64)
			if v, ok := c.Arg("at"); ok {
				at, _ = strconv.ParseUint(v, 10, 64)
			}
			var out []string
			for _, p := range tree.Lineage(byName(c, c.Args[0]).ID, at) {
				max := "now"
				if p.MaxLSN != math.MaxUint64 {
					max = strconv.FormatUint(p.MaxLSN, 10)
				}
				out = append(out, fmt.Sprintf("%s<=%s", tree.Branches[p.Branch].Name, max))
			}
			return strings.Join(out, " ")
		case "ancestor": // ancestor A B: is A B or one of B's ancestors?
			return strconv.FormatBool(tree.IsAncestor(byName(c, c.Args[0]).ID, byName(c, c.Args[1]).ID))
		case "deletable":
			if err := tree.CheckDeletable(byName(c, c.Args[0])); err != nil {
				return err.Error()
			}
			return "yes"
		}
		t.Fatalf("%s: unknown command %q", c.Pos, c.Cmd)
		return ""
	})
}
