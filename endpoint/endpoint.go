// Package endpoint runs one branch's compute and scales it to zero: it
// wakes Postgres (mount the branch, start the server) when a client
// arrives, watches what the server does, and suspends it (stop Postgres,
// unmount the branch) once nothing has happened for SuspendAfter. It is
// the sqlproxy.Backend of the branch's listener. It reaches storage only
// through the Mounter interface and Postgres only through pgserve: it
// never imports the volume, the fs or the cli.
package endpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/neonfs/neonfs/internal/hist"
	"github.com/neonfs/neonfs/pgserve"
)

// Mounter makes a branch's files available and takes them away again.
type Mounter interface {
	// Mount serves the branch and returns the directory holding it.
	Mount(ctx context.Context) (dir string, err error)
	// Unmount stops serving it and drops what it cached.
	Unmount(ctx context.Context) error
}

// State is where an endpoint is in its life.
type State string

const (
	Suspended  State = "suspended"
	Waking     State = "waking"
	Active     State = "active"
	Suspending State = "suspending"
	// Stopped: suspended, and a client is refused rather than waking it
	// (`neonfs endpoint stop`), until Start.
	Stopped State = "stopped"
)

// ErrStopped is Dial's answer while the endpoint is stopped.
var ErrStopped = errors.New("endpoint is stopped")

// Config describes an endpoint. PG.DataDir is set from the mount: the
// cluster lives in PGDATA under the branch's root.
type Config struct {
	Branch string
	PG     pgserve.Config
	// SuspendAfter is how long the endpoint may do nothing before it is
	// suspended; 0 never suspends.
	SuspendAfter time.Duration
	// PollEvery is how often activity is read (about a second).
	PollEvery time.Duration
	// Stopped starts the endpoint stopped.
	Stopped bool
}

// PGDATA is the cluster's directory under a branch's root.
const PGDATA = "pgdata"

// Info is what `endpoint list` shows.
type Info struct {
	Branch       string        `json:"branch"`
	State        State         `json:"state"`
	Pid          int           `json:"pid,omitempty"`
	Connections  int           `json:"connections"`
	LastActivity time.Time     `json:"last_activity"`
	ColdStarts   int           `json:"cold_starts"`
	LastColdTook time.Duration `json:"last_cold_start_ns,omitempty"`
	LastError    string        `json:"last_error,omitempty"`
	// Relayed counts client connections handed to Postgres.
	Relayed uint64 `json:"relayed"`
}

// ColdStartBounds are the cold-start histogram's buckets, in seconds.
var ColdStartBounds = []float64{0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30}

// Endpoint is one branch's compute.
type Endpoint struct {
	cfg     Config
	mounter Mounter

	// op serialises waking and suspending: a client arriving while the
	// endpoint suspends waits for the suspend to finish, then wakes it.
	op sync.Mutex

	mu       sync.Mutex
	state    State
	srv      *pgserve.Server
	conns    int
	last     time.Time
	colds    int
	lastCold time.Duration
	lastErr  string
	stopped  bool
	// onSuspend runs before Postgres stops (the HTTP listener's pool).
	onSuspend func()

	touched  atomic.Bool // bytes relayed since the last poll
	relayed  atomic.Uint64
	coldHist *hist.Histogram // seconds from a wake's start to Postgres ready
}

// New returns a suspended endpoint.
func New(cfg Config, m Mounter) *Endpoint {
	if cfg.PollEvery == 0 {
		cfg.PollEvery = time.Second
	}
	e := &Endpoint{cfg: cfg, mounter: m, state: Suspended, last: time.Now(), coldHist: hist.New(ColdStartBounds...),
		stopped: cfg.Stopped}
	if cfg.Stopped {
		e.state = Stopped
	}
	return e
}

// Info reports the endpoint's state.
func (e *Endpoint) Info() Info {
	e.mu.Lock()
	defer e.mu.Unlock()
	in := Info{Branch: e.cfg.Branch, State: e.state, Connections: e.conns, LastActivity: e.last,
		ColdStarts: e.colds, LastColdTook: e.lastCold, LastError: e.lastErr, Relayed: e.relayed.Load()}
	if e.srv != nil {
		in.Pid = e.srv.Pid()
	}
	return in
}

func (e *Endpoint) setState(s State) {
	e.mu.Lock()
	e.state = s
	e.mu.Unlock()
}

