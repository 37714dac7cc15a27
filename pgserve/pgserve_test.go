package pgserve_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/neonfs/neonfs/pgserve"
	"github.com/neonfs/neonfs/pgserve/pgservetest"

	"github.com/jackc/pgx/v5"
)

// testConfig makes a directory the postgres user can reach, or skips where
// the real thing cannot run (not root, no postgres user, no binaries).
func testConfig(t *testing.T) pgserve.Config {
	t.Helper()
	dir := pgservetest.Dir(t)
	return pgserve.Config{DataDir: filepath.Join(dir, "pgdata"), SocketDir: filepath.Join(dir, "sock"),
		Password: pgserve.NewPassword(), Conf: map[string]string{"shared_buffers": "16MB", "fsync": "off"},
		StopTimeout: 10 * time.Second}
}

// Init, start, serve, report activity, stop and start again: the whole
// life of a server, on a real Postgres.
func TestServerLifecycle(t *testing.T) {
	cfg := testConfig(t)
	ctx := context.Background()
	if err := pgserve.Init(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if !pgserve.Initialized(cfg.DataDir) {
		t.Fatal("no cluster after Init")
	}
	if hba, err := os.ReadFile(filepath.Join(cfg.DataDir, "pg_hba.conf")); err != nil || !strings.Contains(string(hba), "scram-sha-256") {
		t.Fatalf("pg_hba.conf does not ask for scram-sha-256 (%v)", err)
	}
	s, err := pgserve.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop(ctx)
	conn, err := s.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}

	// A wrong password is refused: the role really has one.
	bad := s.ConnConfig()
	bad.Password = "wrong"
	if c, err := connectWith(ctx, bad); err == nil {
		c.Close(ctx)
		t.Fatal("connected with a wrong password")
	}

	watch, err := s.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, err := pgserve.ReadActivity(ctx, watch)
	if err != nil || a.Active() || a.Idle != 1 {
		t.Fatalf("activity with one idle session: %+v, %v", a, err)
	}
	// Idle in transaction counts as busy.
	if _, err := conn.Exec(ctx, "BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if a, err = pgserve.ReadActivity(ctx, watch); err != nil || !a.Active() || a.Busy != 1 {
		t.Fatalf("activity with a session idle in transaction: %+v, %v", a, err)
	}
	conn.Close(ctx)
	watch.Close(ctx)
	if err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	pid := s.Pid()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Fatalf("postmaster %d still alive after Stop", pid)
	}

	s, err = pgserve.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop(ctx)
	c, err := s.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var v int
	if err := c.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 42 {
		t.Fatalf("after restart: %d, %v", v, err)
	}
}

// Bad input gets one clear error and leaves nothing running.
func TestBadInput(t *testing.T) {
	cfg := testConfig(t)
	ctx := context.Background()
	missing := cfg
	missing.BinDir = "/nonexistent/bin"
	if err := pgserve.Init(ctx, missing); err == nil || !strings.Contains(err.Error(), "/nonexistent/bin/initdb") {
		t.Errorf("initdb with a missing binary: %v", err)
	}
	if _, err := pgserve.Start(ctx, cfg); err == nil || !strings.Contains(err.Error(), "no cluster") {
		t.Errorf("start without a cluster: %v", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(cfg.DataDir, "stray"), nil, 0o600)
	if err := pgserve.Init(ctx, cfg); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("initdb into a non-empty directory: %v", err)
	}
	os.Remove(filepath.Join(cfg.DataDir, "stray"))
	nopw := cfg
	nopw.Password = ""
	if err := pgserve.Init(ctx, nopw); err == nil {
		t.Error("initdb without a password or trust")
	}
	if err := pgserve.Init(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	broken := cfg
	broken.Conf = map[string]string{"shared_buffers": "not-a-size"}
	if _, err := pgserve.Start(ctx, broken); err == nil || !strings.Contains(err.Error(), "exited while starting") {
		t.Errorf("start with a bad setting: %v", err)
	}
}

func connectWith(ctx context.Context, cc *pgx.ConnConfig) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, cc)
}
