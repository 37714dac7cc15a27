package tests

// A network-namespace harness for multi-node tests: several neonfs daemons,
// each in its own network namespace with its own address, talking Raft to
// each other over real TCP, with partitions made and healed while they run.
//
// Layout. Node i's namespace has lo and eth0 (10.77.S.(i+2)/24, S chosen per
// cluster so that concurrent test binaries do not collide); the other end of
// eth0 is a port of a bridge. The bridge lives in a namespace of its own, the
// hub, not in the root namespace: with br_netfilter loaded and
// bridge-nf-call-iptables=1 (Docker leaves both so), bridged frames go through
// the FORWARD chain of the bridge's namespace, whose policy Docker sets to
// DROP; the hub's tables are empty, so bridging works whatever the host's
// firewall says. The root namespace is one more port of the bridge, with
// address 10.77.S.1 (HostIP): the test process dials every node directly, and
// nodes reach servers the test runs on HostIP (not on 127.0.0.1).
//
// Commands run in a node through `nsenter --net=/run/netns/NAME -- prog`,
// not `ip netns exec NAME prog`: ip netns exec also unshares the mount
// namespace (to remount /sys for the network namespace), so a FUSE mount made
// by a daemon started that way would be invisible to the test process. nsenter
// with only --net calls setns(2) for the network namespace and execs the
// program (it forks only to enter a PID namespace, or with --fork), so the
// Cmd's Process is the program itself and SIGKILL of it kills the program.
// TestNetns checks both, and that the mount namespace is the test's.
//
// Partitions are made with routes, not by taking links down. To cut nodes i
// and j apart, each gets a /32 route to the other through "cut", a device
// that silently drops whatever is sent through it. To TCP this looks like a
// real partition: SYNs and segments vanish, so connects and writes time out
// instead of failing at once (as they would with blackhole, unreachable or
// prohibit routes, or after a failed ARP). It needs neither iptables nor nft,
// it can cut a single pair (Isolate), and the root namespace keeps reaching
// every node, cut off or not, so a test can still ask a partitioned node (a
// deposed leader, say) what it thinks. A route change invalidates the routes
// cached by established sockets, so existing connections stall too, and
// resume by retransmission after Heal.
//
// "cut" is one end of a veth pair whose other end, "cutp", is up in the same
// namespace: cut has ARP off, so frames leave it addressed to its own MAC,
// and cutp, receiving frames for another host, drops them before IP routing
// sees them (so whether the node forwards does not matter). A dummy device
// would be simpler but needs the dummy module, which not every machine can
// load; veth is needed anyway. cutp stays up so that cut has carrier: routes
// through a device without carrier are ignored where
// ignore_routes_with_linkdown is set.
//
// Names carry the creating process's pid and a random part, so concurrent
// test binaries do not collide and a later run can recognise and remove what
// a killed run left behind (sweepStaleNetns).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// netCluster is n network namespaces, each joined by a veth pair to a bridge
// that the root namespace is also joined to.
type netCluster struct {
	t       *testing.T
	tag     string // netTagLen chars: creator's pid, then a random part
	hub     string // namespace holding the bridge
	link    string // root-namespace end of the veth to the bridge
	hostIP  string
	nsDir   string // where `ip netns` keeps its names: /run/netns
	nsenter string
	nodes   []*netNode

	mu   sync.Mutex
	cuts map[[2]int]bool // pairs {i, j}, i < j, cut apart
}

type netNode struct {
	NS string // namespace name
	IP string // 10.77.S.(i+2)

	c *netCluster
}

const (
	netNSPrefix   = "neonfs-" // namespaces: neonfs-<tag>-hub, neonfs-<tag>-<i>
	netLinkPrefix = "neo"     // root-namespace link: neo<tag>, 11 chars
	netPidLen     = 5         // pid in base 36; the kernel's pid_max is at most 4194304 = "2hwcg"
	netTagLen     = netPidLen + 3
	netCutDev     = "cut" // the device in each node that partitions route to
	netLockFile   = "/run/neonfs-netns.lock"
)

