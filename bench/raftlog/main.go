// Command raftlog benchmarks hashicorp/raft log stores (raft-wal and
// raft-boltdb/v2) on a single-voter cluster, plus a raw append+fdatasync
// floor, and prints a table of throughput and apply latency.
//
// It is its own Go module so that its dependencies stay out of the main
// neonfs module. See README.md.
package main

import (
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
)

const tmpfsMagic = 0x01021994

// store is what a log store backend must provide.
type store interface {
	raft.LogStore
	raft.StableStore
	io.Closer
}

type backend struct {
	name string
	open func(dir string) (store, error)
}

// walSegmentSize is raft-wal's segment size (0 = library default, 64 MiB).
var walSegmentSize int

var backends = []backend{
	{"raft-wal", func(dir string) (store, error) {
		p := filepath.Join(dir, "wal")
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, err
		}
		if walSegmentSize > 0 {
			return wal.Open(p, wal.WithSegmentSize(walSegmentSize))
		}
		return wal.Open(p)
	}},
	{"raft-boltdb/v2", func(dir string) (store, error) {
		return raftboltdb.NewBoltStore(filepath.Join(dir, "raft.db"))
	}},
}

// countFSM is a trivial FSM that only counts applied entries.
type countFSM struct{ n atomic.Uint64 }

func (f *countFSM) Apply(*raft.Log) interface{} { f.n.Add(1); return nil }
func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) {
	return &countSnap{n: f.n.Load()}, nil
}
func (f *countFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return err
	}
	f.n.Store(n)
	return nil
}

type countSnap struct{ n uint64 }

func (s *countSnap) Persist(sink raft.SnapshotSink) error {
	if _, err := fmt.Fprintf(sink, "%d\n", s.n); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}
func (s *countSnap) Release() {}

type result struct {
	store   string
	size    int
	conc    int
	ops     int
	elapsed time.Duration
	lat     []time.Duration // sorted
}

func (r result) opsPerSec() float64 { return float64(r.ops) / r.elapsed.Seconds() }
func (r result) mibPerSec() float64 {
	return float64(r.ops) * float64(r.size) / r.elapsed.Seconds() / (1 << 20)
}
func (r result) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	i := int(p * float64(len(r.lat)-1))
	return r.lat[i]
}

func main() {
	dur := flag.Duration("d", 5*time.Second, "duration of each measurement")
	baseDir := flag.String("dir", "/var/tmp", "parent directory for temp data (must be a real disk, not tmpfs)")
	storesFlag := flag.String("stores", "raft-wal,raft-boltdb/v2", "comma-separated stores to run: raft-wal, raft-boltdb/v2 (run interleaved, in this order)")
	sizesFlag := flag.String("sizes", "8K,256K,1M", "comma-separated entry sizes (K/M suffix = KiB/MiB)")
	concFlag := flag.String("c", "1,4,16", "comma-separated concurrency levels")
	noFloor := flag.Bool("nofloor", false, "skip the raw fdatasync floor rows")
	walSeg := flag.String("walseg", "", "raft-wal segment size, e.g. 256M (default: library default, 64 MiB)")
	flag.Parse()
	if *walSeg != "" {
		v, err := parseSizes(*walSeg)
		if err != nil || len(v) != 1 {
			fatal(fmt.Errorf("bad -walseg %q", *walSeg))
		}
		walSegmentSize = v[0]
	}

	sizes, err := parseSizes(*sizesFlag)
	if err != nil {
		fatal(err)
	}
	concs, err := parseInts(*concFlag)
	if err != nil {
		fatal(err)
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(*baseDir, &sfs); err != nil {
		fatal(err)
	}
	if sfs.Type == tmpfsMagic {
		fmt.Fprintf(os.Stderr, "WARNING: %s is tmpfs; fsync costs nothing there, results are meaningless\n", *baseDir)
	}

	// Stores run in the order given; cells are interleaved across stores
	// (size -> concurrency -> store) so that drift in the disk's speed over
	// the run (virtual disks throttle, caches fill) hits every store alike.
	var chosen []backend
	for _, s := range strings.Split(*storesFlag, ",") {
		found := false
		for _, b := range backends {
			if b.name == strings.TrimSpace(s) {
				chosen, found = append(chosen, b), true
			}
		}
		if !found && strings.TrimSpace(s) != "" {
			fatal(fmt.Errorf("unknown store %q", s))
		}
	}

	var results []result
	if !*noFloor {
		for _, prealloc := range []bool{false, true} {
			r, err := runFloor(*baseDir, 8<<10, *dur, prealloc)
			if err != nil {
				fatal(fmt.Errorf("floor: %w", err))
			}
			report(r)
			results = append(results, r)
		}
	}
	var storeResults []result
	for _, size := range sizes {
		for _, c := range concs {
			for _, b := range chosen {
				r, err := runRaft(b, *baseDir, size, c, *dur)
				if err != nil {
					fatal(fmt.Errorf("%s size=%d c=%d: %w", b.name, size, c, err))
				}
				report(r)
				storeResults = append(storeResults, r)
			}
		}
	}
	// Print grouped by store, in -stores order, then size, then concurrency.
	rank := map[string]int{}
	for i, b := range chosen {
		rank[b.name] = i
	}
	sort.SliceStable(storeResults, func(i, j int) bool {
		return rank[storeResults[i].store] < rank[storeResults[j].store]
	})
	results = append(results, storeResults...)
	fmt.Println()
	printTable(os.Stdout, results)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}

func report(r result) {
	fmt.Fprintf(os.Stderr, "done: %-16s %6s c=%-2d %8.0f applies/s\n", r.store, fmtSize(r.size), r.conc, r.opsPerSec())
}

func printTable(w io.Writer, results []result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "store\tentry\tconc\tapplies/s\tMiB/s\tp50 ms\tp99 ms\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%.1f\t%.2f\t%.2f\t\n",
			r.store, fmtSize(r.size), r.conc, r.opsPerSec(), r.mibPerSec(),
			ms(r.pct(0.50)), ms(r.pct(0.99)))
	}
	tw.Flush()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fmtSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return strconv.Itoa(n)
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.ToUpper(strings.TrimSpace(f))
		mult := 1
		switch {
		case strings.HasSuffix(f, "K"):
			mult, f = 1<<10, strings.TrimSuffix(f, "K")
		case strings.HasSuffix(f, "M"):
			mult, f = 1<<20, strings.TrimSuffix(f, "M")
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad size %q", f)
		}
		out = append(out, n*mult)
	}
	return out, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// runFloor measures a single writer appending size-byte records to a plain
