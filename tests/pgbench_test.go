package tests

import (
	"testing"
	"time"
)

// TestPostgresPgbench runs pgbench on the target, checks the result with
// pg_amcheck, remounts the file system cleanly and checks the data is still
// there.
func TestPostgresPgbench(t *testing.T) {
	requireE2E(t)
	requirePostgres(t)
	total := time.Now()
	tg := newTarget(t)
	pg := initPostgres(t, tg.Dir())
	pg.Start(t)
	// Postgres's own regression suite (misc_functions) lists "." and ".."
	// of the data directory, as every Linux file system returns them.
	if got := pg.Psql(t, "SELECT string_agg(d, ',' ORDER BY d) FROM pg_ls_dir('.', false, true) AS d WHERE d IN ('.', '..')"); got != ".,.." {
		t.Errorf("pg_ls_dir('.', false, true) lists %q of . and .., want both", got)
	}

	pg.Pgbench(t, "-i", "-s", "10", "-q")
	out := pg.Pgbench(t, "-c", "4", "-j", "2", "-T", "20")
	if tps := parseTPS(out); tps <= 0 {
		t.Fatalf("pgbench reported no tps:\n%s", out)
	}
	pg.Amcheck(t)
	pg.CheckPgbenchInvariants(t)

	pg.Stop(t)
	tg.Stop(t)
	tg.Restart(t)
	pg.Start(t)

	if n := pg.Psql(t, "SELECT count(*) FROM pgbench_accounts"); n != "1000000" {
		t.Fatalf("after remount: pgbench_accounts has %s rows, want 1000000", n)
	}
	pg.CheckPgbenchInvariants(t)
	pg.Amcheck(t)
	pg.Stop(t)
	tg.Stop(t)
	t.Logf("total %v", time.Since(total).Round(time.Millisecond))
}