// liveNetTags are this process's clusters: sweepStaleNetns must not take a
// name carrying our own pid for a leftover of an earlier process with the
// same pid (common in containers, where pids start from 1 on every boot).
var liveNetTags struct {
	sync.Mutex
	m map[string]bool
}

func newNetTag() string {
	liveNetTags.Lock()
	defer liveNetTags.Unlock()
	if liveNetTags.m == nil {
		liveNetTags.m = map[string]bool{}
	}
	pid := fmt.Sprintf("%0*s", netPidLen, strconv.FormatInt(int64(os.Getpid()), 36))
	for {
		tag := pid + fmt.Sprintf("%03s", strconv.FormatInt(int64(rand.IntN(36*36*36)), 36))
		if !liveNetTags.m[tag] {
			liveNetTags.m[tag] = true
			return tag
		}
	}
}

// newNetCluster creates n nodes. The test's cleanup removes everything it
// made, whether or not the test failed, and SIGKILLs whatever still runs in
// its namespaces; make the cluster before starting daemons in it, so that
// their own cleanups (unmounting, say) run first. It skips t when not root,
// with -short, when ip or nsenter is missing, or when `ip netns add` fails
// (no CAP_SYS_ADMIN, say).
func newNetCluster(t *testing.T, n int) *netCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("network-namespace test: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("network-namespace test: needs root (ip netns, veth, bridge); run `sudo make test`")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("network-namespace test: ip (iproute2) is not installed")
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		t.Skip("network-namespace test: nsenter (util-linux) is not installed")
	}
	if n < 1 || n > 200 {
		t.Fatalf("newNetCluster: %d nodes, want 1..200", n)
	}

	// The lock makes sweeping and choosing a free subnet atomic across
	// concurrent test binaries.
	unlock := lockNetns(t)
	defer unlock()
	sweepStaleNetns(t.Logf)

	c := &netCluster{t: t, tag: newNetTag(), nsenter: nsenter, cuts: map[[2]int]bool{}}
	c.hub = netNSPrefix + c.tag + "-hub"
	c.link = netLinkPrefix + c.tag
	t.Cleanup(c.destroy) // before anything exists: destroy removes whatever does

	if err := runIP("netns", "add", c.hub); err != nil {
		t.Skipf("network-namespace test: cannot create a network namespace (needs CAP_SYS_ADMIN and a writable /run): %v", err)
	}
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		if _, err := os.Stat(filepath.Join(dir, c.hub)); err == nil {
			c.nsDir = dir
			break
		}
	}
	if c.nsDir == "" {
		t.Fatalf("ip netns add %s succeeded but neither /run/netns nor /var/run/netns has it", c.hub)
	}

	subnet := c.pickSubnet()
	c.hostIP = subnet + ".1"
	c.ip("-n", c.hub, "link", "set", "lo", "up")
	c.ip("-n", c.hub, "link", "add", "name", "br0", "type", "bridge")
	c.ip("-n", c.hub, "link", "set", "br0", "up")
	c.ip("link", "add", "name", c.link, "type", "veth", "peer", "name", "host", "netns", c.hub)
	c.ip("-n", c.hub, "link", "set", "host", "master", "br0", "up")
	c.ip("addr", "add", c.hostIP+"/24", "dev", c.link)
	c.ip("link", "set", c.link, "up")

	for i := range n {
		node := &netNode{NS: fmt.Sprintf("%s%s-%d", netNSPrefix, c.tag, i), IP: fmt.Sprintf("%s.%d", subnet, i+2), c: c}
		c.nodes = append(c.nodes, node)
		port := fmt.Sprintf("v%d", i)
		c.ip("netns", "add", node.NS)
		c.ip("-n", c.hub, "link", "add", "name", port, "type", "veth", "peer", "name", "eth0", "netns", node.NS)
		c.ip("-n", c.hub, "link", "set", port, "master", "br0", "up")
		c.ip("-n", node.NS, "link", "set", "lo", "up")
		c.ip("-n", node.NS, "addr", "add", node.IP+"/24", "dev", "eth0")
		c.ip("-n", node.NS, "link", "set", "eth0", "up")
		c.ip("-n", node.NS, "link", "add", "name", netCutDev, "type", "veth", "peer", "name", netCutDev+"p")
		c.ip("-n", node.NS, "link", "set", netCutDev, "arp", "off", "up")
		c.ip("-n", node.NS, "link", "set", netCutDev+"p", "up")
	}
	t.Logf("netns cluster %s: host %s on %s, nodes %s.2-%d", c.tag, c.hostIP, c.link, subnet, n+1)
	return c
}

