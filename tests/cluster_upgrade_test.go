package tests

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClusterRollingUpgrade runs two builds of different formats: the
// test's binary (log entry format 3) and one linked with the next entry
// format (4, which adds an entry type). The nodes are upgraded one at a
// time; while any voter runs the old build the cluster keeps writing
// format 3 (the old nodes stay healthy: nothing reaches them that they
// cannot read); once all three run the new build the cluster switches to
// format 4 and writes its new entry type, which every node applies. A
// node with the old binary then cannot join: it refuses to start, naming
// the format.
func TestClusterRollingUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: a cluster, two builds")
	}
	c := newCluster(t, []string{"127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1"})
	old := c.nodes[0].cli.bin
	newer := filepath.Join(t.TempDir(), "neonfs-format4")
	build := exec.Command("go", "build", "-ldflags", "-X github.com/neonfs/neonfs/volume/fsm.futureVersion=4", "-o", newer, ".")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the format 4 binary: %v\n%s", err, out)
	}
	voters, late := c.nodes[:3], c.nodes[3]
	voters[0].start(t)
	for _, n := range voters[1:] {
		n.cli.ok(t, "join", "--node-id", n.id, "--raft-addr", n.raft, "--peer", voters[0].raft)
		n.start(t)
	}
	c.waitHealthy(t, voters[0], 3)
	entries := func(n *clusterNode) int {
		code, out, _ := n.cli.run(t, "cluster", "status", "--json")
		var f struct {
			Formats struct {
				Entries int `json:"entries"`
			} `json:"formats"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &f) != nil {
			return -1
		}
		return f.Formats.Entries
	}
	waitFor(t, time.Minute, "the cluster to switch to entry format 3", func() bool { return entries(voters[0]) == 3 })

	for i := len(voters) - 1; i >= 0; i-- {
		n := voters[i]
		n.serve.stop(t)
		n.cli.bin = newer
		n.start(t)
		c.waitHealthy(t, n, 3)
		if i > 0 {
			// Old voters remain: still format 3, and they are all healthy.
			time.Sleep(2 * time.Second) // a few leader ticks in which a wrong switch would happen
			if e := entries(n); e != 3 {
				t.Fatalf("with %d voters on the old build the cluster writes entry format %d", i, e)
			}
			for _, o := range voters[:i] {
				if strings.Contains(readFile(t, o.log), "cannot be applied") {
					t.Fatalf("%s (old build) met an entry it cannot apply:\n%s", o.id, readFile(t, o.log))
				}
			}
		}
	}
	waitFor(t, time.Minute, "the cluster to switch to entry format 4", func() bool { return entries(voters[0]) == 4 })
	for _, n := range voters {
		n := n
		waitFor(t, time.Minute, n.id+" to apply the format 4 entry", func() bool {
			return strings.Contains(readFile(t, n.log), "cluster writes entry format 4")
		})
	}

	// A node with the old binary joins the upgraded cluster: refused.
	late.cli.ok(t, "join", "--node-id", late.id, "--raft-addr", late.raft, "--peer", voters[0].raft)
	cmd := exec.Command(old, "serve", "--data", late.cli.data, "--run-dir", late.runDir)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "this binary knows up to 3") {
		t.Fatalf("an old binary on the upgraded cluster: %v\n%s", err, out)
	}
	t.Logf("old binary refused: %s", lastLine(string(out)))
	voters[0].cli.ok(t, "cluster", "remove", late.id)
	c.waitHealthy(t, voters[0], 3)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
