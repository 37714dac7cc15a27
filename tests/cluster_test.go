package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Three `neonfs serve` processes on this machine form one cluster over TCP
// on loopback (the partition test puts them in network namespaces). Each
// has its own data dir and log; they share one object directory, as nodes
// share a bucket.

type clusterNode struct {
	id     string
	raft   string // HOST:PORT
	cli    volumeCLI
	runDir string
	log    string
	pgPort int
	pgHost string // where its endpoint listens; "" is 127.0.0.1
	serve  *serveDaemon
	wrap   func(*exec.Cmd) *exec.Cmd // runs serve elsewhere (a network namespace); nil: here
}

type testCluster struct {
	nodes   []*clusterNode
	objects string
}

// newCluster initialises node 0; nothing runs yet (join needs node 0
// running).
func newCluster(t *testing.T, hosts []string, initArgs ...string) *testCluster {
	t.Helper()
	return newWrappedCluster(t, hosts, nil, initArgs...)
}

// newWrappedCluster is newCluster with node i's wrap set to wrap(i, cmd)
// (nil: none): init, join and serve, which listen on the node's Raft
// address, run through it.
func newWrappedCluster(t *testing.T, hosts []string, wrap func(i int, cmd *exec.Cmd) *exec.Cmd, initArgs ...string) *testCluster {
	t.Helper()
	requireE2E(t)
	requirePostgres(t)
	if targetKind() != "neonfs" {
		t.Skip("clusters are neonfs's")
	}
	bin := neonfsBinary(t)
	root := testDir(t, "cluster")
	c := &testCluster{objects: filepath.Join(root, "objects")}
	for i, host := range hosts {
		n := &clusterNode{id: fmt.Sprintf("n%d", i+1), raft: fmt.Sprintf("%s:%d", host, freePort(t)),
			cli:    volumeCLI{bin: bin, data: filepath.Join(root, fmt.Sprintf("n%d", i+1))},
			runDir: filepath.Join(root, fmt.Sprintf("run%d", i+1)), log: filepath.Join(root, fmt.Sprintf("n%d.log", i+1)),
			pgPort: freePort(t)}
		if wrap != nil {
			n.wrap = func(cmd *exec.Cmd) *exec.Cmd { return wrap(i, cmd) }
		}
		c.nodes = append(c.nodes, n)
	}
	first := c.nodes[0]
	args := append([]string{"init", "--objects", c.objects, "--node-id", first.id, "--raft-addr", first.raft}, initArgs...)
	first.ok(t, args...)
	return c
}

// ok is n.cli.ok run through n.wrap.
func (n *clusterNode) ok(t *testing.T, args ...string) string {
	t.Helper()
	if n.wrap == nil {
		return n.cli.ok(t, args...)
	}
	args = append(append([]string{}, args...), "--data", n.cli.data)
	cmd := n.wrap(exec.Command(n.cli.bin, args...))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	hung := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	if !hung.Stop() {
		t.Fatalf("neonfs %s (%s) hung for 2m; output:\n%s", strings.Join(args, " "), n.id, out.String())
	}
	if err != nil {
		t.Fatalf("neonfs %s (%s): %v\n%s", strings.Join(args, " "), n.id, err, out.String())
	}
	return out.String()
}

func (c *testCluster) join(t *testing.T, joinArgs ...string) {
	for _, n := range c.nodes[1:] {
		args := append([]string{"join", "--node-id", n.id, "--raft-addr", n.raft, "--peer", c.nodes[0].raft}, joinArgs...)
		n.ok(t, args...)
	}
}

func (n *clusterNode) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(n.cli.bin, "serve", "--data", n.cli.data, "--run-dir", n.runDir, "--cache-mb", "64")
	if n.wrap != nil {
		cmd = n.wrap(cmd)
	}
	n.serve = launchServe(t, cmd, n.runDir, n.log)
	waitFor(t, time.Minute, n.id+"'s daemon to answer", func() bool {
		code, _, _ := n.cli.run(t, "endpoint", "list")
		return code == 0
	})
}

// kill SIGKILLs the daemon and its Postgres at once, and unmounts what
// the dead daemon left. Postgres backends waiting on a FUSE request of the
// dead daemon (writeback, fsync) only die once the connection is aborted,
// as a machine's death would end them.
func (n *clusterNode) kill(t *testing.T) {
	t.Helper()
	root := n.serve.cmd.Process.Pid
	tree := map[int]bool{root: true}
	for changed := true; changed; {
		changed = false
		for _, p := range allProcs() {
			if tree[p.PPID] && !tree[p.PID] {
				tree[p.PID], changed = true, true
			}
		}
	}
	err := killProcessTree(root, 2*time.Second)
	<-n.serve.done
	for _, m := range mountsUnder(n.runDir) {
		forceUnmount(m)
	}
	if err != nil {
		pids := make([]int, 0, len(tree))
		for pid := range tree {
			syscall.Kill(pid, syscall.SIGKILL)
			pids = append(pids, pid)
		}
		if err := waitPidsGone(pids, 30*time.Second); err != nil {
			t.Fatalf("kill %s: %v", n.id, err)
		}
	}
}