// Node returns node i, 0 <= i < n.
func (c *netCluster) Node(i int) *netNode { return c.nodes[i] }

// HostIP is the root namespace's address on the bridge: what nodes dial to
// reach a server the test process runs.
func (c *netCluster) HostIP() string { return c.hostIP }

// Addr is host:port for port on n.
func (n *netNode) Addr(port int) string { return net.JoinHostPort(n.IP, strconv.Itoa(port)) }

// Command is exec.CommandContext for a program that runs in n's network
// namespace and in every other respect (mounts, pids, files) in the test's.
// Its Process is the program itself (nsenter execs it).
func (n *netNode) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, n.c.nsenter, append([]string{"--net=" + filepath.Join(n.c.nsDir, n.NS), "--", name}, args...)...)
}

// Partition cuts node i off from every other node (the root namespace still
// reaches it). Doing it twice is harmless. Like Heal and Isolate, call it from
// the goroutine of the test that made the cluster: a failing ip command
// fails that test with t.Fatal.
func (c *netCluster) Partition(i int) {
	c.t.Helper()
	for j := range c.nodes {
		if j != i {
			c.cut(i, j)
		}
	}
}

// Heal restores every link of node i that Partition or Isolate cut.
func (c *netCluster) Heal(i int) {
	c.t.Helper()
	for j := range c.nodes {
		if j != i {
			c.join(i, j)
		}
	}
}

// Isolate cuts nodes i and j apart, both ways, leaving their other links.
// Heal(i) or Heal(j) undoes it.
func (c *netCluster) Isolate(i, j int) {
	c.t.Helper()
	if i == j {
		c.t.Fatalf("Isolate(%d, %d): a node cannot be cut from itself", i, j)
	}
	c.cut(i, j)
}

func netPair(i, j int) [2]int {
	if i > j {
		i, j = j, i
	}
	return [2]int{i, j}
}

func (c *netCluster) cut(i, j int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	p := netPair(i, j)
	if c.cuts[p] {
		return
	}
	a, b := c.nodes[i], c.nodes[j]
	c.ip("-n", a.NS, "route", "replace", b.IP+"/32", "dev", netCutDev)
	c.ip("-n", b.NS, "route", "replace", a.IP+"/32", "dev", netCutDev)
	c.cuts[p] = true
}

func (c *netCluster) join(i, j int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	p := netPair(i, j)
	if !c.cuts[p] {
		return
	}
	a, b := c.nodes[i], c.nodes[j]
	c.ip("-n", a.NS, "route", "del", b.IP+"/32", "dev", netCutDev)
	c.ip("-n", b.NS, "route", "del", a.IP+"/32", "dev", netCutDev)
	delete(c.cuts, p)
}

// ip runs `ip args...` and fails the test if it fails.
func (c *netCluster) ip(args ...string) {
	c.t.Helper()
	if err := runIP(args...); err != nil {
		c.t.Fatal(err)
	}
}

func runIP(args ...string) error {
	_, err := outputIP(args...)
	return err
}

func outputIP(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}

