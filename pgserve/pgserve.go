// Package pgserve runs one stock Postgres server on a data directory: initdb
// of an empty directory (data checksums, a password for the postgres role,
// scram-sha-256), start as the postgres OS user listening only on a private
// unix socket, readiness, what the server is doing (for idle detection), a
// checkpoint, and stop (fast, then immediate). It knows nothing of how the
// directory is stored: it never imports the volume, the fs or the cli.
package pgserve

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Config says where and how a server runs.
type Config struct {
	BinDir    string // Postgres binaries; DefaultBinDir when empty
	DataDir   string // the cluster
	SocketDir string // the private unix socket's directory (made 0700, owned by User)
	User      string // the OS user Postgres runs as; "postgres" when empty
	// Password is the postgres role's password (set at initdb, used to
	// connect). Empty with Trust only.
	Password string
	Trust    bool              // trust instead of scram-sha-256 (only when asked)
	Conf     map[string]string // postgresql.conf settings passed as -c KEY=VALUE
	// StartTimeout bounds start until ready (crash recovery included);
	// StopTimeout a fast shutdown before it turns immediate.
	StartTimeout, StopTimeout time.Duration
}

// DefaultBinDir is Debian's Postgres 15.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// socketPort names the socket file (.s.PGSQL.5432); nothing listens on TCP.
const socketPort = 5432

func (c *Config) defaults() {
	if c.BinDir == "" {
		c.BinDir = DefaultBinDir
	}
	if c.User == "" {
		c.User = "postgres"
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 5 * time.Minute
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 30 * time.Second
	}
}

// NewPassword returns a random password for the postgres role.
func NewPassword() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

type account struct{ uid, gid int }

func lookup(name string) (account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return account{}, fmt.Errorf("postgres runs as OS user %q: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return account{uid, gid}, nil
}

// command runs a Postgres binary as the account, in its own process group.
func (c Config) command(ctx context.Context, acct account, name string, args ...string) (*exec.Cmd, error) {
	bin := filepath.Join(c.BinDir, name)
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("postgres binary %s: %w (set the Postgres bin directory)", bin, err)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = "/"
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true,
		Credential: &syscall.Credential{Uid: uint32(acct.uid), Gid: uint32(acct.gid)}}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	return cmd, nil
}

// Initialized reports whether dir holds a cluster (PG_VERSION).
func Initialized(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "PG_VERSION"))
	return err == nil
}