type clusterStatus struct {
	Node    string `json:"node"`
	Leader  string `json:"leader"`
	Members []struct {
		ID      string `json:"id"`
		State   string `json:"state"`
		Applied uint64 `json:"applied_index"`
		Lag     uint64 `json:"lag"`
		Error   string `json:"error"`
	} `json:"members"`
	Leases []struct {
		Branch string `json:"branch"`
		Node   string `json:"node"`
	} `json:"leases"`
}

func (n *clusterNode) status(t *testing.T) (clusterStatus, bool) {
	code, out, _ := n.cli.run(t, "cluster", "status", "--json")
	var st clusterStatus
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		return st, false
	}
	return st, true
}

// waitHealthy waits until n sees every node reachable and a leader.
func (c *testCluster) waitHealthy(t *testing.T, n *clusterNode, want int) {
	t.Helper()
	waitFor(t, time.Minute, fmt.Sprintf("%d healthy members seen from %s", want, n.id), func() bool {
		st, ok := n.status(t)
		if !ok || st.Leader == "" || len(st.Members) != want {
			return false
		}
		for _, m := range st.Members {
			if m.Error != "" {
				return false
			}
		}
		return true
	})
}

func (n *clusterNode) host() string {
	if n.pgHost == "" {
		return "127.0.0.1"
	}
	return n.pgHost
}

func (n *clusterNode) url() string {
	return fmt.Sprintf("postgres://postgres@%s:%d/postgres?sslmode=disable&connect_timeout=10", n.host(), n.pgPort)
}

// ledger inserts ids one per transaction through whichever node's endpoint
// answers, and records an id only after its COMMIT returned.
type ledger struct {
	mu       sync.Mutex
	acked    []int64
	at       []time.Time // when acked[i]'s COMMIT returned
	inDoubt  []int64
	next     int64
	firstOK  time.Time // the first commit after since
	since    time.Time
	lastErr  error
	failures int
}

