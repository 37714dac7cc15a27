package endpoint

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/neonfs/neonfs/pgserve/pgservetest"

	"github.com/jackc/pgx/v5"

	"github.com/neonfs/neonfs/pgserve"
	"github.com/neonfs/neonfs/sqlproxy"
)

// dirMounter serves a plain directory: the endpoint's logic without FUSE
// (the e2e tests run it on neonfs).
type dirMounter struct {
	dir              string
	mounts, unmounts atomic.Int32
	mounted          atomic.Bool
	hold             chan struct{} // when set, Unmount waits for it to close
}

func (m *dirMounter) Mount(context.Context) (string, error) {
	m.mounts.Add(1)
	m.mounted.Store(true)
	return m.dir, nil
}

func (m *dirMounter) Unmount(context.Context) error {
	if m.hold != nil {
		<-m.hold
	}
	m.unmounts.Add(1)
	m.mounted.Store(false)
	return nil
}

func setup(t *testing.T, suspendAfter time.Duration) (*Endpoint, *dirMounter, string) {
	t.Helper()
	dir := pgservetest.Dir(t)
	m := &dirMounter{dir: filepath.Join(dir, "branch")}
	if err := os.Mkdir(m.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	password := pgserve.NewPassword()
	e := New(Config{Branch: "main", SuspendAfter: suspendAfter, PollEvery: 100 * time.Millisecond,
		PG: pgserve.Config{SocketDir: filepath.Join(dir, "sock"), Password: password,
			Conf: map[string]string{"shared_buffers": "16MB", "fsync": "off", "autovacuum": "off"}}}, m)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := sqlproxy.Serve(ln, e)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		p.Close()
		e.Close(context.Background())
	})
	return e, m, fmt.Sprintf("postgres://postgres:%s@%s/postgres?connect_timeout=60", password, ln.Addr())
}

func waitState(t *testing.T, e *Endpoint, want State) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for e.Info().State != want {
		if time.Now().After(deadline) {
			t.Fatalf("endpoint state %s, want %s", e.Info().State, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A fresh endpoint initdbs on first connect, suspends when idle (Postgres
// gone, branch unmounted), and wakes on the next connect with its data.
func TestSuspendAndWake(t *testing.T) {
	e, m, url := setup(t, time.Second)
	ctx := context.Background()
	if e.Info().State != Suspended {
		t.Fatalf("new endpoint is %s", e.Info().State)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	pid := e.Info().Pid
	// An idle open connection does not keep it awake.
	waitState(t, e, Suspended)
	conn.Close(ctx)
	if syscall.Kill(pid, 0) == nil {
		t.Errorf("postmaster %d alive after suspend", pid)
	}
	if m.mounted.Load() {
		t.Error("branch still mounted after suspend")
	}
	c2, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx)
	var v int
	if err := c2.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 7 {
		t.Fatalf("after wake: %d, %v", v, err)
	}
	if in := e.Info(); in.ColdStarts != 2 || in.State != Active || m.mounts.Load() != 2 {
		t.Errorf("after wake: %+v, %d mounts", in, m.mounts.Load())
	}
}

// A session idle in transaction keeps the endpoint awake.
func TestIdleInTransactionKeepsAwake(t *testing.T) {
	e, _, url := setup(t, time.Second)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // three suspend windows
	if s := e.Info().State; s != Active {
		t.Fatalf("endpoint %s with a session idle in transaction", s)
	}
	tx.Commit(ctx)
	waitState(t, e, Suspended)
}

// A client arriving while the endpoint suspends is served after a fresh
// start, never refused.
func TestConnectDuringSuspend(t *testing.T) {
	e, m, url := setup(t, 0)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	// The suspend stays in its unmount until released, so the client
	// surely arrives while it runs.
	m.hold = make(chan struct{})
	suspended := make(chan error, 1)
	go func() { suspended <- e.Suspend(ctx) }()
	waitState(t, e, Suspending)
	connected := make(chan error, 1)
	var c2 *pgx.Conn
	go func() {
		var err error
		c2, err = pgx.Connect(ctx, url)
		connected <- err
	}()
	time.Sleep(100 * time.Millisecond) // the client is held at the endpoint
	close(m.hold)
	if err := <-suspended; err != nil {
		t.Fatal(err)
	}
	if err := <-connected; err != nil {
		t.Fatalf("connect during suspend: %v", err)
	}
	defer c2.Close(ctx)
	if err := c2.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if in := e.Info(); in.ColdStarts != 2 || in.State != Active {
		t.Errorf("after a connect during suspend: %+v", in)
	}
}