// pickSubnet returns a 10.77.S prefix whose /24 nothing in the root
// namespace uses (the caller holds the lock, so no other test binary picks it
// before our address is on c.link).
func (c *netCluster) pickSubnet() string {
	c.t.Helper()
	addrs, err := outputIP("-4", "-o", "addr", "show")
	if err != nil {
		c.t.Fatal(err)
	}
	routes, err := outputIP("-4", "-o", "route", "show", "table", "all")
	if err != nil {
		c.t.Fatal(err)
	}
	var used []netip.Prefix
	for _, line := range strings.Split(addrs, "\n") {
		f := strings.Fields(line)
		if i := slices.Index(f, "inet"); i >= 0 && i+1 < len(f) {
			if p, err := netip.ParsePrefix(f[i+1]); err == nil {
				used = append(used, p.Masked(), netip.PrefixFrom(p.Addr(), 32))
			}
		}
	}
	routeTypes := []string{"unicast", "local", "broadcast", "multicast", "anycast", "unreachable", "blackhole", "prohibit", "throw", "nat"}
	for _, line := range strings.Split(routes, "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && slices.Contains(routeTypes, f[0]) {
			f = f[1:]
		}
		if len(f) == 0 {
			continue
		}
		if p, err := netip.ParsePrefix(f[0]); err == nil {
			used = append(used, p)
		} else if a, err := netip.ParseAddr(f[0]); err == nil {
			used = append(used, netip.PrefixFrom(a, 32))
		}
	}
	// A route at least as specific as our /24 inside it would clash; a wider
	// one (a VPN's 10.0.0.0/8) is simply overridden by ours in the root namespace.
	start := rand.IntN(254)
	for k := range 254 {
		s := 1 + (start+k)%254
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(s), 0}), 24)
		free := true
		for _, p := range used {
			if p.Bits() >= 24 && cand.Overlaps(p) {
				free = false
				break
			}
		}
		if free {
			return fmt.Sprintf("10.77.%d", s)
		}
	}
	c.t.Fatal("no free /24 in 10.77.0.0/16 for a netns cluster")
	return ""
}

// lockNetns takes the machine-wide lock on netns cluster creation.
func lockNetns(t *testing.T) (unlock func()) {
	t.Helper()
	f, err := os.OpenFile(netLockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("netns lock: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("netns lock %s: %v", netLockFile, err)
	}
	return func() { f.Close() }
}

// destroy SIGKILLs whatever still runs in c's namespaces, then deletes the
// root-namespace link and the namespaces (their veths and bridge go with them).
func (c *netCluster) destroy() {
	defer func() {
		liveNetTags.Lock()
		delete(liveNetTags.m, c.tag)
		liveNetTags.Unlock()
	}()
	names := []string{c.hub}
	for _, n := range c.nodes {
		names = append(names, n.NS)
	}
	if pids := procsInNetns(c.nsDir, names); len(pids) > 0 {
		for _, pid := range pids {
			c.t.Logf("netns cleanup: killing %d (%s), still running in a node", pid, procCmdline(pid))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if err := waitPidsGone(pids, 10*time.Second); err != nil {
			c.t.Errorf("netns cleanup: %v", err)
		}
	}
	var errs []error
	if netLinkExists(c.link) {
		if err := runIP("link", "del", c.link); err != nil {
			errs = append(errs, err)
		}
	}
	existing := netnsNames()
	for _, name := range names {
		if existing[name] {
			if err := runIP("netns", "del", name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		c.t.Errorf("netns cleanup left things behind: %v", err)
	}
}

func netLinkExists(name string) bool {
	return runIP("-o", "link", "show", "dev", name) == nil
}

// netnsNames is the set of namespace names `ip netns` knows.
func netnsNames() map[string]bool {
	out, _ := outputIP("netns", "list")
	m := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			m[f[0]] = true // "name (id: 3)"
		}
	}
	return m
}

// rootLinkNames lists the links of the root namespace.
func rootLinkNames() []string {
	out, _ := outputIP("-o", "link", "show")
	var names []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line) // "5: neo0002sabc@if4: <...> ..."
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		names = append(names, name)
	}
	return names
}

// procsInNetns lists the processes whose network namespace is one of names.
func procsInNetns(dir string, names []string) []int {
	if dir == "" {
		return nil
	}
	want := map[string]bool{}
	for _, name := range names {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join(dir, name), &st) == nil {
			want[fmt.Sprintf("net:[%d]", st.Ino)] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	var pids []int
	for _, p := range allProcs() {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p.PID)); err == nil && want[l] && p.PID != os.Getpid() {
			pids = append(pids, p.PID)
		}
	}
	return pids
}

