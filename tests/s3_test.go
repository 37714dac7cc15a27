package tests

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/neonfs/neonfs/objstore/s3/s3test"
)

// neonfsStatus runs neonfs status --json on the target's volume.
func neonfsStatus(t *testing.T, n *neonfsTarget) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, n.bin, "status", "--data", n.data, "--json").Output()
	if err != nil {
		t.Fatalf("neonfs status: %v", err)
	}
	var st map[string]any
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("neonfs status: %v\n%s", err, out)
	}
	return st
}

// TestPostgresOnS3 runs Postgres on a volume whose layers live in a real S3
// server (versitygw on loopback), stops the server for 30 s under pgbench
// (clients see no error, flushes resume), and checks the data across a
// remount.
func TestPostgresOnS3(t *testing.T) {
	requireE2E(t)
	requirePostgres(t)
	if targetKind() != "neonfs" {
		t.Skip("S3 is a neonfs target feature")
	}
	srv := s3test.NewServer(t)
	cfg := srv.Config()
	n := newNeonfsTargetWith(t,
		[]string{"--s3", "s3://" + cfg.Bucket + "/vol", "--s3-endpoint", cfg.Endpoint, "--s3-tls=false", "--s3-credentials", cfg.CredentialsFile},
		// A layer cache far smaller than the data: reads go through
		// constant eviction.
		[]string{"--flush-mb", "16", "--layer-cache-mb", "32"})
	pg := initPostgres(t, n.Dir())
	pg.Start(t)
	pg.Pgbench(t, "-i", "-s", "5", "-q")
	pg.Pgbench(t, "-c", "4", "-j", "2", "-T", "10")
	st := neonfsStatus(t, n)
	if st["objects"].(float64) == 0 {
		t.Fatalf("no objects in S3 after pgbench: %v", st)
	}
	t.Logf("before the outage: %v layers, %v object bytes in S3", st["layers"], st["object_bytes"])

	// S3 down for 30 s while pgbench runs: commits go on in the log.
	srv.Stop()
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		// -n: no vacuum, so history is not truncated and the balance
		// invariants span both runs. A read that misses every cache waits
		// for the bucket (it retries; it does not fail), so a connection
		// made during the outage may wait the outage out: the connect
		// timeout outlasts it (the default 30 s did not, once in CI: a
		// backend's startup read waited 35.7 s).
		out, err := pg.run(t, 10*time.Minute, "pgbench", "-n", "-c", "4", "-j", "2", "-T", "30",
			"dbname=postgres connect_timeout=120")
		done <- result{out, err}
	}()
	time.Sleep(15 * time.Second)
	// Meanwhile status answers, and says what is wrong, instead of hanging.
	st = neonfsStatus(t, n)
	t.Logf("during the outage: object store error %q, last flush error %q", st["object_store_error"], st["last_flush_error"])
	time.Sleep(15 * time.Second)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || parseTPS(r.out) <= 0 || strings.Contains(r.out, "ERROR") {
		t.Fatalf("pgbench during the S3 outage: %v\n%s", r.err, r.out)
	}
	t.Logf("pgbench across the outage: %.0f tps", parseTPS(r.out))
	// Flushes resume: the memtable drains into S3.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st = neonfsStatus(t, n)
		if _, failing := st["last_flush_error"]; !failing && st["memtable_bytes"].(float64) < 32<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flushes did not resume after S3 came back: %v", st)
		}
		time.Sleep(time.Second)
	}
	pg.Amcheck(t)
	pg.CheckPgbenchInvariants(t)
	lc, _ := neonfsStatus(t, n)["layer_cache"].(map[string]any)
	t.Logf("layer cache: %v", lc)
	if lc == nil || lc["evictions"].(float64) == 0 || lc["bytes"].(float64) > lc["limit"].(float64)+(1<<20+4096) {
		t.Fatalf("layer cache under a 32 MiB limit: %v (want evictions, bytes within the limit)", lc)
	}

	pg.Stop(t)
	n.Stop(t)
	n.Restart(t)
	pg.Start(t)
	pg.CheckPgbenchInvariants(t)
	pg.Amcheck(t)
	want := pg.Psql(t, "SELECT count(*), sum(abalance) FROM pgbench_accounts")
	pg.Stop(t)
	n.Stop(t)

	// Disaster: the data dir (log and all) is gone. Rebuild it from the
	// bucket alone; a clean stop flushed everything, so nothing is missing.
	if err := os.Rename(n.data, n.data+".lost"); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(n.bin, "restore", "--data", n.data, "--from", "s3://"+cfg.Bucket+"/vol",
		"--s3-endpoint", cfg.Endpoint, "--s3-tls=false", "--s3-credentials", cfg.CredentialsFile).CombinedOutput()
	if err != nil {
		t.Fatalf("neonfs restore: %v\n%s", err, out)
	}
	t.Logf("restore: %s", out)
	n.Restart(t)
	pg.Start(t)
	if got := pg.Psql(t, "SELECT count(*), sum(abalance) FROM pgbench_accounts"); got != want {
		t.Fatalf("restored volume: accounts %q, want %q", got, want)
	}
	pg.CheckPgbenchInvariants(t)
	pg.Amcheck(t)
	pg.Stop(t)
	n.Stop(t)
}
