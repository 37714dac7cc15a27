package tests

// End-to-end tests of branches and time travel, driven through the neonfs
// command line exactly as a person would: `neonfs branch ...` against a
// volume whose daemon is running (the commands go over DIR/control.sock) or
// not (the command opens the volume itself), `neonfs mount --branch` handed
// to the running daemon, and stock Postgres started on a branch.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// ---- the CLI's JSON, as a user's script would read it ---------------------

type branchInfo struct {
	ID           uint32     `json:"id"`
	Name         string     `json:"name"`
	Parent       string     `json:"parent"`
	ParentID     uint32     `json:"parent_id"`
	ForkLSN      uint64     `json:"fork_lsn"`
	ForkTime     *time.Time `json:"fork_time"`
	Created      time.Time  `json:"created"`
	Depth        int        `json:"depth"`
	LogicalBytes int64      `json:"logical_bytes"`
	UniqueBytes  int64      `json:"unique_bytes"`
	Mounted      []string   `json:"mounted"`
}

type replaceResult struct {
	Branch branchInfo `json:"branch"`
	Old    string     `json:"old"`
}

type branchDiff struct {
	A            string     `json:"a"`
	B            string     `json:"b"`
	Files        []fileDiff `json:"files"`
	BlocksDiffer int64      `json:"blocks_differ"`
	KeysChecked  int        `json:"keys_checked"`
}

type fileDiff struct {
	Path   string `json:"path"`
	From   string `json:"from"`
	Change string `json:"change"`
	Blocks int64  `json:"blocks"`
	SizeA  int64  `json:"size_a"`
	SizeB  int64  `json:"size_b"`
}

type volumeStatus struct {
	CommittedLSN uint64   `json:"committed_lsn"`
	LastLogIndex uint64   `json:"last_log_index"`
	ObjectBytes  int64    `json:"object_bytes"`
	Objects      int      `json:"objects"`
	LayerBytes   int64    `json:"layer_bytes"`
	Mounted      []string `json:"mounted"`
}

// oldNameRe is the name a reset or restore keeps the previous state under.
func oldNameRe(name string) *regexp.Regexp {
	return regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `_old_\d{8}T\d{6}Z$`)
}

// ---- running the CLI -----------------------------------------------------

// volumeCLI runs neonfs commands against one volume. --data goes last, after
// the command's arguments, as people write it.
type volumeCLI struct {
	bin  string
	data string
}

func cliFor(t *testing.T, n *neonfsTarget) volumeCLI {
	return volumeCLI{bin: neonfsBinary(t), data: n.data}
}

func (c volumeCLI) run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	args = append(slices.Clone(args), "--data", c.data)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("neonfs %s hung for 2m; output:\n%s%s", strings.Join(args, " "), o.String(), e.String())
	}
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("neonfs %s: %v", strings.Join(args, " "), err)
	}
	if s := o.String() + e.String(); strings.Contains(s, "panic:") || strings.Contains(s, "goroutine ") {
		t.Fatalf("neonfs %s panicked:\n%s", strings.Join(args, " "), s)
	}
	return code, o.String(), e.String()
}

// ok runs a command that must succeed and returns its stdout.
func (c volumeCLI) ok(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := c.run(t, args...)
	if code != 0 {
		t.Fatalf("neonfs %s --data %s: exit %d\n%s%s", strings.Join(args, " "), c.data, code, out, errOut)
	}
	return out
}

// json runs a command with --json that must succeed and decodes its stdout.
func (c volumeCLI) json(t *testing.T, v any, args ...string) {
	t.Helper()
	out := c.ok(t, append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("neonfs %s --json: %v; stdout:\n%s", strings.Join(args, " "), err, out)
	}
}

// refused runs a command that must be refused: exit 1 and one line on
// stderr starting "neonfs: " that contains want. It returns that line.
func (c volumeCLI) refused(t *testing.T, want string, args ...string) string {
	t.Helper()
	code, out, errOut := c.run(t, args...)
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	last := lines[len(lines)-1]
	if code != 1 || !strings.HasPrefix(last, "neonfs: ") || !strings.Contains(last, want) {
		t.Fatalf("neonfs %s: exit %d, stderr %q; want exit 1 and a \"neonfs: \" line containing %q (stdout %q)",
			strings.Join(args, " "), code, errOut, want, out)
	}
	return last
}

func (c volumeCLI) status(t *testing.T) volumeStatus {
	t.Helper()
	var st volumeStatus
	c.json(t, &st, "status")
	return st
}