// netTagStale reports whether the cluster tag belongs to a process that is
// gone: its pid is dead, or it is ours but not one of our clusters.
func netTagStale(tag string) bool {
	if len(tag) != netTagLen || strings.Trim(tag, "0123456789abcdefghijklmnopqrstuvwxyz") != "" {
		return false
	}
	pid, err := strconv.ParseInt(tag[:netPidLen], 36, 64)
	if err != nil {
		return false
	}
	if int(pid) == os.Getpid() {
		liveNetTags.Lock()
		defer liveNetTags.Unlock()
		return !liveNetTags.m[tag]
	}
	return !pidAlive(int(pid))
}

// sweepStaleNetns removes the namespaces and root-namespace links of clusters
// whose test process died without running its cleanups. Processes left in
// those namespaces are not killed here (TestMain's sweepStale kills leftover
// daemons); the namespaces go away when they do.
func sweepStaleNetns(logf func(string, ...any)) {
	for _, name := range rootLinkNames() {
		if len(name) == len(netLinkPrefix)+netTagLen && strings.HasPrefix(name, netLinkPrefix) && netTagStale(name[len(netLinkPrefix):]) {
			logf("sweep: removing leftover link %s", name)
			if err := runIP("link", "del", name); err != nil {
				logf("sweep: %v", err)
			}
		}
	}
	for name := range netnsNames() {
		rest, ok := strings.CutPrefix(name, netNSPrefix)
		if !ok || len(rest) <= netTagLen || rest[netTagLen] != '-' || !netTagStale(rest[:netTagLen]) {
			continue
		}
		logf("sweep: removing leftover network namespace %s", name)
		if err := runIP("netns", "del", name); err != nil {
			logf("sweep: %v", err)
		}
	}
}

// ---- helper processes ------------------------------------------------------

// The helpers are this test binary re-executed in a node with
// NEONFS_NETNS_HELPER set. They are dispatched from init, before TestMain:
// TestMain would sweep other runs' leftovers and make a scratch directory that
// a killed helper leaves behind, and the testing package would write its own
// lines to stdout, which is the helper's reply channel.
const netnsHelperEnv = "NEONFS_NETNS_HELPER"

func init() {
	switch mode := os.Getenv(netnsHelperEnv); mode {
	case "":
	case "echo":
		os.Exit(netEchoMain(os.Getenv("NEONFS_NETNS_ADDR")))
	case "probe":
		os.Exit(netProbeMain())
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: want echo or probe\n", netnsHelperEnv, mode)
		os.Exit(2)
	}
}

// netEchoMain listens on addr, says "listening ADDR" on stdout, and echoes
// every connection back to itself until killed or until stdin ends (the test
// process has gone: a test binary killed by -timeout leaves no helpers).
func netEchoMain(addr string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Printf("listening %s\n", ln.Addr())
	for {
		conn, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		go func() {
			defer conn.Close()
			_, _ = io.Copy(conn, conn)
		}()
	}
}

