package tests

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// ledgerWriter inserts increasing ids into the ledger table, each in its own
// autocommit transaction, and records an id as acknowledged only once its
// COMMIT has returned successfully. It stops at the first error (normally
// the server being killed).
type ledgerWriter struct {
	mu    sync.Mutex
	acked []int64
	// inDoubt are ids whose INSERT was sent but not acknowledged: they may
	// or may not survive.
	inDoubt []int64
	lastErr error
}

func (w *ledgerWriter) run(ctx context.Context, connString string, cycle int, next *int64, ready chan<- error) {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		ready <- err
		return
	}
	defer conn.Close(context.Background())
	ready <- nil
	for ctx.Err() == nil {
		id := *next
		*next = id + 1
		_, err := conn.Exec(ctx, "INSERT INTO ledger (id, cycle) VALUES ($1, $2)", id, cycle)
		w.mu.Lock()
		if err != nil {
			w.inDoubt = append(w.inDoubt, id)
			w.lastErr = err
			w.mu.Unlock()
			return
		}
		w.acked = append(w.acked, id)
		w.mu.Unlock()
	}
}

// TestCrashRecovery kills Postgres (kill -9 of the postmaster and its
// children) and the file system daemon at a random moment while a ledger
// writer and pgbench are running, then restarts both and checks that Postgres
// recovers, pg_amcheck is clean, the pgbench balances agree and every
// acknowledged ledger id is there. Cycles go through Postgres's
// wal_sync_method (fdatasync, what endpoints run, and open_datasync) and
// the daemon's WAL path (the page cache by default, --wal-direct-io:
// each WAL write one direct WRITE, returning committed under
// open_datasync), every pair of them within the first four cycles.
func TestCrashRecovery(t *testing.T) {
	requireE2E(t)
	requirePostgres(t)
	total := time.Now()
	cycles := envInt(t, "NEONFS_CRASH_CYCLES", 5)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("NEONFS_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("NEONFS_CRASH_SEED=%q: %v", s, err)
		}
		seed = v
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	t.Logf("crash cycles: %d, seed: %d (set NEONFS_CRASH_SEED to reproduce)", cycles, seed)

	tg := newTarget(t)
	pg := initPostgres(t, tg.Dir())
	walSync := func(cycle int) string { return [...]string{"open_datasync", "fdatasync"}[(cycle-1)%2] }
	// The daemon is already mounted for cycle 1, with the default WAL path.
	directIO := func(cycle int) bool { return [...]bool{false, true, true, false}[(cycle-1)%4] }
	walMode := func(cycle int) string {
		return walSync(cycle) + map[bool]string{true: ", --wal-direct-io", false: ", WAL through the page cache"}[directIO(cycle)]
	}
	pg.WALSync = walSync(1)
	pg.Start(t)
	pg.Psql(t, "CREATE TABLE ledger (id bigint PRIMARY KEY, cycle int NOT NULL, at timestamptz NOT NULL DEFAULT now())")
	pg.Pgbench(t, "-i", "-s", "2", "-q")

	var acked []int64
	next := int64(1)
	for cycle := 1; cycle <= cycles; cycle++ {
		cycleStart := time.Now()
		w := &ledgerWriter{}
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan error, 1)
		writerDone := make(chan struct{})
		go func() {
			defer close(writerDone)
			w.run(ctx, pg.ConnString(), cycle, &next, ready)
		}()
		if err := <-ready; err != nil {
			cancel()
			t.Fatalf("cycle %d: ledger writer cannot connect: %v", cycle, err)
		}

		benchCtx, benchCancel := context.WithTimeout(context.Background(), 5*time.Minute)
		bench := pg.command(benchCtx, "pgbench", "-n", "-c", "2", "-j", "1", "-T", "120")
		var benchOut bytes.Buffer
		bench.Stdout = &benchOut
		bench.Stderr = &benchOut
		if err := bench.Start(); err != nil {
			cancel()
			benchCancel()
			t.Fatalf("cycle %d: starting pgbench: %v", cycle, err)
		}

		delay := time.Second + time.Duration(rng.Int64N(int64(5*time.Second)))
		daemonFirst := rng.IntN(2) == 0
		time.Sleep(delay)

		killStart := time.Now()
		if daemonFirst {
			tg.Kill(t)
			pg.Crash(t)
		} else {
			pg.Crash(t)
			tg.Kill(t)
		}
		killTook := time.Since(killStart)

		select {
		case <-writerDone:
		case <-time.After(2 * time.Minute):
			cancel()
			<-writerDone
			t.Logf("cycle %d: ledger writer did not notice the crash within 2m; cancelled it", cycle)
		}
		cancel()
		benchErr := waitCmd(bench, time.Minute)
		benchCancel()
		t.Logf("cycle %d (wal_sync_method %s): killed after %v (%s first, took %v); ledger acked %d ids this cycle (writer stopped with: %v); pgbench exit: %v",
			cycle, walMode(cycle), delay.Round(time.Millisecond), map[bool]string{true: "daemon", false: "postgres"}[daemonFirst],
			killTook.Round(time.Millisecond), len(w.acked), w.lastErr, benchErr)
		if len(w.acked) == 0 {
			t.Logf("cycle %d: warning: no ledger insert was acknowledged before the crash", cycle)
		}
		acked = append(acked, w.acked...)

		if n, ok := tg.(*neonfsTarget); ok {
			n.extra = nil
			if directIO(cycle + 1) {
				n.extra = []string{"--wal-direct-io"}
			}
		}
		tg.Restart(t)
		recStart := time.Now()
		pg.WALSync = walSync(cycle + 1)
		pg.Start(t)
		t.Logf("cycle %d: remount + crash recovery took %v", cycle, time.Since(recStart).Round(time.Millisecond))

		verifyLedger(t, pg, cycle, acked, w.inDoubt)
		pg.CheckPgbenchInvariants(t)
		pg.Amcheck(t)
		t.Logf("cycle %d: done in %v", cycle, time.Since(cycleStart).Round(time.Millisecond))
	}

	pg.Stop(t)
	tg.Stop(t)
	t.Logf("total %v: %d cycles, %d acknowledged ledger ids all present", time.Since(total).Round(time.Millisecond), cycles, len(acked))
}