func (c volumeCLI) list(t *testing.T) []branchInfo {
	t.Helper()
	var l []branchInfo
	c.json(t, &l, "branch", "list")
	return l
}

func (c volumeCLI) create(t *testing.T, name string, flags ...string) branchInfo {
	t.Helper()
	var b branchInfo
	c.json(t, &b, append([]string{"branch", "create", name}, flags...)...)
	if b.Name != name || b.ID == 0 {
		t.Fatalf("branch create %s answered %+v", name, b)
	}
	return b
}

func findBranch(list []branchInfo, name string) (branchInfo, bool) {
	for _, b := range list {
		if b.Name == name {
			return b, true
		}
	}
	return branchInfo{}, false
}

func branchNames(list []branchInfo) []string {
	var names []string
	for _, b := range list {
		names = append(names, b.Name)
	}
	return names
}

// withoutMounts drops what only says where branches are mounted.
func withoutMounts(list []branchInfo) []branchInfo {
	out := slices.Clone(list)
	for i := range out {
		out[i].Mounted = nil
	}
	return out
}

// mountBranch hands `neonfs mount --branch name [--at at]` to n's running
// daemon and returns the mountpoint, a directory beside n's own, so the
// target's directory cleanup (which runs after the daemon is stopped) covers
// it. Its cleanup unmounts it if the test did not.
func mountBranch(t *testing.T, n *neonfsTarget, c volumeCLI, name, at string) string {
	t.Helper()
	mnt, err := os.MkdirTemp(filepath.Dir(n.mnt), "branch-"+nameSanitizer.ReplaceAllString(name, "_")+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"mount", "--branch", name}
	if at != "" {
		args = append(args, "--at", at)
	}
	out := c.ok(t, append(args, mnt)...)
	if !isMounted(mnt) {
		t.Fatalf("neonfs %s %s returned 0 (%q) but %s is not mounted", strings.Join(args, " "), mnt, out, mnt)
	}
	if !strings.Contains(out, "served by the daemon") {
		t.Errorf("neonfs mount --branch %s with a daemon running: want it served by the daemon, got %q", name, out)
	}
	t.Cleanup(func() {
		if !isMounted(mnt) {
			return
		}
		c.run(t, "unmount", mnt)
		if isMounted(mnt) {
			if err := forceUnmount(mnt); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return mnt
}

// unmountBranch stops serving a mountpoint that is not the daemon's last.
func unmountBranch(t *testing.T, c volumeCLI, mnt string) {
	t.Helper()
	c.ok(t, "unmount", mnt)
	if isMounted(mnt) {
		t.Fatalf("neonfs unmount %s returned 0 but it is still mounted", mnt)
	}
}

// waitDaemonExit waits for n's daemon to end by itself (its last mount
// gone) and checks it exited 0.
func waitDaemonExit(t *testing.T, n *neonfsTarget) {
	t.Helper()
	select {
	case <-n.done:
	case <-time.After(n.stopTimeout):
		t.Fatalf("neonfs daemon still running %v after its last mount went away", n.stopTimeout)
	}
	if n.waitErr != nil {
		t.Fatalf("neonfs daemon exited with %v after its last mount went away; log tail:\n%s", n.waitErr, tailFile(n.logPath, 4<<10))
	}
	if isMounted(n.mnt) {
		t.Fatalf("neonfs daemon exited but %s is still mounted", n.mnt)
	}
}

// newBranchTarget is a neonfs volume with main mounted, for the branch
// tests (which test neonfs itself, so never run on the native target).
func newBranchTarget(t *testing.T) (*neonfsTarget, volumeCLI) {
	t.Helper()
	requireE2E(t)
	if targetKind() != "neonfs" {
		t.Skip("branches are a neonfs feature")
	}
	n := newNeonfsTarget(t)
	return n, cliFor(t, n)
}

// postgresOn is a Postgres for the data directory dir/pgdata, which exists
// already (on a branch) or is created by initPostgres. It gets its own port, socket directory
// and log. Its cleanup stops the server; create it after the mount it runs
// on, so that the cleanup runs before the unmount.
func postgresOn(t *testing.T, dir string) *Postgres {
	t.Helper()
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	p := &Postgres{
		BinDir: pgBinDir(),
		Data:   filepath.Join(dir, "pgdata"),
		RunDir: testDir(t, "pgrun"),
		Port:   freePort(t),
		uid:    uid,
		gid:    gid,
	}
	if err := os.Chown(p.RunDir, uid, gid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cleanup(t) })
	return p
}

// ---- files ---------------------------------------------------------------

// syncDir fsyncs a directory: on neonfs that commits its entries.
func syncDir(t *testing.T, dir string) {
	t.Helper()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", dir, err)
	}
}

// putFile writes a whole file and fsyncs it and its directory.
func putFile(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	syncDir(t, filepath.Dir(path))
}

func removeSynced(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	syncDir(t, filepath.Dir(path))
}

func wantFile(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("want %s to hold %q: %v", path, want, err)
	}
	if string(got) != want {
		t.Fatalf("%s holds %q, want %q", path, got, want)
	}
}