// netProbeMain answers one line on stdout for each command line on stdin:
//
//	dial ID ADDR MS        open connection ID           -> ok | err MSG
//	echo ID WORD MS        send WORD on ID, await it    -> ok | err MSG
//	reach MS ADDR...       dial each at once, close     -> res R1<TAB>R2... (ok or MSG)
//
// Every operation gives up after MS milliseconds. echo skips lines that are
// not WORD: echoes of earlier words that timed out and arrived late.
func netProbeMain() int {
	type probeConn struct {
		net.Conn
		r *bufio.Reader
	}
	conns := map[string]*probeConn{}
	oneLine := func(err error) string {
		return strings.NewReplacer("\n", " ", "\t", " ").Replace(err.Error())
	}
	do := func(f []string) string {
		ms := func(s string) time.Duration {
			n, _ := strconv.Atoi(s)
			return time.Duration(n) * time.Millisecond
		}
		switch {
		case len(f) == 4 && f[0] == "dial":
			conn, err := net.DialTimeout("tcp", f[2], ms(f[3]))
			if err != nil {
				return "err " + oneLine(err)
			}
			conns[f[1]] = &probeConn{conn, bufio.NewReader(conn)}
			return "ok"
		case len(f) == 4 && f[0] == "echo":
			c := conns[f[1]]
			if c == nil {
				return "err no connection " + f[1]
			}
			_ = c.SetDeadline(time.Now().Add(ms(f[3])))
			if _, err := io.WriteString(c, f[2]+"\n"); err != nil {
				return "err " + oneLine(err)
			}
			for {
				line, err := c.r.ReadString('\n')
				if err != nil {
					return "err " + oneLine(err)
				}
				if strings.TrimSpace(line) == f[2] {
					return "ok"
				}
			}
		case len(f) >= 2 && f[0] == "reach":
			res := make([]string, len(f)-2)
			var wg sync.WaitGroup
			for i, addr := range f[2:] {
				wg.Go(func() {
					conn, err := net.DialTimeout("tcp", addr, ms(f[1]))
					if err != nil {
						res[i] = oneLine(err)
						return
					}
					conn.Close()
					res[i] = "ok"
				})
			}
			wg.Wait()
			return "res " + strings.Join(res, "\t")
		}
		return "err bad command " + strings.Join(f, " ")
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fmt.Println(do(strings.Fields(in.Text())))
	}
	return 0
}

// netHelper is a helper process running in a node.
type netHelper struct {
	ns     string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // stdout, closed at EOF
	stderr *tailBuffer
}

func startNetHelper(t *testing.T, n *netNode, mode string, env ...string) *netHelper {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	h := &netHelper{ns: n.NS, lines: make(chan string, 16), stderr: &tailBuffer{max: 4096}}
	h.cmd = n.Command(context.Background(), exe)
	h.cmd.Env = append(append(os.Environ(), netnsHelperEnv+"="+mode), env...)
	h.cmd.Stderr = h.stderr
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("starting %s helper in %s: %v", mode, n.NS, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(h.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		h.stdin.Close()
		_ = h.cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		_ = h.cmd.Wait()
	})
	return h
}

// next is the helper's next stdout line.
func (h *netHelper) next(timeout time.Duration) (string, error) {
	select {
	case line, ok := <-h.lines:
		if !ok {
			return "", fmt.Errorf("helper in %s exited; stderr: %s", h.ns, h.stderr)
		}
		return line, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("helper in %s: no answer after %v; stderr: %s", h.ns, timeout, h.stderr)
	}
}

// startNetEcho runs an echo server on n's port and waits until it listens.
func startNetEcho(t *testing.T, n *netNode, port int) *netHelper {
	t.Helper()
	h := startNetHelper(t, n, "echo", "NEONFS_NETNS_ADDR="+n.Addr(port))
	line, err := h.next(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line, "listening ") {
		t.Fatalf("echo helper in %s: %q", n.NS, line)
	}
	return h
}

// netProbe is a TCP client running in a node.
type netProbe struct{ h *netHelper }

func startNetProbe(t *testing.T, n *netNode) *netProbe {
	t.Helper()
	return &netProbe{startNetHelper(t, n, "probe")}
}

// call sends one command line and returns the reply line; only a broken
// helper is an error here. timeout is the command's own.
func (p *netProbe) call(timeout time.Duration, format string, args ...any) (string, error) {
	if _, err := fmt.Fprintf(p.h.stdin, format+"\n", args...); err != nil {
		return "", fmt.Errorf("helper in %s: %v", p.h.ns, err)
	}
	return p.h.next(timeout + 10*time.Second)
}

// result turns an ok / err reply into an error.
func (p *netProbe) result(reply string, err error) error {
	if err != nil {
		return fmt.Errorf("probe broken: %w", err)
	}
	if reply == "ok" {
		return nil
	}
	return errors.New(strings.TrimPrefix(reply, "err "))
}

// Dial opens connection id to addr.
func (p *netProbe) Dial(id, addr string, timeout time.Duration) error {
	return p.result(p.call(timeout, "dial %s %s %d", id, addr, timeout.Milliseconds()))
}

