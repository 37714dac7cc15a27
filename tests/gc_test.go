package tests

import (
	"testing"
	"time"
)

// TestGCKeepsBranches runs Postgres on a volume with a 2 s retention window,
// takes branches between pgbench runs, lets the window pass and runs
// `neonfs gc`: unreachable versions are dropped and replaced objects
// deleted, and every branch still reads exactly its fork point's data
// (same pgbench history, pg_amcheck clean, invariants hold).
func TestGCKeepsBranches(t *testing.T) {
	requireE2E(t)
	requirePostgres(t)
	if targetKind() != "neonfs" {
		t.Skip("GC is a neonfs feature")
	}
	n := newNeonfsTargetWith(t, []string{"--retention", "2s"}, []string{"--flush-mb", "8"})
	c := cliFor(t, n)
	pg := initPostgres(t, n.Dir())
	pg.Start(t)
	pg.Pgbench(t, "-i", "-s", "3", "-q")

	const state = "SELECT count(*), sum(delta) FROM pgbench_history"
	want := map[string]string{}
	for _, b := range []string{"b1", "b2"} {
		pg.Pgbench(t, "-n", "-c", "2", "-j", "2", "-T", "5")
		// CHECKPOINT: the branch then starts from a clean shutdown point
		// and recovery on it replays little.
		pg.Psql(t, "CHECKPOINT")
		want[b] = pg.Psql(t, state)
		c.create(t, b)
	}
	pg.Pgbench(t, "-n", "-c", "2", "-j", "2", "-T", "5")
	want["main"] = pg.Psql(t, state)
	time.Sleep(3 * time.Second) // past the window: only fork points protect history

	var res struct {
		Merges         int   `json:"merges"`
		LayersBefore   int   `json:"layers_before"`
		LayersAfter    int   `json:"layers_after"`
		DroppedBytes   int64 `json:"dropped_bytes"`
		DeletedObjects int   `json:"deleted_objects"`
		ReadDepth      int   `json:"read_depth"`
	}
	c.json(t, &res, "gc", "--json")
	t.Logf("gc: %+v", res)
	if res.Merges == 0 || res.DroppedBytes == 0 || res.DeletedObjects == 0 {
		t.Fatalf("gc dropped or deleted nothing: %+v", res)
	}

	if got := pg.Psql(t, state); got != want["main"] {
		t.Fatalf("main after gc: history %q, want %q", got, want["main"])
	}
	pg.Amcheck(t)
	pg.CheckPgbenchInvariants(t)
	for _, b := range []string{"b1", "b2"} {
		mnt := mountBranch(t, n, c, b, "")
		bp := postgresOn(t, mnt)
		bp.Start(t)
		if got := bp.Psql(t, state); got != want[b] {
			t.Fatalf("branch %s after gc: history %q, want %q (its fork point's)", b, got, want[b])
		}
		bp.Amcheck(t)
		bp.CheckPgbenchInvariants(t)
		bp.Stop(t)
		unmountBranch(t, c, mnt)
	}
	pg.Stop(t)
	n.Stop(t)
}