// file with fdatasync after each one: the best a synchronous log can do.
// With prealloc the file is fallocate'd up front (as raft-wal does with its
// segments) so each fdatasync need not also journal a file-size change.
func runFloor(baseDir string, size int, dur time.Duration, prealloc bool) (result, error) {
	dir, err := os.MkdirTemp(baseDir, "raftlog-floor-")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
	name := "floor: append+fdatasync"
	flags := os.O_CREATE | os.O_WRONLY | os.O_APPEND
	if prealloc {
		name = "floor: prealloc+fdatasync"
		flags = os.O_CREATE | os.O_WRONLY
	}
	f, err := os.OpenFile(filepath.Join(dir, "log"), flags, 0o644)
	if err != nil {
		return result{}, err
	}
	defer f.Close()
	if prealloc {
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, 1<<30); err != nil {
			return result{}, fmt.Errorf("fallocate: %w", err)
		}
		if err := f.Sync(); err != nil {
			return result{}, err
		}
	}
	buf := randBytes(size)
	var lat []time.Duration
	start := time.Now()
	deadline := start.Add(dur)
	for {
		t := time.Now()
		if !t.Before(deadline) {
			break
		}
		if _, err := f.Write(buf); err != nil { // O_APPEND or sequential offset
			return result{}, err
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return result{}, err
		}
		lat = append(lat, time.Since(t))
	}
	elapsed := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return result{store: name, size: size, conc: 1, ops: len(lat), elapsed: elapsed, lat: lat}, nil
}

func runRaft(b backend, baseDir string, size, conc int, dur time.Duration) (res result, err error) {
	dir, err := os.MkdirTemp(baseDir, "raftlog-")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)

	st, err := b.open(dir)
	if err != nil {
		return result{}, fmt.Errorf("open store: %w", err)
	}
	defer st.Close()

	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 1,
		hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr}))
	if err != nil {
		return result{}, err
	}

	cfg := raft.DefaultConfig()
	cfg.LocalID = "node1"
	cfg.HeartbeatTimeout = 50 * time.Millisecond
	cfg.ElectionTimeout = 50 * time.Millisecond
	cfg.LeaderLeaseTimeout = 50 * time.Millisecond
	cfg.CommitTimeout = 5 * time.Millisecond
	cfg.SnapshotThreshold = 1 << 62
	cfg.SnapshotInterval = 24 * time.Hour
	cfg.TrailingLogs = 1 << 62
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Error, Output: os.Stderr})

	addr, trans := raft.NewInmemTransport("")
	defer trans.Close()
	fsm := &countFSM{}
	r, err := raft.NewRaft(cfg, fsm, st, st, snaps, trans)
	if err != nil {
		return result{}, fmt.Errorf("new raft: %w", err)
	}
	defer func() {
		if e := r.Shutdown().Error(); e != nil && err == nil {
			err = e
		}
	}()
	boot := raft.Configuration{Servers: []raft.Server{{ID: cfg.LocalID, Address: addr}}}
	if err := r.BootstrapCluster(boot).Error(); err != nil {
		return result{}, fmt.Errorf("bootstrap: %w", err)
	}
	if err := waitLeader(r, 10*time.Second); err != nil {
		return result{}, err
	}
	// Make sure the no-op/config entries are committed before measuring.
	if err := r.Barrier(10 * time.Second).Error(); err != nil {
		return result{}, fmt.Errorf("barrier: %w", err)
	}

	data := randBytes(size) // raft does not modify the slice; share it
	lats := make([][]time.Duration, conc)
	errs := make([]error, conc)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(dur)
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			l := make([]time.Duration, 0, 4096)
			for {
				t := time.Now()
				if !t.Before(deadline) {
					break
				}
				if err := r.Apply(data, 0).Error(); err != nil {
					errs[g] = err
					break
				}
				l = append(l, time.Since(t))
			}
			lats[g] = l
		}(g)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return result{}, fmt.Errorf("apply: %w", err)
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return result{store: b.name, size: size, conc: conc, ops: len(all), elapsed: elapsed, lat: all}, nil
}

func waitLeader(r *raft.Raft, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if r.State() == raft.Leader {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("no leader after %v", timeout)
}
