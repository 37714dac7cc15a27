package tests

// Two faults of a three-node cluster beside TestClusterFailover's dead
// writer: a follower killed under load (the writer and the leader carry on,
// clients see nothing), and the writer, which also leads, cut off from the
// other two by a network partition (it fences itself and stops Postgres, the
// other two elect a leader and one takes the branch over; nothing
// acknowledged is lost, and no two nodes serve the branch at once).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/neonfs/neonfs/daemon"
	"github.com/neonfs/neonfs/endpoint"
)

// hangLimit bounds waits that only a hang would exceed. The tests assert
// no timing: the figures they measure are logged.
const hangLimit = 30 * time.Second

// TestClusterFollowerKill: pgbench and a ledger client write through node
// 1's endpoint (node 1 holds main's lease); a node that is neither the
// writer nor the Raft leader is killed with SIGKILL. The two left are a
// quorum, so no client may see an error; the largest gap between
// consecutive ledger commits around the kill is logged. The follower
// restarts and catches up; every acknowledged id is there and pg_amcheck is
// clean.
func TestClusterFollowerKill(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: three nodes under pgbench")
	}
	c := newCluster(t, []string{"127.0.0.1", "127.0.0.1", "127.0.0.1"})
	keepClusterLogs(t, c, "followerkill")
	c.nodes[0].start(t)
	c.join(t)
	for _, n := range c.nodes[1:] {
		n.start(t)
	}
	c.waitHealthy(t, c.nodes[0], 3)
	c.createEndpoints(t)
	stopWriterFirst(t, c)
	w := c.nodes[0]
	createLedgerTable(t, w)
	pgbin := "/usr/lib/postgresql/15/bin"
	if out, err := exec.Command(pgbin+"/pgbench", "-i", "-s", "2", "-q", w.url()).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	if got := c.writer(t, w); got != w {
		t.Fatalf("main's writer is %v, want %s (its endpoint was woken first)", got, w.id)
	}

	var l ledger
	stop := l.start(t, w)

	const benchFor = 20 * time.Second
	bench := exec.Command(pgbin+"/pgbench", "-c", "2", "-T", fmt.Sprint(int(benchFor.Seconds())), "-n", w.url())
	var benchOut bytes.Buffer
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	benchDone := make(chan error, 1)
	go func() { benchDone <- bench.Wait() }()
	defer func() {
		if bench.ProcessState == nil {
			bench.Process.Kill()
			<-benchDone
		}
	}()

	time.Sleep(6 * time.Second)
	st, ok := w.status(t)
	if !ok || st.Leader == "" {
		t.Fatalf("no leader seen from %s before the kill: %+v", w.id, st)
	}
	var f *clusterNode
	for _, n := range c.nodes {
		if n != w && n.id != st.Leader {
			f = n
		}
	}
	l.mu.Lock()
	before := len(l.acked)
	l.mu.Unlock()
	if before == 0 {
		t.Fatalf("no ledger commit before the kill (last error: %v)", l.lastErr)
	}
	killAt := time.Now()
	f.kill(t)
	killTook := time.Since(killAt)

	select {
	case err := <-benchDone:
		if err != nil {
			t.Errorf("pgbench failed across the kill of follower %s: %v\n%s", f.id, err, benchOut.String())
		}
	case <-time.After(benchFor + 2*hangLimit):
		bench.Process.Kill()
		<-benchDone
		t.Fatalf("pgbench -T %v still running %v after it started: hung\n%s", benchFor, benchFor+2*hangLimit, benchOut.String())
	}
	time.Sleep(time.Second) // the ledger alone for a moment
	failures, lastErr := stop()
	stoppedAt := time.Now()
	l.mu.Lock()
	at := slices.Clone(l.at)
	l.mu.Unlock()
	if failures > 0 {
		t.Errorf("the ledger client saw %d errors across the kill of follower %s; last: %v", failures, f.id, lastErr)
	}
	// Gaps between consecutive commits: around the kill is from the last
	// commit before it to the first commit 5 s after it; before it is the
	// 5 s ahead of it, for comparison. The tail (last commit to the
	// ledger's stop) counts as a gap too: a ledger that stopped committing
	// has one that never closed.
	const window = 5 * time.Second
	var around, baseline, after time.Duration
	after = stoppedAt.Sub(at[len(at)-1])
	for i := 1; i < len(at); i++ {
		gap := at[i].Sub(at[i-1])
		if at[i].After(killAt) && at[i-1].Before(killAt.Add(window)) {
			around = max(around, gap)
		}
		if at[i-1].After(killAt.Add(-window)) && at[i].Before(killAt) {
			baseline = max(baseline, gap)
		}
		if at[i].After(killAt) {
			after = max(after, gap)
		}
	}
	if after > hangLimit {
		t.Errorf("the ledger stopped committing for %v after follower %s was killed: a hang", after.Round(time.Millisecond), f.id)
	}
	tps := ""
	for _, line := range strings.Split(benchOut.String(), "\n") {
		if strings.HasPrefix(line, "tps = ") {
			tps = line
		}
	}
	t.Logf("killed follower %s (leader %s, writer %s) after %d ledger commits; SIGKILL and cleanup took %v",
		f.id, st.Leader, w.id, before, killTook.Round(time.Millisecond))
	t.Logf("largest gap between consecutive ledger commits: around the kill %v, in the %v before it %v, from the kill to the end %v (election timeout 500ms); %d commits, %d client errors; pgbench %s",
		around.Round(time.Millisecond), window, baseline.Round(time.Millisecond), after.Round(time.Millisecond), len(at), failures, tps)

	if st2, ok := w.status(t); ok && st2.Leader != st.Leader {
		t.Errorf("leadership moved from %s to %s when follower %s was killed", st.Leader, st2.Leader, f.id)
	}
	if got := c.writer(t, w); got != w {
		t.Errorf("main's writer after the follower's kill is %v, want %s", got, w.id)
	}

	restart := time.Now()
	f.start(t)
	waitCaughtUp(t, w, f)
	t.Logf("follower %s restarted and caught up (lag 0) %v after its start", f.id, time.Since(restart).Round(time.Millisecond))
	verifyClusterLedger(t, w, &l)
	amcheck(t, w)
}