// waitCmd waits for cmd, killing its process group after timeout.
func waitCmd(cmd *exec.Cmd, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		if cmd.Cancel != nil {
			_ = cmd.Cancel()
		} else {
			_ = cmd.Process.Kill()
		}
		return <-done
	}
}

// verifyLedger checks that every acknowledged id is in the ledger.
func verifyLedger(t *testing.T, pg *Postgres, cycle int, acked, inDoubt []int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.ConnString())
	if err != nil {
		t.Fatalf("cycle %d: connecting to verify the ledger: %v", cycle, err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT id FROM ledger")
	if err != nil {
		t.Fatalf("cycle %d: reading the ledger: %v", cycle, err)
	}
	present := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		present[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("cycle %d: reading the ledger: %v", cycle, err)
	}
	var missing []int64
	for _, id := range acked {
		if !present[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		sort.Slice(missing, func(i, j int) bool { return missing[i] < missing[j] })
		show := missing
		if len(show) > 20 {
			show = show[:20]
		}
		t.Fatalf("cycle %d: %d of %d acknowledged ledger ids are missing after recovery, e.g. %v", cycle, len(missing), len(acked), show)
	}
	survived := 0
	for _, id := range inDoubt {
		if present[id] {
			survived++
		}
	}
	t.Logf("cycle %d: all %d acknowledged ledger ids present (%d rows; %d/%d in-doubt ids survived)", cycle, len(acked), len(present), survived, len(inDoubt))
}