func wantNoFile(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s: want it absent, got err=%v", path, err)
	}
}

// randomBytes is n incompressible bytes from seed.
func randomBytes(n int, seed uint64) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	b := make([]byte, n)
	r.Read(b)
	return b
}

// waitFor polls cond until it holds; it fails t after timeout. It waits for
// events (rows committed, ids acknowledged), never to measure time.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s after %v", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---- 1. a branch of Postgres under load ------------------------------------

// timedLedger inserts increasing ids, one autocommit transaction each, and
// remembers when each INSERT was sent and when its COMMIT was acknowledged,
// so that a branch can be checked against the moment it was taken.
type timedLedger struct {
	mu   sync.Mutex
	recs []ledgerRec
	err  error // the error that stopped it, unless it was cancelled
}

type ledgerRec struct {
	id           int64
	began, acked time.Time // acked is zero unless the COMMIT returned
}

func (l *timedLedger) run(ctx context.Context, conn *pgx.Conn) {
	for id := int64(1); ctx.Err() == nil; id++ {
		rec := ledgerRec{id: id, began: time.Now()}
		_, err := conn.Exec(ctx, "INSERT INTO ledger (id) VALUES ($1)", id)
		if err == nil {
			rec.acked = time.Now()
		}
		l.mu.Lock()
		l.recs = append(l.recs, rec)
		if err != nil && ctx.Err() == nil {
			l.err = err
		}
		l.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (l *timedLedger) count(pred func(ledgerRec) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if pred(r) {
			n++
		}
	}
	return n
}

// ledgerIDs reads the ids in pg's ledger table.
func ledgerIDs(t *testing.T, pg *Postgres) map[int64]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.ConnString())
	if err != nil {
		t.Fatalf("connecting to read the ledger: %v", err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT id FROM ledger")
	if err != nil {
		t.Fatalf("reading the ledger: %v", err)
	}
	ids := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("reading the ledger: %v", err)
	}
	return ids
}