// TestClusterPartition: each node's daemon runs in a network namespace of
// its own. Node 1 is both the Raft leader and main's writer; a ledger client
// writes through its endpoint, then node 1 is cut off from the other two.
// They elect a leader; node 1, unable to renew its lease, fences itself and
// stops Postgres; once the lease has expired one of them takes main over
// and commits. Every id acknowledged (before or after the cut) is on the new
// writer. Throughout, no two nodes run main's Postgres at once. After the
// partition heals node 1 catches up, and its endpoint stays suspended (a
// client reaching it is refused: the lease is the new writer's); once the
// new writer lets main go, node 1 serves it again.
func TestClusterPartition(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: three nodes in network namespaces")
	}
	requireE2E(t)
	// Made first, so that its cleanup (killing what runs in the namespaces,
	// deleting them) runs after the daemons' own.
	nc := newNetCluster(t, 3)
	var hosts []string
	for i := range 3 {
		hosts = append(hosts, nc.Node(i).IP)
	}
	// init, join and serve listen on the node's Raft address: they run in
	// its namespace. The CLI's calls to a daemon go through its unix socket,
	// from here.
	c := newWrappedCluster(t, hosts, func(i int, cmd *exec.Cmd) *exec.Cmd {
		return nc.Node(i).Command(context.Background(), cmd.Path, cmd.Args[1:]...)
	})
	keepClusterLogs(t, c, "partition")
	for i, n := range c.nodes {
		n.pgHost = nc.Node(i).IP
	}
	n1 := c.nodes[0]
	n1.start(t)
	c.join(t)
	for _, n := range c.nodes[1:] {
		n.start(t)
	}
	c.waitHealthy(t, n1, 3)
	c.createEndpoints(t)
	stopWriterFirst(t, c)

	// Node 1's endpoint first: it takes main's lease. Then leadership.
	createLedgerTable(t, n1)
	watch := watchEndpoints(t, c.nodes)
	if got := c.writer(t, n1); got != n1 {
		t.Fatalf("main's writer is %v, want %s (its endpoint was woken first)", got, n1.id)
	}
	if st, _ := n1.status(t); st.Leader != n1.id {
		t.Logf("leader is %q: moving leadership to %s", st.Leader, n1.id)
		n1.cli.ok(t, "cluster", "transfer", n1.id)
		waitFor(t, time.Minute, n1.id+" to lead", func() bool { st, ok := n1.status(t); return ok && st.Leader == n1.id })
	}
	oldPid := endpointState(t, n1.cli, "main").Pid

	var l ledger
	stopLedger := l.start(t, n1)
	time.Sleep(3 * time.Second)
	l.mu.Lock()
	before, beforeFailures := len(l.acked), l.failures
	l.mu.Unlock()
	if before == 0 || beforeFailures > 0 {
		t.Fatalf("before the partition: %d ledger commits through %s, %d errors (last: %v)", before, n1.id, beforeFailures, l.lastErr)
	}
	if st, _ := n1.status(t); st.Leader != n1.id || c.writer(t, n1) != n1 {
		t.Fatalf("before the partition: leader %q, writer %v; want %s both", st.Leader, c.writer(t, n1), n1.id)
	}

	pgGone := watchPidGone(t, oldPid)
	cutAt := time.Now()
	nc.Partition(0)
	leader, leaderSeen := waitNewLeader(t, c.nodes[1:], n1.id)
	t.Logf("partitioned %s (leader and writer, %d ledger commits so far); %s leads, seen %v after the cut",
		n1.id, before, leader, leaderSeen.Sub(cutAt).Round(time.Millisecond))

	// Node 1 fences itself: its endpoint leaves active, its Postgres exits.
	var left watchRound
	waitFor(t, hangLimit, n1.id+"'s endpoint to leave active after the cut", func() bool {
		var ok bool
		left, ok = watch.first(cutAt, func(r watchRound) bool { return r.answered[0] && !r.active[0] })
		return ok
	})
	var gone time.Time
	waitFor(t, hangLimit, fmt.Sprintf("%s's Postgres (pid %d) to exit", n1.id, oldPid), func() bool {
		var ok bool
		gone, ok = pgGone()
		return ok
	})
	t.Logf("%s's endpoint left active (seen %s) %v after the cut; its Postgres (pid %d) exited %v after the cut",
		n1.id, left.state[0], left.at.Sub(cutAt).Round(time.Millisecond), oldPid, gone.Sub(cutAt).Round(time.Millisecond))

	// A survivor takes main over once node 1's lease has expired.
	var took watchRound
	waitFor(t, time.Minute, "node 2 or 3 to serve main after the cut", func() bool {
		var ok bool
		took, ok = watch.first(cutAt, func(r watchRound) bool { return r.active[1] || r.active[2] })
		return ok
	})
	nw := c.nodes[1]
	if !took.active[1] {
		nw = c.nodes[2]
	}
	_, lastErr := stopLedger()
	// The new writer commits, without a client error.
	stopLedger = l.start(t, nw)
	l.mu.Lock()
	var lateAcks int
	for _, at := range l.at {
		if at.After(cutAt) {
			lateAcks++
		}
	}
	lastAck := l.at[len(l.at)-1]
	phase1, phase1Failures := len(l.acked), l.failures
	l.mu.Unlock()
	t.Logf("%s took main over: its endpoint active %v after the cut; through %s: %d commits in all, %d acknowledged after the cut (the last %v after it), %d client errors (last: %v)",
		nw.id, took.at.Sub(cutAt).Round(time.Millisecond), n1.id, phase1, lateAcks, lastAck.Sub(cutAt).Round(time.Millisecond), phase1Failures, lastErr)
	waitFor(t, hangLimit, "a ledger commit through "+nw.id, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.acked) > phase1
	})
	l.mu.Lock()
	firstCommit := l.at[phase1]
	l.mu.Unlock()
	t.Logf("first commit through %s %v after the cut", nw.id, firstCommit.Sub(cutAt).Round(time.Millisecond))
	if got := c.writer(t, nw); got != nw {
		t.Fatalf("after the takeover %s sees main's writer as %v, want %s", nw.id, got, nw.id)
	}
	time.Sleep(3 * time.Second)
	if failures, lastErr := stopLedger(); failures != phase1Failures {
		t.Errorf("the ledger client saw %d errors through the new writer %s; last: %v", failures-phase1Failures, nw.id, lastErr)
	}
	verifyClusterLedger(t, nw, &l)

	// Heal: node 1 follows again and catches up; it stays suspended.
	healAt := time.Now()
	nc.Heal(0)
	waitCaughtUp(t, nw, n1)
	st, _ := nw.status(t)
	t.Logf("healed: %s caught up (lag 0) %v after the heal; leader %s", n1.id, time.Since(healAt).Round(time.Millisecond), st.Leader)
	if e := endpointState(t, n1.cli, "main"); e.State != "suspended" {
		t.Errorf("after the heal %s's endpoint is %s (pid %d), want suspended", n1.id, e.State, e.Pid)
	}
	// A client reaching node 1 wakes its endpoint, which must not get the
	// lease the new writer renews.
	if err := insertOnce(n1, -1); err == nil {
		t.Errorf("a client through %s committed after the heal, while %s holds main's lease", n1.id, nw.id)
	} else {
		t.Logf("a client through %s after the heal is refused: %v", n1.id, err)
	}
	if e := endpointState(t, n1.cli, "main"); e.State != "suspended" {
		t.Errorf("after a client tried %s its endpoint is %s (pid %d), want suspended", n1.id, e.State, e.Pid)
	}
	if got := c.writer(t, n1); got != nw {
		t.Errorf("after the heal %s sees main's writer as %v, want %s", n1.id, got, nw.id)
	}

	// Writes go on through the new writer with node 1 back.
	l.mu.Lock()
	healed := len(l.acked)
	l.mu.Unlock()
	stopLedger = l.start(t, nw)
	time.Sleep(2 * time.Second)
	if failures, lastErr := stopLedger(); failures != phase1Failures || len(l.acked) == healed {
		t.Errorf("through %s after the heal: %d commits, %d errors (last: %v)", nw.id, len(l.acked)-healed, failures-phase1Failures, lastErr)
	}
	waitCaughtUp(t, nw, n1)
	verifyClusterLedger(t, nw, &l)
	amcheck(t, nw)
	// Node 1 is a full member again: once the new writer lets main go (a
	// suspended endpoint releases the lease), a client through node 1 wakes
	// main there and commits.
	nw.cli.ok(t, "endpoint", "suspend", "main")
	if err := insertOnce(n1, -2); err != nil {
		t.Errorf("after the heal, with main released by %s, a client through %s cannot commit: %v", nw.id, n1.id, err)
	}
	watch.close()
	watch.report(t)
}

