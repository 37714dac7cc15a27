package tests

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Postgres is a Postgres 15 cluster whose data directory is on a Target.
// Everything runs as the postgres user via runuser. The socket directory and
// the server log live outside the target (in RunDir), so they survive a
// crash of the file system under test.
type Postgres struct {
	BinDir string // Postgres binaries
	Data   string // data directory, <target>/pgdata
	RunDir string // unix socket directory and logs, owned by postgres
	Port   int    // TCP port on 127.0.0.1
	// WALSync is the server's wal_sync_method from the next Start on;
	// Postgres's default (fdatasync) when empty.
	WALSync string

	uid, gid int
	pid      int // postmaster pid while running
}

func pgBinDir() string {
	if d := os.Getenv("NEONFS_PG_BIN"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

// requirePostgres skips t if the Postgres binaries or the postgres user are
// missing.
func requirePostgres(t *testing.T) {
	t.Helper()
	for _, b := range []string{"initdb", "pg_ctl", "postgres", "psql", "pgbench", "pg_amcheck"} {
		if _, err := os.Stat(filepath.Join(pgBinDir(), b)); err != nil {
			t.Skipf("Postgres 15 is not installed (%v); run scripts/deps.sh", err)
		}
	}
	if _, err := user.Lookup("postgres"); err != nil {
		t.Skipf("no postgres user (%v); run scripts/deps.sh", err)
	}
	if _, err := exec.LookPath("runuser"); err != nil {
		t.Skipf("runuser not found: %v", err)
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// initPostgres creates dir/pgdata (owned by postgres, 0700) and runs initdb
// there. Its cleanup stops any server still running (immediate shutdown, then
// SIGKILL of the postmaster and its children); register it after the target
// so that it runs before the target is unmounted.
func initPostgres(t *testing.T, dir string) *Postgres {
	t.Helper()
	requirePostgres(t)
	p := postgresOn(t, dir)
	if err := os.Mkdir(p.Data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p.Data, p.uid, p.gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p.Data, 0o700); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	out, err := p.run(t, 5*time.Minute, "initdb", "-D", p.Data, "-U", "postgres",
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--data-checksums")
	if err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	t.Logf("postgres: initdb in %s took %v", p.Data, time.Since(start).Round(time.Millisecond))
	return p
}

// command builds a command that runs the Postgres binary name as postgres,
// with the libpq environment pointing at this cluster. Cancelling ctx kills
// the whole process group (runuser and what it runs).
func (p *Postgres) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	full := append([]string{"-u", "postgres", "--", filepath.Join(p.BinDir, name)}, args...)
	cmd := exec.CommandContext(ctx, "runuser", full...)
	cmd.Dir = p.RunDir
	cmd.Env = append(os.Environ(),
		"PGHOST="+p.RunDir,
		"PGPORT="+strconv.Itoa(p.Port),
		"PGUSER=postgres",
		"PGDATABASE=postgres",
		"PGCONNECT_TIMEOUT=30",
		"LC_ALL=C",
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// run runs a Postgres binary to completion and returns its combined output.
func (p *Postgres) run(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := p.command(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %v (%v)", name, timeout, err)
	}
	return out.String(), err
}

func (p *Postgres) logPath() string { return filepath.Join(p.RunDir, "postgres.log") }

func (p *Postgres) serverOptions() string {
	walSync := p.WALSync
	if walSync == "" {
		walSync = "fdatasync"
	}
	return strings.Join([]string{
		"-c wal_sync_method=" + walSync,
		"-c port=" + strconv.Itoa(p.Port),
		"-c listen_addresses=127.0.0.1",
		"-c unix_socket_directories=" + p.RunDir,
		"-c shared_buffers=64MB",
		"-c max_connections=40",
		"-c max_wal_size=512MB",
		"-c logging_collector=off",
		"-c log_checkpoints=on",
		"-c fsync=on",
		"-c synchronous_commit=on",
		"-c full_page_writes=on",
	}, " ")
}

// Start starts the server and waits until it accepts connections (which,
// after a crash, includes crash recovery).
func (p *Postgres) Start(t *testing.T) {
	t.Helper()
	start := time.Now()
	out, err := p.run(t, 10*time.Minute, "pg_ctl", "start", "-D", p.Data, "-l", p.logPath(),
		"-w", "-t", "600", "-o", p.serverOptions())
	if err != nil {
		t.Fatalf("pg_ctl start: %v\n%s\nserver log tail:\n%s", err, out, tailFile(p.logPath(), 4<<10))
	}
	pid, err := p.readPostmasterPid()
	if err != nil {
		t.Fatalf("after pg_ctl start: %v", err)
	}
	p.pid = pid
	t.Logf("postgres: started on port %d (postmaster pid %d) in %v", p.Port, pid, time.Since(start).Round(time.Millisecond))
}

func (p *Postgres) readPostmasterPid() (int, error) {
	data, err := os.ReadFile(filepath.Join(p.Data, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid: %q: %v", first, err)
	}
	return pid, nil
}

// Stop shuts the server down cleanly (fast mode: a shutdown checkpoint).
func (p *Postgres) Stop(t *testing.T) {
	t.Helper()
	start := time.Now()
	out, err := p.run(t, 10*time.Minute, "pg_ctl", "stop", "-D", p.Data, "-m", "fast", "-w", "-t", "600")
	if err != nil {
		t.Fatalf("pg_ctl stop: %v\n%s\nserver log tail:\n%s", err, out, tailFile(p.logPath(), 4<<10))
	}
	if err := waitPidsGone([]int{p.pid}, time.Minute); err != nil {
		t.Fatalf("after pg_ctl stop: %v", err)
	}
	p.pid = 0
	t.Logf("postgres: clean stop took %v", time.Since(start).Round(time.Millisecond))
}

// Crash SIGKILLs the postmaster and all its children at once, and waits
// until they are all gone.
func (p *Postgres) Crash(t *testing.T) {
	t.Helper()
	if p.pid == 0 {
		t.Fatal("postgres: Crash while not running")
	}
	start := time.Now()
	if err := killProcessTree(p.pid, 2*time.Minute); err != nil {
		t.Fatalf("postgres: kill -9: %v", err)
	}
	t.Logf("postgres: kill -9 of postmaster %d and children took %v", p.pid, time.Since(start).Round(time.Millisecond))
	p.pid = 0
}

func (p *Postgres) cleanup(t *testing.T) {
	if p.pid != 0 && pidAlive(p.pid) {
		out, err := p.run(t, time.Minute, "pg_ctl", "stop", "-D", p.Data, "-m", "immediate", "-w", "-t", "30")
		if err != nil {
			t.Logf("cleanup: pg_ctl stop -m immediate: %v\n%s", err, out)
		}
	}
	// Whatever is left: the postmaster we know of, the one in
	// postmaster.pid, and their children.
	pids := []int{p.pid}
	if pid, err := p.readPostmasterPid(); err == nil {
		pids = append(pids, pid)
	}
	for _, pid := range pids {
		if pid > 0 && pidAlive(pid) && strings.Contains(procCmdline(pid), "postgres") {
			if err := killProcessTree(pid, time.Minute); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	}
	p.pid = 0
	if t.Failed() {
		t.Logf("postgres server log tail (%s):\n%s", p.logPath(), tailFile(p.logPath(), 6<<10))
	}
}

// Psql runs SQL with psql and returns its unaligned, tuples-only output.
func (p *Postgres) Psql(t *testing.T, sql string) string {
	t.Helper()
	out, err := p.psql(t, sql)
	if err != nil {
		t.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
	return out
}

func (p *Postgres) psql(t *testing.T, sql string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := p.command(ctx, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Pgbench runs pgbench with args and returns its output.
func (p *Postgres) Pgbench(t *testing.T, args ...string) string {
	t.Helper()
	start := time.Now()
	out, err := p.run(t, 15*time.Minute, "pgbench", args...)
	if err != nil {
		t.Fatalf("pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("pgbench %s: %v%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), pgbenchSummary(out))
	return out
}

var tpsRe = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)

// pgbenchSummary extracts the interesting lines of a pgbench run.
func pgbenchSummary(out string) string {
	var b strings.Builder
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "tps = ") || strings.HasPrefix(line, "number of transactions actually processed") ||
			strings.HasPrefix(line, "number of failed transactions") || strings.HasPrefix(line, "latency average") {
			b.WriteString("\n\t" + line)
		}
	}
	return b.String()
}

// parseTPS returns pgbench's reported tps, or -1.
func parseTPS(out string) float64 {
	m := tpsRe.FindStringSubmatch(out)
	if m == nil {
		return -1
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return f
}

// Amcheck runs pg_amcheck on every database and fails t on any corruption.
func (p *Postgres) Amcheck(t *testing.T) {
	t.Helper()
	start := time.Now()
	out, err := p.run(t, 15*time.Minute, "pg_amcheck", "--all", "--heapallindexed", "--install-missing", "--jobs=2")
	// Exit 0 means clean; anything it prints besides the NOTICEs of
	// --install-missing is a report of corruption or an error.
	var report []string
	for _, line := range strings.Split(out, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "NOTICE:") {
			report = append(report, line)
		}
	}
	if err != nil || len(report) > 0 {
		t.Fatalf("pg_amcheck --all --heapallindexed is not clean (%v):\n%s", err, out)
	}
	t.Logf("pg_amcheck --all --heapallindexed: clean in %v", time.Since(start).Round(time.Millisecond))
}

// CheckPgbenchInvariants checks the TPC-B balances: every pgbench
// transaction adds the same delta to one account, teller and branch and logs
// it in history, atomically, so the four sums must agree.
func (p *Postgres) CheckPgbenchInvariants(t *testing.T) {
	t.Helper()
	out := p.Psql(t, `SELECT (SELECT coalesce(sum(abalance),0) FROM pgbench_accounts) || ' ' ||
		(SELECT coalesce(sum(tbalance),0) FROM pgbench_tellers) || ' ' ||
		(SELECT coalesce(sum(bbalance),0) FROM pgbench_branches) || ' ' ||
		(SELECT coalesce(sum(delta),0) FROM pgbench_history) || ' ' ||
		(SELECT count(*) FROM pgbench_history)`)
	f := strings.Fields(out)
	if len(f) != 5 {
		t.Fatalf("pgbench invariants: unexpected output %q", out)
	}
	if f[0] != f[1] || f[1] != f[2] || f[2] != f[3] {
		t.Fatalf("pgbench invariants broken: sum(abalance)=%s sum(tbalance)=%s sum(bbalance)=%s sum(history.delta)=%s", f[0], f[1], f[2], f[3])
	}
	t.Logf("pgbench invariants hold: balance sums all %s over %s history rows", f[0], f[4])
}

// ConnString is a libpq/pgx connection string over TCP.
func (p *Postgres) ConnString() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=30", p.Port)
}