// Echo sends word on connection id (to an echo server) and waits for it back.
func (p *netProbe) Echo(id, word string, timeout time.Duration) error {
	return p.result(p.call(timeout, "echo %s %s %d", id, word, timeout.Milliseconds()))
}

// Reach dials every addr at once and reports each one's result.
func (p *netProbe) Reach(timeout time.Duration, addrs ...string) ([]error, error) {
	if len(addrs) == 0 {
		return nil, nil
	}
	reply, err := p.call(timeout, "reach %d %s", timeout.Milliseconds(), strings.Join(addrs, " "))
	if err != nil {
		return nil, fmt.Errorf("probe broken: %w", err)
	}
	rest, ok := strings.CutPrefix(reply, "res ")
	if !ok {
		return nil, fmt.Errorf("helper in %s: %q", p.h.ns, reply)
	}
	res := strings.Split(rest, "\t")
	if len(res) != len(addrs) {
		return nil, fmt.Errorf("helper in %s: %d results for %d addresses: %q", p.h.ns, len(res), len(addrs), reply)
	}
	errs := make([]error, len(res))
	for i, r := range res {
		if r != "ok" {
			errs[i] = errors.New(r)
		}
	}
	return errs, nil
}

// ---- the harness's own test --------------------------------------------------

func TestNetns(t *testing.T) {
	var c *netCluster
	skipped := false
	t.Run("cluster", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		c = newNetCluster(t, 3)
		testNetCluster(t, c)
	})
	if c != nil {
		// The subtest's cleanups have run: nothing of c may be left.
		var left []string
		for name := range netnsNames() {
			if strings.Contains(name, c.tag) {
				left = append(left, "netns "+name)
			}
		}
		for _, name := range rootLinkNames() {
			if strings.Contains(name, c.tag) {
				left = append(left, "link "+name)
			}
		}
		if len(left) > 0 {
			t.Errorf("cleanup left behind: %v", left)
		}
	}
	if skipped {
		t.Skip("see the cluster subtest")
	}
}