// start runs l's client against nodes until the returned stop, which
// returns the client's failures and its last error, less the one stopping
// it may cause (an INSERT or a connect cut short by the cancel). The test's
// end stops it too.
func (l *ledger) start(t *testing.T, nodes ...*clusterNode) (stop func() (int, error)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.run(ctx, nodes); close(done) }()
	var once sync.Once
	var failures int
	var lastErr error
	stop = func() (int, error) {
		once.Do(func() {
			l.mu.Lock()
			n, last := l.failures, l.lastErr
			l.mu.Unlock()
			cancel()
			<-done
			l.mu.Lock()
			failures, lastErr = l.failures, l.lastErr
			if failures == n+1 && errors.Is(lastErr, context.Canceled) {
				failures, lastErr = n, last
				l.failures, l.lastErr = n, last
			}
			l.mu.Unlock()
		})
		return failures, lastErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

// stopWriterFirst stops the daemon holding main's lease before the others
// when the test ends: stopped last, it finds no quorum to commit what its
// Postgres wrote at shutdown and waits for one in vain.
func stopWriterFirst(t *testing.T, c *testCluster) {
	t.Cleanup(func() {
		for _, n := range c.nodes {
			var st clusterStatus
			if n.serve == nil || n.query(&st, "cluster", "status") != nil {
				continue
			}
			for _, l := range st.Leases {
				for _, m := range c.nodes {
					if l.Branch == "main" && m.id == l.Node && m.serve != nil {
						m.serve.stop(t)
					}
				}
			}
			return
		}
	})
}

func createLedgerTable(t *testing.T, n *clusterNode) {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(n.url())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnectTimeout = 2 * time.Minute // initdb, on a busy machine
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("first connection through %s: %v", n.id, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"); err != nil {
		t.Fatal(err)
	}
}

// insertOnce connects to n and inserts id into the ledger.
func insertOnce(n *clusterNode, id int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
	defer cancel()
	conn, err := pgx.Connect(ctx, n.url())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "INSERT INTO ledger (id) VALUES ($1)", id)
	return err
}