// Init runs initdb in cfg.DataDir, which must be missing or empty: UTF8,
// data checksums, the postgres role with cfg.Password and scram-sha-256
// (or trust when cfg.Trust). The password reaches initdb through a 0600
// file, never argv.
func Init(ctx context.Context, cfg Config) error {
	cfg.defaults()
	if !cfg.Trust && cfg.Password == "" {
		return errors.New("initdb: no password for the postgres role (or ask for trust auth)")
	}
	acct, err := lookup(cfg.User)
	if err != nil {
		return err
	}
	if ents, err := os.ReadDir(cfg.DataDir); err == nil && len(ents) > 0 {
		return fmt.Errorf("initdb: %s is not empty (holds %s) and has no PG_VERSION", cfg.DataDir, ents[0].Name())
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	if err := os.Chown(cfg.DataDir, acct.uid, acct.gid); err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	args := []string{"-D", cfg.DataDir, "-U", "postgres", "--encoding=UTF8", "--locale=C", "--data-checksums"}
	if cfg.Trust {
		args = append(args, "--auth=trust")
	} else {
		pw, err := os.CreateTemp("", "neonfs-pw-")
		if err != nil {
			return fmt.Errorf("initdb: %w", err)
		}
		defer os.Remove(pw.Name())
		_, err = pw.WriteString(cfg.Password + "\n")
		err = errors.Join(err, pw.Chown(acct.uid, acct.gid), pw.Close())
		if err != nil {
			return fmt.Errorf("initdb: password file: %w", err)
		}
		args = append(args, "--auth=scram-sha-256", "--pwfile="+pw.Name())
	}
	cmd, err := cfg.command(ctx, acct, "initdb", args...)
	if err != nil {
		return err
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb %s: %v: %s", cfg.DataDir, err, lastLines(out, 5))
	}
	return nil
}

// Server is a running postmaster.
type Server struct {
	cfg  Config
	cmd  *exec.Cmd
	log  *tailBuffer
	done chan struct{} // closed when the postmaster exited
	err  error         // its exit, once done
}

// Start starts Postgres on cfg.DataDir (a cluster: see Init) and returns
// once it accepts connections, or an error naming why it could not (with
// the end of its log). A stale postmaster.pid of a crashed server is fine:
// Postgres checks the pid itself and runs crash recovery.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	cfg.defaults()
	acct, err := lookup(cfg.User)
	if err != nil {
		return nil, err
	}
	if !Initialized(cfg.DataDir) {
		return nil, fmt.Errorf("start postgres: %s holds no cluster (no PG_VERSION)", cfg.DataDir)
	}
	// The parents must let the postgres user through; the socket's own
	// directory is private to it.
	if err := os.MkdirAll(filepath.Dir(cfg.SocketDir), 0o755); err != nil {
		return nil, fmt.Errorf("start postgres: socket dir: %w", err)
	}
	if err := os.Mkdir(cfg.SocketDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("start postgres: socket dir: %w", err)
	}
	if err := os.Chown(cfg.SocketDir, acct.uid, acct.gid); err != nil {
		return nil, fmt.Errorf("start postgres: socket dir: %w", err)
	}
	args := []string{"-D", cfg.DataDir, "-p", strconv.Itoa(socketPort),
		"-c", "listen_addresses=", "-c", "unix_socket_directories=" + cfg.SocketDir}
	conf := maps.Clone(cfg.Conf)
	if conf == nil {
		conf = map[string]string{}
	}
	// Crash recovery (every start of a forked branch, and after a kill)
	// first fsyncs every file of the cluster, one FUSE round trip and
	// commit wait each: 2.5 s of a branch's 3.3 s start at pgbench scale
	// 10. syncfs writes back what the kernel holds in one call instead;
	// on neonfs that is enough, because the log is one ordered stream: the
	// next fsync (the end-of-recovery checkpoint's) makes everything
	// written before it durable too.
	if _, set := conf["recovery_init_sync_method"]; !set {
		conf["recovery_init_sync_method"] = "syncfs"
	}
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+conf[k])
	}
	cmd, err := cfg.command(context.Background(), acct, "postgres", args...)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, cmd: cmd, log: &tailBuffer{max: 16 << 10}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres on %s: %w", cfg.DataDir, err)
	}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	if err := s.waitReady(ctx); err != nil {
		s.Stop(context.Background())
		return nil, err
	}
	return s, nil
}

// readyPoll is how often waitReady reads postmaster.pid.
const readyPoll = 5 * time.Millisecond

// waitReady returns once the postmaster accepts connections: its
// postmaster.pid names this postmaster and says "ready" (what pg_ctl -w
// reads; "standby" for a hot standby), read every readyPoll. Reading the
// small file costs next to nothing, where an authenticated connection per
// attempt costs a backend and a SCRAM exchange (20-35 ms on a busy 2-core
// box, for the one that succeeds) and a coarse pause between attempts
// loses half of itself on average after the server is up.
func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StartTimeout)
	defer cancel()
	pidfile := filepath.Join(s.cfg.DataDir, "postmaster.pid")
	t := time.NewTicker(readyPoll)
	defer t.Stop()
	for {
		status := postmasterStatus(pidfile, s.cmd.Process.Pid)
		if status == "ready" || status == "standby" {
			return nil
		}
		select {
		case <-ctx.Done():
			if status == "" {
				status = "no postmaster.pid of its own"
			}
			return fmt.Errorf("postgres on %s not ready after %v (%s): %s", s.cfg.DataDir, s.cfg.StartTimeout, status, lastLines([]byte(s.log.String()), 5))
		case <-s.done:
			return fmt.Errorf("postgres on %s exited while starting (%v): %s", s.cfg.DataDir, s.err, lastLines([]byte(s.log.String()), 5))
		case <-t.C:
		}
	}
}

