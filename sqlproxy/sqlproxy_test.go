package sqlproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/neonfs/neonfs/pgserve/pgservetest"

	"github.com/jackc/pgx/v5"

	"github.com/neonfs/neonfs/pgserve"
)

// lazyBackend starts a real Postgres on the first Dial: a suspended
// endpoint waking on connect.
type lazyBackend struct {
	cfg     pgserve.Config
	mu      sync.Mutex
	srv     *pgserve.Server
	starts  atomic.Int32
	touches atomic.Int64
	fail    error // Dial fails with this, when set
}

func (b *lazyBackend) Dial(ctx context.Context) (net.Conn, func(), error) {
	if b.fail != nil {
		return nil, nil, b.fail
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv == nil {
		b.starts.Add(1)
		srv, err := pgserve.Start(ctx, b.cfg)
		if err != nil {
			return nil, nil, err
		}
		b.srv = srv
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(b.cfg.SocketDir, ".s.PGSQL.5432"))
	return c, func() {}, err
}

func (b *lazyBackend) Touch() { b.touches.Add(1) }

// newLazyBackend makes a cluster (scram-sha-256, a password) that starts
// on the first Dial and stops when the test ends.
func newLazyBackend(t *testing.T) *lazyBackend {
	t.Helper()
	dir := pgservetest.Dir(t)
	cfg := pgserve.Config{DataDir: filepath.Join(dir, "pgdata"), SocketDir: filepath.Join(dir, "sock"),
		Password: pgserve.NewPassword(), Conf: map[string]string{"shared_buffers": "16MB", "fsync": "off"}}
	if err := pgserve.Init(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	return &lazyBackend{cfg: cfg}
}

// stop stops Postgres if it started.
func (b *lazyBackend) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		b.srv.Stop(context.Background())
	}
}

func listenLocal(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func setup(t *testing.T) (*lazyBackend, *Proxy) {
	t.Helper()
	b := newLazyBackend(t)
	p := Serve(listenLocal(t), b)
	t.Cleanup(func() {
		p.Close()
		b.stop()
	})
	return b, p
}

func connString(p *Proxy, password string) string {
	return fmt.Sprintf("postgres://postgres:%s@%s/postgres?connect_timeout=60", password, p.Addr())
}

// Eight clients connecting to a stopped endpoint all get answers (through
// scram authentication and pgx's SSL request), and Postgres starts once.
func TestWakeOnConnect(t *testing.T) {
	b, p := setup(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, connString(p, b.cfg.Password))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(ctx)
			var v int
			if err := conn.QueryRow(ctx, "SELECT $1::int + 1", i).Scan(&v); err != nil || v != i+1 {
				errs <- fmt.Errorf("client %d: %d, %v", i, v, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := b.starts.Load(); n != 1 {
		t.Errorf("Postgres started %d times, want once", n)
	}
	if b.touches.Load() == 0 {
		t.Error("no activity reported for relayed bytes")
	}
	// A wrong password is Postgres's refusal, relayed.
	if c, err := pgx.Connect(ctx, connString(p, "wrong")); err == nil {
		c.Close(ctx)
		t.Error("connected through the proxy with a wrong password")
	}
}

// A backend that cannot start gives the client an ErrorResponse naming
// the cause, not a dropped socket.
func TestBackendFailureIsAnError(t *testing.T) {
	b, p := setup(t)
	b.fail = errors.New("postgres binary /nonexistent/postgres: no such file")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, connString(p, b.cfg.Password))
	if err == nil || !strings.Contains(err.Error(), "could not be started") || !strings.Contains(err.Error(), "57P03") {
		t.Fatalf("connect to a failing backend: %v", err)
	}
}

// Garbage instead of a startup message gets a protocol error.
func TestBadStartup(t *testing.T) {
	_, p := setup(t)
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0, 0, 0, 8, 0, 9, 0, 0}) // protocol 9.0
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 256)
	n, _ := c.Read(buf)
	if n == 0 || buf[0] != 'E' || !strings.Contains(string(buf[:n]), "08P01") {
		t.Fatalf("answer to a bad startup: %q", buf[:n])
	}
}