// waitCaughtUp waits until from sees n answering with lag 0.
func waitCaughtUp(t *testing.T, from, n *clusterNode) {
	t.Helper()
	waitFor(t, 2*time.Minute, fmt.Sprintf("%s to catch up, seen from %s", n.id, from.id), func() bool {
		st, ok := from.status(t)
		if !ok || st.Leader == "" {
			return false
		}
		for _, m := range st.Members {
			if m.ID == n.id {
				return m.Error == "" && m.Applied > 0 && m.Lag == 0
			}
		}
		return false
	})
}

// waitNewLeader polls the survivors' cluster status until one names a leader
// other than old, and returns it with the earliest moment it was seen. A
// status call asks every member, so while old is cut off it lasts at least
// the RPC timeout (2 s); the leader it names is read as the call starts.
// Calls therefore overlap, one started every 200 ms, and a call's start is
// when its answer was true. Calls started after the first to find a leader
// cannot find an earlier one: they are left to finish on their own.
func waitNewLeader(t *testing.T, survivors []*clusterNode, old string) (string, time.Time) {
	t.Helper()
	type call struct {
		at     time.Time
		done   chan struct{}
		leader string // set before done is closed
	}
	var calls []*call
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	found := make(chan *call, 1)
	deadline := time.Now().Add(time.Minute)
	var first *call
	for i := 0; first == nil; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no leader other than %s seen from %s or %s a minute after the cut", old, survivors[0].id, survivors[1].id)
		}
		n := survivors[i%len(survivors)]
		c := &call{at: time.Now(), done: make(chan struct{})}
		calls = append(calls, c)
		wg.Go(func() {
			defer close(c.done)
			var st clusterStatus
			if err := n.query(&st, "cluster", "status"); err == nil && st.Leader != "" && st.Leader != old {
				c.leader = st.Leader
				select {
				case found <- c:
				default:
				}
			}
		})
		select {
		case first = <-found:
		case <-time.After(200 * time.Millisecond):
		}
	}
	for _, c := range calls {
		if c.at.Before(first.at) {
			<-c.done
			if c.leader != "" {
				first = c
				break
			}
		}
	}
	return first.leader, first.at
}