// TestBranchUnderLoad branches a Postgres database while pgbench and a
// ledger writer run on it, then starts a second Postgres on the branch: it
// must come up by crash recovery with no postmaster.pid to trip over, pass
// pg_amcheck, keep the pgbench balances consistent, hold every ledger id
// acknowledged before the branch was taken and none sent after, and be
// isolated from main in both directions.
func TestBranchUnderLoad(t *testing.T) {
	n, c := newBranchTarget(t)
	requirePostgres(t)
	total := time.Now()
	pg := initPostgres(t, n.Dir())
	pg.Start(t)
	pg.Psql(t, "CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now()); CREATE TABLE iso (side text NOT NULL)")
	pg.Pgbench(t, "-i", "-s", "5", "-q")

	benchCtx, benchCancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer benchCancel()
	bench := pg.command(benchCtx, "pgbench", "-n", "-c", "4", "-j", "2", "-T", "25")
	var benchOut bytes.Buffer
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatalf("starting pgbench: %v", err)
	}
	history := func() int {
		v, err := strconv.Atoi(pg.Psql(t, "SELECT count(*) FROM pgbench_history"))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	waitFor(t, 2*time.Minute, "pgbench to commit transactions", func() bool { return history() > 0 })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.ConnString())
	if err != nil {
		t.Fatalf("ledger writer: %v", err)
	}
	defer conn.Close(context.Background())
	led := &timedLedger{}
	ledDone := make(chan struct{})
	go func() {
		defer close(ledDone)
		led.run(ctx, conn)
	}()
	acked := func(r ledgerRec) bool { return !r.acked.IsZero() }
	waitFor(t, 2*time.Minute, "200 acknowledged ledger ids", func() bool { return led.count(acked) >= 200 })

	historyBefore := history()
	createStart := time.Now()
	info := c.create(t, "b1")
	createEnd := time.Now()
	t.Logf("branch create b1 under load: fork LSN %d, answered in %v", info.ForkLSN, createEnd.Sub(createStart).Round(time.Millisecond))
	waitFor(t, 2*time.Minute, "200 ledger ids sent after the branch was taken", func() bool {
		return led.count(func(r ledgerRec) bool { return r.began.After(createEnd) }) >= 200
	})
	cancel()
	<-ledDone
	if led.err != nil {
		t.Fatalf("ledger writer failed on main: %v", led.err)
	}
	if h := history(); h > historyBefore {
		t.Logf("pgbench committed %d transactions across the branch creation", h-historyBefore)
	} else {
		t.Logf("warning: pgbench committed nothing between just before and after branch create")
	}

	mnt := mountBranch(t, n, c, "b1", "")
	if _, err := os.Stat(filepath.Join(mnt, "pgdata", "PG_VERSION")); err != nil {
		t.Fatalf("the branch has no Postgres data directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "pgdata", "postmaster.pid")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("branch of a running Postgres: want no postmaster.pid, got err=%v", err)
	}
	if _, err := os.Stat(filepath.Join(n.Dir(), "pgdata", "postmaster.pid")); err != nil {
		t.Errorf("main lost its live postmaster.pid to the branch: %v", err)
	}
	pgb := postgresOn(t, mnt)
	pgb.Start(t)
	if log := tailFile(pgb.logPath(), 64<<10); !strings.Contains(log, "automatic recovery in progress") {
		t.Errorf("Postgres on the branch did not report crash recovery; log:\n%s", log)
	}
	pgb.Amcheck(t)
	pgb.CheckPgbenchInvariants(t)

	ids := ledgerIDs(t, pgb)
	var missing, leaked []int64
	ackedBefore, sentAfter := 0, 0
	for _, r := range led.recs {
		if !r.acked.IsZero() && r.acked.Before(createStart) {
			ackedBefore++
			if !ids[r.id] {
				missing = append(missing, r.id)
			}
		}
		if r.began.After(createEnd) {
			sentAfter++
			if ids[r.id] {
				leaked = append(leaked, r.id)
			}
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of the %d ledger ids acknowledged before branch create are missing on the branch, e.g. %v", len(missing), ackedBefore, missing[:min(len(missing), 20)])
	}
	if len(leaked) > 0 {
		t.Errorf("%d of the %d ledger ids sent after branch create returned are on the branch, e.g. %v", len(leaked), sentAfter, leaked[:min(len(leaked), 20)])
	}
	t.Logf("ledger: %d ids on the branch; all %d acknowledged before create present, none of %d sent after create returned",
		len(ids), ackedBefore, sentAfter)

	pgb.Psql(t, "INSERT INTO iso VALUES ('branch')")
	pg.Psql(t, "INSERT INTO iso VALUES ('main')")
	if got := pgb.Psql(t, "SELECT string_agg(side, ',' ORDER BY side) FROM iso"); got != "branch" {
		t.Errorf("iso on the branch = %q, want only the branch's row", got)
	}
	if got := pg.Psql(t, "SELECT string_agg(side, ',' ORDER BY side) FROM iso"); got != "main" {
		t.Errorf("iso on main = %q, want only main's row", got)
	}

	pgb.Stop(t)
	unmountBranch(t, c, mnt)

	if err := waitCmd(bench, 3*time.Minute); err != nil {
		t.Fatalf("pgbench on main failed while the branch was taken and used: %v\n%s", err, benchOut.String())
	}
	t.Logf("pgbench on main during the test:%s", pgbenchSummary(benchOut.String()))
	pg.CheckPgbenchInvariants(t)
	pg.Stop(t)
	n.Stop(t)
	t.Logf("total %v", time.Since(total).Round(time.Millisecond))
}

// ---- 2. a branch of the past ---------------------------------------------

// TestBranchAtPastTime drops a table, then branches main as it was before
// the drop (by RFC3339 time) and finds the table on the branch. Points
// beyond the retention window or in the future are refused.
func TestBranchAtPastTime(t *testing.T) {
	n, c := newBranchTarget(t)
	requirePostgres(t)
	total := time.Now()
	pg := initPostgres(t, n.Dir())
	pg.Start(t)
	pg.Psql(t, "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g")
	time.Sleep(1500 * time.Millisecond)
	at := time.Now().UTC()
	time.Sleep(1500 * time.Millisecond)
	pg.Psql(t, "DROP TABLE t")
	pg.Psql(t, "CHECKPOINT")

	info := c.create(t, "past", "--at", at.Format(time.RFC3339Nano))
	if info.Parent != "main" || info.ForkTime == nil || info.ForkTime.After(at) {
		t.Errorf("branch create past --at %s: parent %q, fork time %v; want main, at or before %s",
			at.Format(time.RFC3339Nano), info.Parent, info.ForkTime, at.Format(time.RFC3339Nano))
	}
	mnt := mountBranch(t, n, c, "past", "")
	if _, err := os.Stat(filepath.Join(mnt, "pgdata", "postmaster.pid")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("branch of a running Postgres: want no postmaster.pid, got err=%v", err)
	}
	pgp := postgresOn(t, mnt)
	pgp.Start(t)
	if got := pgp.Psql(t, "SELECT count(*) || ' ' || min(v) || ' ' || max(id) FROM t"); got != "1000 row 1 1000" {
		t.Errorf("table t on the branch of the past: %q, want its 1000 rows", got)
	}
	if got := pg.Psql(t, "SELECT to_regclass('t') IS NULL"); got != "t" {
		t.Errorf("table t is back on main (to_regclass IS NULL = %q): the branch leaked into main", got)
	}
	pgp.Amcheck(t)
	pgp.Stop(t)
	unmountBranch(t, c, mnt)

	c.refused(t, "older than the retention window", "branch", "create", "ancient", "--at", "-8d")
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	c.refused(t, "in the future", "branch", "create", "future", "--at", future)
	if names := branchNames(c.list(t)); !slices.Equal(names, []string{"main", "past"}) {
		t.Errorf("after the refused creates, branches are %v; want [main past]", names)
	}
	pg.Stop(t)
	n.Stop(t)
	t.Logf("total %v", time.Since(total).Round(time.Millisecond))
}

// ---- 3. the branch commands on plain files ---------------------------------

// TestBranchTreeCLI works the branch commands on plain files: a three-level
// tree and what each level sees, the delete rules, reset and restore keeping
// the old state, read-only time travel, diff, and every command answering
// the same whether a daemon holds the volume or the command opens it itself.
func TestBranchTreeCLI(t *testing.T) {
	n, c := newBranchTarget(t)
	total := time.Now()
	mmain := n.Dir()
	p := filepath.Join

	// A tree main -> a -> b: each sees its ancestors at its fork, not later.
	putFile(t, p(mmain, "base"), []byte("main before a"))
	infoA := c.create(t, "a")
	putFile(t, p(mmain, "main-after-a"), []byte("later on main"))
	mA := mountBranch(t, n, c, "a", "")
	wantFile(t, p(mA, "base"), "main before a")
	wantNoFile(t, p(mA, "main-after-a"))
	putFile(t, p(mA, "on-a"), []byte("a before b"))
	infoB := c.create(t, "b", "--parent", "a")
	putFile(t, p(mA, "a-after-b"), []byte("later on a"))
	mB := mountBranch(t, n, c, "b", "")
	wantFile(t, p(mB, "base"), "main before a")
	wantFile(t, p(mB, "on-a"), "a before b")
	wantNoFile(t, p(mB, "main-after-a"))
	wantNoFile(t, p(mB, "a-after-b"))
	putFile(t, p(mB, "on-b"), []byte("b only"))
	wantNoFile(t, p(mmain, "on-a"))
	wantNoFile(t, p(mmain, "on-b"))
	wantNoFile(t, p(mA, "on-b"))

	list := c.list(t)
	if got := branchNames(list); !slices.Equal(got, []string{"main", "a", "b"}) {
		t.Fatalf("branch list: %v, want [main a b] in tree order", got)
	}
	for i, want := range []struct {
		parent  string
		depth   int
		mounted string
	}{{"", 0, mmain}, {"main", 1, mA}, {"a", 2, mB}} {
		b := list[i]
		if b.Parent != want.parent || b.Depth != want.depth || !slices.Equal(b.Mounted, []string{want.mounted}) {
			t.Errorf("branch list: %s has parent %q depth %d mounted %v; want %q, %d, [%s]", b.Name, b.Parent, b.Depth, b.Mounted, want.parent, want.depth, want.mounted)
		}
	}
	// What create answered is what list says of the branch then.
	for _, created := range []branchInfo{infoA, infoB} {
		listed, _ := findBranch(list, created.Name)
		a, b := created, listed
		a.Mounted, b.Mounted = nil, nil
		a.LogicalBytes, b.LogicalBytes, a.UniqueBytes, b.UniqueBytes = 0, 0, 0, 0 // written since
		if !reflect.DeepEqual(a, b) {
			t.Errorf("branch create %s answered %+v, but branch list says %+v", created.Name, a, b)
		}
	}

	// Delete rules.
	c.refused(t, `branch "main" is the root of the volume and cannot be deleted`, "branch", "delete", "main")
	c.refused(t, fmt.Sprintf(`branch "b" is mounted (%s): unmount it first`, mB), "branch", "delete", "b")
	c.refused(t, `branch "a" has child branches (b): delete them first`, "branch", "delete", "a")

	// Read-only time travel by LSN.
	putFile(t, p(mmain, "ver"), []byte("v1"))
	lsnV1 := c.status(t).CommittedLSN
	putFile(t, p(mmain, "ver"), []byte("v2"))
	mT := mountBranch(t, n, c, "main", strconv.FormatUint(lsnV1, 10))
	wantFile(t, p(mT, "ver"), "v1")
	wantFile(t, p(mmain, "ver"), "v2")
	for what, err := range map[string]error{
		"overwrite": os.WriteFile(p(mT, "ver"), []byte("v3"), 0o644),
		"create":    os.WriteFile(p(mT, "new"), []byte("x"), 0o644),
		"remove":    os.Remove(p(mT, "base")),
		"mkdir":     os.Mkdir(p(mT, "dir"), 0o755),
	} {
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on a mount --at: got %v, want EROFS", what, err)
		}
	}
	wantFile(t, p(mT, "ver"), "v1")
	if l, _ := findBranch(c.list(t), "main"); !slices.Contains(l.Mounted, mT) {
		t.Errorf("branch list: main mounted at %v, want the time-travel mount %s among them", l.Mounted, mT)
	}
	unmountBranch(t, c, mT)

	// Diff: 3 of 8 blocks rewritten and a new file.
	big := randomBytes(8*8192, 1)
	putFile(t, p(mmain, "big"), big)
	c.create(t, "d")
	f, err := os.OpenFile(p(mmain, "big"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randomBytes(3*8192, 2), 2*8192); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	putFile(t, p(mmain, "fresh"), []byte("added after d"))
	var diff branchDiff
	c.json(t, &diff, "branch", "diff", "d", "main")
	wantFiles := []fileDiff{
		{Path: "/big", Change: "modified", Blocks: 3, SizeA: 8 * 8192, SizeB: 8 * 8192},
		{Path: "/fresh", Change: "added", Blocks: 1, SizeB: int64(len("added after d"))},
	}
	if !reflect.DeepEqual(diff.Files, wantFiles) || diff.BlocksDiffer != 4 || diff.A != "d" || diff.B != "main" {
		t.Errorf("branch diff d main = %+v\nwant files %+v, 4 blocks", diff, wantFiles)
	}

	// Twins for reset and restore, one of each pair for the daemon and one
	// for the command that opens the volume itself: r1/r2 get a file of
	// their own, then main moves on; v1/v2 lose a file after lsnV[i].
	var lsnV [3]uint64
	for i := 1; i <= 2; i++ {
		r, v := fmt.Sprint("r", i), fmt.Sprint("v", i)
		c.create(t, r)
		c.create(t, v)
		mr := mountBranch(t, n, c, r, "")
		putFile(t, p(mr, "only-r"), []byte("state of "+r))
		unmountBranch(t, c, mr)
		mv := mountBranch(t, n, c, v, "")
		putFile(t, p(mv, "victim"), []byte("precious"))
		lsnV[i] = c.status(t).CommittedLSN
		removeSynced(t, p(mv, "victim"))
		unmountBranch(t, c, mv)
	}
	putFile(t, p(mmain, "after-r"), []byte("main moved on"))

	// The same commands with the daemon (1) and without (2).
	type answers struct {
		list        []branchInfo
		diff        branchDiff
		refusals    []string
		created     branchInfo
		reset       replaceResult
		resetDrop   replaceResult
		restored    replaceResult
		branchCount [2]int // before and after reset --no-preserve
	}
	ask := func(i int) answers {
		var a answers
		a.list = withoutMounts(c.list(t))
		c.json(t, &a.diff, "branch", "diff", "d", "main")
		a.refusals = []string{
			c.refused(t, "cannot be deleted", "branch", "delete", "main"),
			c.refused(t, "has child branches", "branch", "delete", "a"),
			c.refused(t, "no branch", "branch", "delete", "nosuch"),
			c.refused(t, "already exists", "branch", "create", "a"),
		}
		x := fmt.Sprint("x", i)
		a.created = c.create(t, x, "--parent", "d")
		// The fork point of a branch is committed history of that branch.
		at := strconv.FormatUint(a.created.ForkLSN, 10)
		if code, _, errOut := c.run(t, "branch", "restore", x, "--at", at, "--no-preserve"); code != 0 {
			t.Errorf("BUG: branch restore %s --at %s (its own fork LSN): exit %d: %s", x, at, code, strings.TrimSpace(errOut))
		}
		r, v := fmt.Sprint("r", i), fmt.Sprint("v", i)
		c.json(t, &a.reset, "branch", "reset", r)
		a.branchCount[0] = len(c.list(t))
		c.json(t, &a.resetDrop, "branch", "reset", r, "--no-preserve")
		a.branchCount[1] = len(c.list(t))
		c.json(t, &a.restored, "branch", "restore", v, "--at", strconv.FormatUint(lsnV[i], 10))
		c.ok(t, "branch", "delete", x)
		if _, ok := findBranch(c.list(t), x); ok {
			t.Errorf("branch delete %s: still listed", x)
		}
		// Per-mode checks of the answers.
		if !oldNameRe(r).MatchString(a.reset.Old) || a.reset.Branch.Name != r || a.reset.Branch.Parent != "main" {
			t.Errorf("branch reset %s answered %+v; want the branch on main, old state kept as %s_old_<time>", r, a.reset, r)
		}
		if a.resetDrop.Old != "" || a.branchCount[1] != a.branchCount[0] {
			t.Errorf("branch reset %s --no-preserve: old %q, branches %d -> %d; want no old state kept", r, a.resetDrop.Old, a.branchCount[0], a.branchCount[1])
		}
		if !oldNameRe(v).MatchString(a.restored.Old) || a.restored.Branch.ForkLSN != lsnV[i] || a.restored.Branch.Parent != a.restored.Old {
			t.Errorf("branch restore %s --at %d answered %+v; want fork LSN %d on the kept old state %s_old_<time>", v, lsnV[i], a.restored, lsnV[i], v)
		}
		return a
	}
	withDaemon := ask(1)
	listD := withoutMounts(c.list(t))

	// Stop serving everything; the last unmount ends the daemon.
	unmountBranch(t, c, mA)
	unmountBranch(t, c, mB)
	if code, out, errOut := c.run(t, "unmount", mmain); code != 0 {
		t.Errorf("BUG: neonfs unmount of the daemon's last mountpoint: exit %d, %s%s (want exit 0: it did stop serving it)", code, out, errOut)
	}
	waitDaemonExit(t, n)

	without := ask(2)
	if got := without.list; !reflect.DeepEqual(got, listD) {
		t.Errorf("branch list --json differs without the daemon:\nwith:    %+v\nwithout: %+v", listD, got)
	}
	// keys_checked says how much work the diff did, which depends on how
	// the history is laid out (memtable or layers), not what it found.
	t.Logf("branch diff d main checked %d keys with the daemon, %d without", withDaemon.diff.KeysChecked, without.diff.KeysChecked)
	withDaemon.diff.KeysChecked, without.diff.KeysChecked = 0, 0
	if !reflect.DeepEqual(without.diff, withDaemon.diff) {
		t.Errorf("branch diff --json differs without the daemon:\nwith:    %+v\nwithout: %+v", withDaemon.diff, without.diff)
	}
	if !slices.Equal(without.refusals, withDaemon.refusals) {
		t.Errorf("refusals differ without the daemon:\nwith:    %q\nwithout: %q", withDaemon.refusals, without.refusals)
	}
	// Answers about different (twin) branches agree but for names, ids,
	// times and LSNs.
	same := func(what string, a, b branchInfo) {
		t.Helper()
		for _, x := range []*branchInfo{&a, &b} {
			x.ID, x.Name, x.Created, x.ForkLSN, x.ForkTime, x.Mounted = 0, "", time.Time{}, 0, nil, nil
			if strings.Contains(x.Parent, "_old_") {
				x.Parent, x.ParentID = "<old>", 0
			}
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s answers differ:\nwith the daemon: %+v\nwithout:         %+v", what, a, b)
		}
	}
	same("branch create", withDaemon.created, without.created)
	same("branch reset", withDaemon.reset.Branch, without.reset.Branch)
	same("branch reset --no-preserve", withDaemon.resetDrop.Branch, without.resetDrop.Branch)
	same("branch restore", withDaemon.restored.Branch, without.restored.Branch)
	listN := withoutMounts(c.list(t))

	// With a daemon again: the same tree, and the kept states hold what they
	// should.
	n.Restart(t)
	if got := withoutMounts(c.list(t)); !reflect.DeepEqual(got, listN) {
		t.Errorf("branch list --json differs with the daemon back:\nwithout: %+v\nwith:    %+v", listN, got)
	}
	for i, a := range []answers{withDaemon, without} {
		r, v := fmt.Sprint("r", i+1), fmt.Sprint("v", i+1)
		m := mountBranch(t, n, c, a.reset.Old, "")
		wantFile(t, p(m, "only-r"), "state of "+r)
		wantNoFile(t, p(m, "after-r"))
		unmountBranch(t, c, m)
		m = mountBranch(t, n, c, r, "")
		wantNoFile(t, p(m, "only-r"))
		wantFile(t, p(m, "after-r"), "main moved on")
		unmountBranch(t, c, m)
		m = mountBranch(t, n, c, v, "")
		wantFile(t, p(m, "victim"), "precious")
		unmountBranch(t, c, m)
		m = mountBranch(t, n, c, a.restored.Old, "")
		wantNoFile(t, p(m, "victim"))
		unmountBranch(t, c, m)
	}
	n.Stop(t)
	t.Logf("total %v", time.Since(total).Round(time.Millisecond))
}

// ---- 4. creating a branch copies nothing -----------------------------------

// objectFiles lists the object store's files and their sizes.
func objectFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out[strings.TrimPrefix(path, dir)] = fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestBranchCreateCostsNoData creates a branch of a volume holding about
// 10 MB and then 100 MB of file data, with no daemon running (so nothing
// else writes the log), and counts the work: exactly one log entry, no new
// object and no new byte in the object store, at both sizes. Opening the
// volume appends entries of its own (a leader's no-op and a barrier), so
// that cost is measured with two status calls and taken off.
func TestBranchCreateCostsNoData(t *testing.T) {
	n, c := newBranchTarget(t)
	total := time.Now()
	var written int64
	var entries []uint64
	for i, size := range []int64{10 << 20, 90 << 20} {
		if i > 0 {
			n.Restart(t)
		}
		putFile(t, filepath.Join(n.Dir(), fmt.Sprint("data", i)), randomBytes(int(size), uint64(i+10)))
		written += size
		n.Stop(t)

		s1 := c.status(t)
		s2 := c.status(t)
		open := s2.LastLogIndex - s1.LastLogIndex
		objs := objectFiles(t, filepath.Join(n.data, "objects"))
		name := fmt.Sprint("cost", i)
		info := c.create(t, name)
		s3 := c.status(t)
		created := s3.LastLogIndex - s2.LastLogIndex - 2*open
		entries = append(entries, created)
		t.Logf("%d MiB of files: status opens cost %d log entries; branch create: log %d -> %d (%d entries of its own), objects %d (%d bytes) -> %d (%d bytes)",
			written>>20, open, s2.LastLogIndex, s3.LastLogIndex, created, s2.Objects, s2.ObjectBytes, s3.Objects, s3.ObjectBytes)

		if s2.ObjectBytes < written {
			t.Fatalf("the object store holds %d bytes, less than the %d written: the test would prove nothing", s2.ObjectBytes, written)
		}
		if created != 1 {
			t.Errorf("%d MiB: branch create appended %d log entries, want exactly 1", written>>20, created)
		}
		if info.ForkLSN != s2.LastLogIndex+open || s3.LastLogIndex != info.ForkLSN+1+open {
			t.Errorf("%d MiB: fork LSN %d between log indexes %d and %d: want the entry right before the create's own", written>>20, info.ForkLSN, s2.LastLogIndex, s3.LastLogIndex)
		}
		if s3.Objects != s2.Objects || s3.ObjectBytes != s2.ObjectBytes || s3.LayerBytes != s2.LayerBytes {
			t.Errorf("%d MiB: branch create changed the object store: %d objects/%d bytes/%d layer bytes -> %d/%d/%d",
				written>>20, s2.Objects, s2.ObjectBytes, s2.LayerBytes, s3.Objects, s3.ObjectBytes, s3.LayerBytes)
		}
		if after := objectFiles(t, filepath.Join(n.data, "objects")); !reflect.DeepEqual(after, objs) {
			t.Errorf("%d MiB: branch create changed the object files: %v -> %v", written>>20, objs, after)
		}
		// create answers without sizes (they cost a scan); the listing has them.
		if listed, ok := findBranch(c.list(t), info.Name); ok {
			info = listed
		}
		if info.LogicalBytes != written || info.UniqueBytes != 0 {
			t.Errorf("%d MiB: the new branch shows %d bytes with %d of its own; want %d shared, 0 of its own", written>>20, info.LogicalBytes, info.UniqueBytes, written)
		}
	}
	if entries[0] != entries[1] {
		t.Errorf("branch create cost %d log entries at 10 MiB and %d at 100 MiB: want the same", entries[0], entries[1])
	}
	t.Logf("total %v", time.Since(total).Round(time.Millisecond))
}