func (l *ledger) run(ctx context.Context, nodes []*clusterNode) {
	var conn *pgx.Conn
	i := 0
	for ctx.Err() == nil {
		if conn == nil {
			n := nodes[i%len(nodes)]
			i++
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			c, err := pgx.Connect(cctx, n.url())
			cancel()
			if err != nil {
				l.fail(err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			conn = c
		}
		l.mu.Lock()
		l.next++
		id := l.next
		l.mu.Unlock()
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := conn.Exec(qctx, "INSERT INTO ledger (id) VALUES ($1)", id)
		cancel()
		l.mu.Lock()
		if err != nil {
			l.inDoubt = append(l.inDoubt, id)
			l.mu.Unlock()
			l.fail(err)
			conn.Close(context.Background())
			conn = nil
			continue
		}
		l.acked = append(l.acked, id)
		l.at = append(l.at, time.Now())
		if !l.since.IsZero() && l.firstOK.IsZero() {
			l.firstOK = time.Now()
		}
		l.mu.Unlock()
	}
	if conn != nil {
		conn.Close(context.Background())
	}
}

func (l *ledger) fail(err error) {
	l.mu.Lock()
	l.lastErr = err
	l.failures++
	l.mu.Unlock()
}

// mark starts timing a failover that began at since (the kill), once the
// old writer is gone: the first commit from now on is the new writer's.
func (l *ledger) mark(since time.Time) {
	l.mu.Lock()
	l.since, l.firstOK = since, time.Time{}
	l.mu.Unlock()
}

func (l *ledger) failover() (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.firstOK.IsZero() {
		return 0, false
	}
	return l.firstOK.Sub(l.since), true
}

// writer returns the node holding main's lease, as n sees it.
func (c *testCluster) writer(t *testing.T, n *clusterNode) *clusterNode {
	st, ok := n.status(t)
	if !ok {
		return nil
	}
	for _, l := range st.Leases {
		if l.Branch == "main" {
			for _, m := range c.nodes {
				if m.id == l.Node {
					return m
				}
			}
		}
	}
	return nil
}

func (c *testCluster) createEndpoints(t *testing.T) {
	for _, n := range c.nodes {
		n.cli.ok(t, "endpoint", "create", "main", "--port", strconv.Itoa(n.pgPort), "--listen", n.host(), "--auth", "trust",
			"--suspend-after", "0", "--pg-conf", "shared_buffers=32MB")
	}
}

// TestClusterFailover: pgbench and a ledger client write through node 1's
// Postgres; node 1's daemon and Postgres are killed with SIGKILL; another
// node with an endpoint for the branch takes the lease once it expires and
// serves it; every acknowledged ledger id is there and pg_amcheck is
// clean. The killed node restarts and rejoins, and the next writer is
// killed in turn: three rounds.
func TestClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: three nodes, three failovers")
	}
	c := newCluster(t, []string{"127.0.0.1", "127.0.0.1", "127.0.0.1"})
	c.nodes[0].start(t)
	c.join(t)
	for _, n := range c.nodes[1:] {
		n.start(t)
	}
	c.waitHealthy(t, c.nodes[0], 3)
	c.createEndpoints(t)
	ctx := context.Background()

	// Node 1's endpoint first: it takes the lease and creates the cluster.
	conn, err := pgx.Connect(ctx, c.nodes[0].url())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	pgbin := "/usr/lib/postgresql/15/bin"
	if out, err := exec.Command(pgbin+"/pgbench", "-i", "-s", "2", "-q", c.nodes[0].url()).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}

	var l ledger
	lctx, stopLedger := context.WithCancel(ctx)
	ledgerDone := make(chan struct{})
	go func() { l.run(lctx, c.nodes); close(ledgerDone) }()
	defer stopLedger()

	var failovers []time.Duration
	for round := 1; round <= 3; round++ {
		var w *clusterNode
		waitFor(t, time.Minute, "a writer of main", func() bool { w = c.writer(t, c.nodes[(round)%3]); return w != nil })
		// pgbench beside the ledger, against the writer.
		bctx, stopBench := context.WithCancel(ctx)
		bench := exec.CommandContext(bctx, pgbin+"/pgbench", "-c", "2", "-T", "600", "-n", w.url())
		bench.Start()
		time.Sleep(4 * time.Second)
		l.mu.Lock()
		before := len(l.acked)
		l.mu.Unlock()
		if before == 0 {
			t.Fatalf("round %d: no ledger commit before the kill (last error: %v)", round, l.lastErr)
		}
		killed := time.Now()
		w.kill(t)
		l.mark(killed)
		stopBench()
		bench.Wait()
		waitFor(t, 2*time.Minute, fmt.Sprintf("round %d: a commit after killing %s", round, w.id), func() bool {
			_, ok := l.failover()
			return ok
		})
		took, _ := l.failover()
		failovers = append(failovers, took)
		var nw *clusterNode
		for _, n := range c.nodes {
			if n != w {
				nw = c.writer(t, n)
				break
			}
		}
		if nw == nil || nw == w {
			t.Fatalf("round %d: writer after failover: %v", round, nw)
		}
		t.Logf("round %d: killed %s (writer); %s took over; first commit %v after the kill; ledger %d acked so far, %d client errors",
			round, w.id, nw.id, took.Round(time.Millisecond), before, l.failures)
		verifyClusterLedger(t, nw, &l)
		amcheck(t, nw)
		// The killed node comes back, rejoins as a follower and catches up.
		w.start(t)
		c.waitHealthy(t, nw, 3)
	}
	t.Logf("failover from kill -9 to the first commit on the new writer: %v", failovers)
	// Stop the writer while the others still make a quorum: stopped last,
	// it could not commit its shutdown checkpoint and would exit 1.
	stopLedger()
	<-ledgerDone
	for _, n := range c.nodes {
		if n.serve == nil {
			continue
		}
		if w := c.writer(t, n); w != nil {
			w.serve.stop(t)
		}
		break
	}
}

// verifyClusterLedger checks every acknowledged id is on the writer.
func verifyClusterLedger(t *testing.T, n *clusterNode, l *ledger) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, n.url())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	l.mu.Lock()
	acked := append([]int64(nil), l.acked...)
	l.mu.Unlock()
	rows, err := conn.Query(ctx, "SELECT id FROM ledger")
	if err != nil {
		t.Fatal(err)
	}
	have := map[int64]bool{}
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		have[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var missing []int64
	for _, id := range acked {
		if !have[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d acknowledged ledger ids are missing on %s: %v", len(missing), len(acked), n.id, missing[:min(20, len(missing))])
	}
}

func amcheck(t *testing.T, n *clusterNode) {
	t.Helper()
	cmd := exec.Command("/usr/lib/postgresql/15/bin/pg_amcheck", "--all", "--heapallindexed", "--install-missing",
		"-h", n.host(), "-p", strconv.Itoa(n.pgPort), "-U", "postgres")
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	var report []string
	for _, line := range strings.Split(string(out), "\n") {
		if s := strings.TrimSpace(line); s != "" && !strings.HasPrefix(s, "NOTICE:") {
			report = append(report, line)
		}
	}
	if err != nil || len(report) > 0 {
		t.Fatalf("pg_amcheck on %s is not clean (%v):\n%s", n.id, err, out)
	}
}