// watchPidGone polls pid every 20 ms from now on; the returned func tells
// when it was first seen gone.
func watchPidGone(t *testing.T, pid int) func() (time.Time, bool) {
	var mu sync.Mutex
	var gone time.Time
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for pidAlive(pid) {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		mu.Lock()
		gone = time.Now()
		mu.Unlock()
	}()
	t.Cleanup(func() { close(stop); <-done })
	return func() (time.Time, bool) {
		mu.Lock()
		defer mu.Unlock()
		return gone, !gone.IsZero()
	}
}

// query runs a --json command against n's daemon, for goroutines that must
// not call t.Fatal.
func (n *clusterNode) query(v any, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args = append(slices.Clone(args), "--json", "--data", n.cli.data)
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, n.cli.bin, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("neonfs %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return json.Unmarshal(out, v)
}

// keepClusterLogs copies the nodes' logs to /tmp/PREFIX-ID.log when the
// test ends (after its daemons stopped, before its directory goes).
func keepClusterLogs(t *testing.T, c *testCluster, prefix string) {
	t.Cleanup(func() {
		for _, n := range c.nodes {
			if b, err := os.ReadFile(n.log); err == nil {
				os.WriteFile(fmt.Sprintf("/tmp/%s-%s.log", prefix, n.id), b, 0o644)
			}
		}
		t.Logf("node logs copied to /tmp/%s-n*.log", prefix)
	})
}

// endpointWatch asks every node for main's endpoint every 100 ms, the three
// at once, and flags any two nodes running main's Postgres at the same time.
// It makes the call `neonfs endpoint list` makes, over each daemon's control
// socket: three CLI processes every 100 ms on a two-core machine made a
// round take 150-350 ms, and slowed initdb past a client's timeout.
type endpointWatch struct {
	nodes   []*clusterNode
	clients []*http.Client
	stop    chan struct{}
	done    chan struct{}

	mu       sync.Mutex
	rounds   []watchRound
	overlaps []string
	errs     []int // failed polls per node
	lastErr  []error
}

// watchRound is one poll: main's endpoint on each node.
type watchRound struct {
	at       time.Time
	answered []bool
	state    []string
	pid      []int
	active   []bool // state active and its Postgres alive
}

func (r watchRound) nActive() int {
	k := 0
	for _, a := range r.active {
		if a {
			k++
		}
	}
	return k
}

func (r watchRound) String() string {
	var parts []string
	for i := range r.state {
		parts = append(parts, fmt.Sprintf("n%d=%s/%d", i+1, r.state[i], r.pid[i]))
	}
	return r.at.Format("15:04:05.000") + " " + strings.Join(parts, " ")
}

func watchEndpoints(t *testing.T, nodes []*clusterNode) *endpointWatch {
	w := &endpointWatch{nodes: nodes, stop: make(chan struct{}), done: make(chan struct{}),
		errs: make([]int, len(nodes)), lastErr: make([]error, len(nodes))}
	for _, n := range nodes {
		sock := daemon.ControlPath(n.cli.data)
		w.clients = append(w.clients, &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			}}})
	}
	go w.run()
	t.Cleanup(w.close)
	return w
}