// OnSuspend has f called each time the endpoint suspends, before Postgres
// stops: connections held on its behalf (the SQL-over-HTTP pool) must not
// outlive it.
func (e *Endpoint) OnSuspend(f func()) {
	e.mu.Lock()
	e.onSuspend = f
	e.mu.Unlock()
}

// ColdStarts returns the cold-start histogram (seconds).
func (e *Endpoint) ColdStarts() hist.Snapshot { return e.coldHist.Snapshot() }

// Touch records activity (sqlproxy.Backend).
func (e *Endpoint) Touch() { e.touched.Store(true) }

// Dial returns a connection to the endpoint's Postgres, waking it first
// when needed (sqlproxy.Backend). Concurrent callers wake it once.
func (e *Endpoint) Dial(ctx context.Context) (net.Conn, func(), error) {
	if err := e.wake(ctx); err != nil {
		return nil, nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(e.cfg.PG.SocketDir, ".s.PGSQL.5432"))
	if err != nil {
		return nil, nil, fmt.Errorf("endpoint %s: connect to postgres: %w", e.cfg.Branch, err)
	}
	e.relayed.Add(1)
	e.mu.Lock()
	e.conns++
	e.last = time.Now()
	e.mu.Unlock()
	var once sync.Once
	return c, func() {
		once.Do(func() {
			e.mu.Lock()
			e.conns--
			e.last = time.Now()
			e.mu.Unlock()
		})
	}, nil
}

// wake mounts the branch and starts Postgres unless it runs.
// Wake starts the compute now if it is suspended (a stopped endpoint
// stays stopped): a cluster node taking over a dead writer's branch.
func (e *Endpoint) Wake(ctx context.Context) error { return e.wake(ctx) }

func (e *Endpoint) wake(ctx context.Context) error {
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	running, stopped := e.srv != nil, e.stopped
	e.mu.Unlock()
	if running {
		return nil
	}
	if stopped {
		return fmt.Errorf("%w: start it with `neonfs endpoint start %s`", ErrStopped, e.cfg.Branch)
	}
	return e.wakeLocked(ctx)
}

// wakeLocked starts the compute; e.op is held and it is not running.
func (e *Endpoint) wakeLocked(ctx context.Context) error {
	e.setState(Waking)
	start := time.Now()
	srv, err := e.start(ctx)
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		e.state, e.lastErr = Suspended, err.Error()
		return err
	}
	e.srv, e.state, e.last, e.lastErr = srv, Active, time.Now(), ""
	e.colds++
	e.lastCold = time.Since(start)
	e.coldHist.Observe(e.lastCold.Seconds())
	slog.Info("endpoint woke", "branch", e.cfg.Branch, "pid", srv.Pid(), "took", e.lastCold.Round(time.Millisecond))
	return nil
}

func (e *Endpoint) start(ctx context.Context) (*pgserve.Server, error) {
	dir, err := e.mounter.Mount(ctx)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: mount: %w", e.cfg.Branch, err)
	}
	cfg := e.cfg.PG
	cfg.DataDir = filepath.Join(dir, PGDATA)
	// The branch was just mounted read-write by this endpoint, so no
	// Postgres runs on it; a postmaster.pid is a dead server's, maybe from
	// another node (a cluster failover), whose pid may name a live process
	// here: Postgres would refuse to start.
	if err := os.Remove(filepath.Join(cfg.DataDir, "postmaster.pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
		slog.Warn("endpoint: remove a stale postmaster.pid", "branch", e.cfg.Branch, "err", err)
	}
	if !pgserve.Initialized(cfg.DataDir) {
		err = pgserve.Init(ctx, cfg)
	}
	var srv *pgserve.Server
	if err == nil {
		srv, err = pgserve.Start(ctx, cfg)
	}
	if err != nil {
		if uerr := e.mounter.Unmount(context.Background()); uerr != nil {
			slog.Error("endpoint: unmount after a failed start", "branch", e.cfg.Branch, "err", uerr)
		}
		return nil, fmt.Errorf("endpoint %s: %w", e.cfg.Branch, err)
	}
	return srv, nil
}

// Suspend stops Postgres and unmounts the branch. Clients still connected
// are disconnected (Postgres's fast shutdown); the next one wakes it.
func (e *Endpoint) Suspend(ctx context.Context) error {
	e.op.Lock()
	defer e.op.Unlock()
	return e.suspendLocked(ctx)
}