func testNetCluster(t *testing.T, c *netCluster) {
	const port = 7000
	const n = 3
	const cutTimeout = time.Second
	echo := make([]*netHelper, n)
	probe := make([]*netProbe, n)
	for i := range n {
		echo[i] = startNetEcho(t, c.Node(i), port)
		probe[i] = startNetProbe(t, c.Node(i))
	}

	// The Cmd's process is the program (nsenter exec'd it), in the node's
	// network namespace and in the test's mount namespace.
	pid := echo[0].cmd.Process.Pid
	exe, _ := os.Executable()
	if got, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || got != exe {
		t.Errorf("process %d runs %q (%v), want the program itself, %s", pid, got, err, exe)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(c.nsDir, c.Node(0).NS), &st); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); got != fmt.Sprintf("net:[%d]", st.Ino) {
		t.Errorf("process %d is in network namespace %s, want %s's, net:[%d]", pid, got, c.Node(0).NS, st.Ino)
	}
	mine, _ := os.Readlink("/proc/self/ns/mnt")
	if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); got != mine {
		t.Errorf("process %d is in mount namespace %s, want the test's, %s", pid, got, mine)
	}

	// checkReach dials every node from every other node and from the root
	// namespace, all at once, and compares with want (the root namespace
	// always reaches every node). A connection that must fail must time out:
	// a partition drops packets, it does not refuse them.
	checkReach := func(what string, want func(from, to int) bool) {
		t.Helper()
		type result struct {
			from int
			errs []error
			err  error
		}
		results := make(chan result, n)
		for i := range n {
			var addrs []string
			for j := range n {
				if j != i {
					addrs = append(addrs, c.Node(j).Addr(port))
				}
			}
			go func() {
				errs, err := probe[i].Reach(cutTimeout, addrs...)
				results <- result{i, errs, err}
			}()
		}
		for j := range n {
			conn, err := net.DialTimeout("tcp", c.Node(j).Addr(port), cutTimeout)
			if err != nil {
				t.Errorf("%s: root namespace cannot reach node %d: %v", what, j, err)
				continue
			}
			conn.Close()
		}
		for range n {
			r := <-results
			if r.err != nil {
				t.Fatalf("%s: %v", what, r.err)
			}
			k := 0
			for j := range n {
				if j == r.from {
					continue
				}
				err := r.errs[k]
				k++
				switch {
				case want(r.from, j) && err != nil:
					t.Errorf("%s: node %d cannot reach node %d: %v", what, r.from, j, err)
				case !want(r.from, j) && err == nil:
					t.Errorf("%s: node %d reaches node %d within %v, want cut", what, r.from, j, cutTimeout)
				case !want(r.from, j) && !strings.Contains(err.Error(), "timeout"):
					t.Errorf("%s: node %d -> node %d failed with %v, want a timeout", what, r.from, j, err)
				}
			}
		}
	}
	all := func(from, to int) bool { return true }

	checkReach("initially", all)
	if err := probe[1].Dial("a", c.Node(0).Addr(port), cutTimeout); err != nil {
		t.Fatalf("node 1 dialing node 0: %v", err)
	}
	if err := probe[1].Echo("a", "before", cutTimeout); err != nil {
		t.Fatalf("echo from node 1 to node 0: %v", err)
	}

	c.Partition(0)
	c.Partition(0)
	checkReach("node 0 partitioned", func(from, to int) bool { return from != 0 && to != 0 })
	if err := probe[1].Echo("a", "during", 500*time.Millisecond); err == nil {
		t.Errorf("node 1's established connection to node 0 still echoes after Partition(0)")
	}

	c.Heal(0)
	c.Heal(0)
	// The word sent during the partition is retransmitted; echo skips it.
	if err := probe[1].Echo("a", "after", 10*time.Second); err != nil {
		t.Errorf("node 1's established connection to node 0 does not recover after Heal(0): %v", err)
	}
	checkReach("node 0 healed", all)

	c.Isolate(0, 1)
	checkReach("nodes 0 and 1 isolated", func(from, to int) bool { return netPair(from, to) != [2]int{0, 1} })
	c.Heal(1)
	checkReach("nodes 0 and 1 healed", all)

	// SIGKILL of the Cmd's process kills the program: node 2's port closes.
	pid = echo[2].cmd.Process.Pid
	if err := echo[2].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	err := echo[2].cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("echo helper after SIGKILL: Wait returned %v, want killed by SIGKILL", err)
	}
	if pidAlive(pid) {
		t.Errorf("process %d (%s) survives SIGKILL", pid, procCmdline(pid))
	}
	if conn, err := net.DialTimeout("tcp", c.Node(2).Addr(port), cutTimeout); err == nil {
		conn.Close()
		t.Errorf("node 2's echo server still accepts connections after SIGKILL")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dialing node 2's killed echo server: %v, want connection refused", err)
	}
}

func TestNetnsTagStale(t *testing.T) {
	pid36 := func(pid int) string { return fmt.Sprintf("%0*s", netPidLen, strconv.FormatInt(int64(pid), 36)) }
	live := newNetTag()
	defer func() {
		liveNetTags.Lock()
		delete(liveNetTags.m, live)
		liveNetTags.Unlock()
	}()
	notOurs := pid36(os.Getpid()) + "zzz"
	if notOurs == live {
		notOurs = pid36(os.Getpid()) + "zzy"
	}
	for _, tc := range []struct {
		tag  string
		want bool
	}{
		{live, false},                // one of our clusters
		{notOurs, true},              // our pid, but an earlier process's
		{pid36(1) + "abc", false},    // pid 1 is alive
		{pid36(1<<22) + "abc", true}, // above PID_MAX_LIMIT: never alive
		{"ABCDEabc", false},          // not one of our names
		{pid36(1<<22) + "ab", false}, // wrong length
	} {
		if got := netTagStale(tc.tag); got != tc.want {
			t.Errorf("netTagStale(%q) = %v, want %v", tc.tag, got, tc.want)
		}
	}
}