// postmasterStatus is the status line (the 8th) of a postmaster.pid written
// by the postmaster pid ("starting", "ready", "stopping", "standby"), or ""
// while there is none of its own: a crashed server's stale file names
// another pid until the new postmaster replaces it.
func postmasterStatus(path string, pid int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 8 || strings.TrimSpace(lines[0]) != strconv.Itoa(pid) {
		return ""
	}
	return strings.TrimSpace(lines[7])
}

// ConnConfig is how to reach the server as the postgres role.
func (s *Server) ConnConfig() *pgx.ConnConfig {
	cc, _ := pgx.ParseConfig("")
	cc.Host = s.cfg.SocketDir
	cc.Port = socketPort
	cc.User = "postgres"
	cc.Password = s.cfg.Password
	cc.Database = "postgres"
	cc.ConnectTimeout = 10 * time.Second
	return cc
}

// Connect opens a connection as the postgres role over the private socket.
func (s *Server) Connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, s.ConnConfig())
}

// Pid is the postmaster's.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Done is closed when the postmaster has exited.
func (s *Server) Done() <-chan struct{} { return s.done }

// Activity is what keeps a server awake.
type Activity struct {
	Busy        int // client backends not idle (idle in transaction counts)
	Idle        int // client backends idle
	WalSenders  int
	Autovacuums int
}

// Active reports whether anything but idle sessions is going on.
func (a Activity) Active() bool { return a.Busy > 0 || a.WalSenders > 0 || a.Autovacuums > 0 }

// ReadActivity reads pg_stat_activity over conn (not counting conn itself).
func ReadActivity(ctx context.Context, conn *pgx.Conn) (Activity, error) {
	var a Activity
	err := conn.QueryRow(ctx, `SELECT
		count(*) FILTER (WHERE backend_type = 'client backend' AND state IS DISTINCT FROM 'idle'),
		count(*) FILTER (WHERE backend_type = 'client backend' AND state = 'idle'),
		count(*) FILTER (WHERE backend_type = 'walsender'),
		count(*) FILTER (WHERE backend_type = 'autovacuum worker')
		FROM pg_stat_activity WHERE pid <> pg_backend_pid()`).Scan(&a.Busy, &a.Idle, &a.WalSenders, &a.Autovacuums)
	if err != nil {
		return a, fmt.Errorf("read pg_stat_activity: %w", err)
	}
	return a, nil
}

// Checkpoint asks the server for a CHECKPOINT: a branch taken right after
// starts without replaying the WAL before it.
func (s *Server) Checkpoint(ctx context.Context) error {
	conn, err := s.Connect(ctx)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// Stop shuts the server down: fast (SIGINT: sessions end, a checkpoint),
// then immediate (SIGQUIT: crash recovery at the next start) after
// StopTimeout, then SIGKILL of the process group. It returns once the
// postmaster is gone.
func (s *Server) Stop(ctx context.Context) error {
	steps := []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGINT, s.cfg.StopTimeout}, {syscall.SIGQUIT, 10 * time.Second}, {syscall.SIGKILL, 10 * time.Second}}
	for _, st := range steps {
		pid := s.cmd.Process.Pid
		if st.sig == syscall.SIGKILL {
			pid = -pid // the whole group: backends too
		}
		syscall.Kill(pid, st.sig)
		select {
		case <-s.done:
			return nil
		case <-ctx.Done():
			syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
			return ctx.Err()
		case <-time.After(st.wait):
		}
	}
	return fmt.Errorf("postgres on %s (pid %d) did not exit after SIGKILL", s.cfg.DataDir, s.cmd.Process.Pid)
}

// Log returns the end of the server's output.
func (s *Server) Log() string { return s.log.String() }

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if over := b.buf.Len() - b.max; over > 0 {
		b.buf.Next(over)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