func (w *endpointWatch) close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *endpointWatch) run() {
	defer close(w.done)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-tick.C:
		}
		r := w.poll()
		w.mu.Lock()
		// Two nodes' answers in one round are read tens of milliseconds
		// apart, not at one instant: a handover can show the old writer
		// still active in its answer and the new one already active in its
		// own although they never overlapped. A real overlap is seen again
		// in the next round, at least 100 ms on; so it takes two rounds in a
		// row with two nodes active to fail.
		if n := len(w.rounds); n > 0 && r.nActive() >= 2 && w.rounds[n-1].nActive() >= 2 {
			w.overlaps = append(w.overlaps, w.rounds[n-1].String()+" | "+r.String())
		}
		w.rounds = append(w.rounds, r)
		w.mu.Unlock()
	}
}

func (w *endpointWatch) poll() watchRound {
	n := len(w.nodes)
	r := watchRound{at: time.Now(), answered: make([]bool, n), state: make([]string, n), pid: make([]int, n), active: make([]bool, n)}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, node := range w.nodes {
		wg.Go(func() {
			var list []daemon.EndpointInfo
			if errs[i] = endpointList(w.clients[i], &list); errs[i] != nil {
				errs[i] = fmt.Errorf("%s: %w", node.id, errs[i])
				return
			}
			for _, e := range list {
				if e.Branch == "main" {
					r.answered[i], r.state[i], r.pid[i] = true, string(e.State), e.Pid
					r.active[i] = e.State == endpoint.Active && pidAlive(e.Pid)
				}
			}
		})
	}
	wg.Wait()
	w.mu.Lock()
	for i, err := range errs {
		if err != nil {
			w.errs[i]++
			w.lastErr[i] = err
		}
	}
	w.mu.Unlock()
	return r
}

func endpointList(c *http.Client, v any) error {
	resp, err := c.Post("http://neonfs/rpc/endpoint-list", "application/json", strings.NewReader("{}"))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("endpoint-list: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// first returns the first round at or after since for which cond holds.
func (w *endpointWatch) first(since time.Time, cond func(watchRound) bool) (watchRound, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.rounds {
		if !r.at.Before(since) && cond(r) {
			return r, true
		}
	}
	return watchRound{}, false
}

// report fails the test for any overlap seen, or for a watch that was
// mostly blind.
func (w *endpointWatch) report(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, o := range w.overlaps {
		t.Errorf("two nodes ran main's Postgres at once, two polls in a row: %s", o)
	}
	for i, n := range w.nodes {
		if w.errs[i] > len(w.rounds)/10 {
			t.Errorf("endpoint list on %s failed in %d of %d polls; last: %v", n.id, w.errs[i], len(w.rounds), w.lastErr[i])
		}
	}
	var span time.Duration
	if len(w.rounds) > 1 {
		span = w.rounds[len(w.rounds)-1].at.Sub(w.rounds[0].at)
	}
	t.Logf("endpoint watch: %d polls of the three nodes over %v (%.1f/s), failed polls %v, %d rounds in a row with two active",
		len(w.rounds), span.Round(time.Second), float64(len(w.rounds))/span.Seconds(), w.errs, len(w.overlaps))
}