// Stop suspends the endpoint and keeps it so: clients are refused with
// ErrStopped until Start.
func (e *Endpoint) Stop(ctx context.Context) error {
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	e.stopped = true
	e.mu.Unlock()
	return e.suspendLocked(ctx)
}

// Start lets clients wake the endpoint again and wakes it now.
func (e *Endpoint) Start(ctx context.Context) error {
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	e.stopped = false
	running := e.srv != nil
	if !running {
		e.state = Suspended
	}
	e.mu.Unlock()
	if running {
		return nil
	}
	return e.wakeLocked(ctx)
}

// BusyError says an endpoint runs Postgres on the branch an operation
// wanted for itself.
type BusyError struct {
	Branch string
	Pid    int
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("the endpoint of branch %s runs Postgres (pid %d): stop it first (`neonfs endpoint stop %s`) or pass --force",
		e.Branch, e.Pid, e.Branch)
}

// Hold runs fn while the endpoint cannot wake: a branch operation (reset,
// restore, delete) changes the branch under a suspended endpoint, and a
// client arriving meanwhile waits and then sees the new state. When
// Postgres runs, Hold refuses with a *BusyError, or with force suspends
// it first.
func (e *Endpoint) Hold(ctx context.Context, force bool, fn func() error) error {
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	srv := e.srv
	e.mu.Unlock()
	if srv != nil {
		if !force {
			return &BusyError{Branch: e.cfg.Branch, Pid: srv.Pid()}
		}
		if err := e.suspendLocked(ctx); err != nil {
			return fmt.Errorf("suspend the endpoint of %s: %w", e.cfg.Branch, err)
		}
	}
	return fn()
}

// Checkpoint asks a running Postgres for a CHECKPOINT (before a branch is
// forked from it, so the branch starts without replaying WAL); it does
// nothing when the endpoint is suspended.
func (e *Endpoint) Checkpoint(ctx context.Context) error {
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	srv := e.srv
	e.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Checkpoint(ctx)
}

func (e *Endpoint) suspendLocked(ctx context.Context) error {
	e.mu.Lock()
	srv := e.srv
	if srv == nil && e.stopped {
		e.state = Stopped
	}
	e.mu.Unlock()
	if srv == nil {
		return nil
	}
	e.setState(Suspending)
	e.mu.Lock()
	f := e.onSuspend
	e.mu.Unlock()
	if f != nil {
		f()
	}
	err := srv.Stop(ctx)
	if uerr := e.mounter.Unmount(ctx); err == nil {
		err = uerr
	}
	e.mu.Lock()
	e.srv, e.state = nil, Suspended
	if e.stopped {
		e.state = Stopped
	}
	if err != nil {
		e.lastErr = err.Error()
	}
	e.mu.Unlock()
	slog.Info("endpoint suspended", "branch", e.cfg.Branch, "err", err)
	return err
}

// Run watches the endpoint until ctx is done, suspending it after
// SuspendAfter without activity: a client backend not idle (idle in
// transaction counts), a walsender, an autovacuum worker, or bytes
// relayed. An idle open connection does not keep it awake.
func (e *Endpoint) Run(ctx context.Context) {
	t := time.NewTicker(e.cfg.PollEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if e.busy(ctx) {
			e.mu.Lock()
			e.last = time.Now()
			e.mu.Unlock()
			continue
		}
		e.mu.Lock()
		idle := e.srv != nil && e.cfg.SuspendAfter > 0 && time.Since(e.last) >= e.cfg.SuspendAfter
		e.mu.Unlock()
		if idle {
			if err := e.Suspend(ctx); err != nil {
				slog.Error("endpoint: suspend", "branch", e.cfg.Branch, "err", err)
			}
		}
	}
}

// busy reports activity since the last poll.
func (e *Endpoint) busy(ctx context.Context) bool {
	if e.touched.Swap(false) {
		return true
	}
	e.mu.Lock()
	srv := e.srv
	e.mu.Unlock()
	if srv == nil {
		return false
	}
	conn, err := srv.Connect(ctx)
	if err != nil {
		return true // starting, or stopping: not idle as far as we know
	}
	defer conn.Close(ctx)
	a, err := pgserve.ReadActivity(ctx, conn)
	return err != nil || a.Active()
}

// Close suspends the endpoint for good.
func (e *Endpoint) Close(ctx context.Context) error { return e.Suspend(ctx) }
