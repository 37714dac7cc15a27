// Package volume ties the pieces of a neonfs volume together: the Raft log
// (raftwal), the FSM that folds it into the block map and the branch tree
// (volume/fsm over blockstore and snapshot), the commit pipeline that
// turns file-system changes into log entries (volume/commit), the flusher
// that moves the memtable into layer objects (flush.go, gc.go,
// manifest.go), and the POSIX view of a branch (BranchFS: branchfs.go for
// the namespace, branchfs_data.go for file data). It never imports the fs
// (fusefs), the CLI or Prometheus.
//
// A write, top to bottom: fusefs hands it to BranchFS, which passes the
// admission gate (commit.Admission.Wait), changes its in-memory namespace
// and puts the change into the committer (commit.Committer.Submit) under
// BranchFS.mu; the committer's one proposer encodes a batch
// (fsm.EncodePuts) and appends it to the Raft log (raftwal), and once it is
// committed the FSM applies it to the block map (fsm.FSM.Apply,
// blockstore.Store.Apply). fsync waits for that batch (Committer.Wait).
//
// Lock order (a lock may be taken while holding the ones before it, never
// the other way):
//
//	Volume.branchMu   branch-tree changes and mounts
//	Volume.flushMu    flushes, merges, manifests, deletions
//	BranchFS.mu       one branch's namespace; Submit runs under it
//	Admission.mu      the write gate
//	Committer.mu      batches; the proposer calls out (propose, onChange) without it
//	Volume.mu         the mount list (short; nothing is taken under it)
//	FSM.mu            tree and timeline; the store's own locks come after
//
// Raft's apply goroutine takes FSM.mu and the store's locks only, so a
// proposer waiting for an apply while holding flushMu or branchMu cannot
// deadlock it.
package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/internal/hist"
	"github.com/neonfs/neonfs/objstore"
	"github.com/neonfs/neonfs/objstore/s3"
	"github.com/neonfs/neonfs/raftwal"
	"github.com/neonfs/neonfs/snapshot"
	"github.com/neonfs/neonfs/volume/commit"
	"github.com/neonfs/neonfs/volume/fsm"
)

// Config is the volume's own description, written once by Init.
type Config struct {
	Format  int       `json:"format"`
	Created time.Time `json:"created"`
	Objects string    `json:"objects"` // object store directory, relative to the data dir unless absolute
	// Retention is how far back branches and time-travel mounts may reach
	// (a Go duration; default 168h).
	Retention string `json:"retention,omitempty"`
	// S3 puts the objects in a bucket instead of the Objects directory.
	// It names a credentials file, never the credentials.
	S3 *s3.Config `json:"s3,omitempty"`
}

// DefaultRetention is the history window when the config names none.
const DefaultRetention = 7 * 24 * time.Hour

func (c Config) retention() time.Duration {
	if d, err := time.ParseDuration(c.Retention); err == nil && d > 0 {
		return d
	}
	return DefaultRetention
}

const configFile = "volume.json"

// Options tune an open volume.
type Options struct {
	CacheBytes int   // block cache
	FlushBytes int64 // memtable size that triggers a layer flush
	MaxBatch   int   // bytes per log entry
	MaxPending int64 // bytes of unapplied changes before writes wait
	// Linger is how long changes to files not fsynced lately may wait to
	// share a log entry when no fsync asks for them.
	Linger time.Duration
	// ReserveBytes of free disk are kept under the data dir: writes past it
	// fail with ENOSPC before they are accepted, so nothing accepted is lost
	// to a full disk.
	ReserveBytes int64
	// MaxUnflushed bounds the memtable (what the log holds that no layer
	// does yet): past it, writes wait for a flush, e.g. while the object
	// store is unreachable, rather than fill the disk with log.
	MaxUnflushed int64
	// LayerCacheBytes bounds the on-disk cache of object-store layer
	// chunks under DATA/cache (S3 volumes only).
	LayerCacheBytes int64
	// PrewarmBytes bounds the layers a mount reads ahead into the page
	// cache (prewarm.go): 0 is DefaultPrewarmBytes, negative is none.
	PrewarmBytes int64
	// GCInterval is how often the daemon looks for orphaned objects.
	GCInterval time.Duration
	// NoFlush leaves the memtable alone (for status and other inspection):
	// no background flushes, no flush on close.
	NoFlush bool
	// OpenLog opens the log; nil: the Raft log in DIR/raft (raftwal), a
	// cluster node when DIR/cluster.json says so.
	OpenLog OpenLog
	// LeaseTTL is a cluster writer lease's time to live (DefaultLeaseTTL).
	LeaseTTL time.Duration
	// LeadWrites moves Raft leadership to a node when it takes a writer
	// lease, so its commits are proposed locally instead of forwarded (the
	// CLI's default: a forwarded commit costs an extra round trip and the
	// leader's Apply queue, 1.2-1.7x the TPC-B time in bench/cluster.sh).
	LeadWrites bool
	// OnLeaseLost is called (on its own goroutine) when a read-write mount
	// on a cluster node lost its writer lease: the mount is fenced and
	// whoever serves it should stop its users and unmount it.
	OnLeaseLost func(branch string, err error)
}

// Log is the ordered stream every change of the volume is committed
// through: raftwal's Raft node, or an in-memory one in tests
// (raftwal/memlog). Apply returns once the entry is committed and applied
// to the FSM, with its index and the FSM's answer, or raftwal.ErrClosed
// after Close; Snapshot has the FSM snapshotted and the log before it
// truncated.
type Log interface {
	Apply(data []byte) (index uint64, resp any, err error)
	Snapshot() error
	Stats() (last, applied uint64)
	Close() error
	// IsLeader: this node proposes directly and is the one that flushes
	// layers. A single log always leads.
	IsLeader() bool
}

// OpenLog starts a log over fsm and returns once everything it holds is
// applied to fsm.
type OpenLog func(ctx context.Context, fsm raft.FSM) (Log, error)

// raftLog is the default: the Raft log in dir/raft, with peers when
// dir/cluster.json exists.
func raftLog(dir string) OpenLog {
	return func(ctx context.Context, f raft.FSM) (Log, error) {
		c, err := ReadCluster(dir)
		if err != nil {
			return nil, err
		}
		if c != nil {
			return openClusterLog(ctx, dir, *c, f.(*fsm.FSM))
		}
		return raftwal.Open(ctx, raftwal.Config{Dir: filepath.Join(dir, "raft")}, f)
	}
}

func (o *Options) defaults() {
	if o.CacheBytes == 0 {
		o.CacheBytes = 256 << 20
	}
	if o.FlushBytes == 0 {
		o.FlushBytes = 128 << 20
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = 4 << 20
	}
	if o.Linger == 0 {
		o.Linger = 50 * time.Millisecond
	}
	if o.MaxPending == 0 {
		o.MaxPending = 64 << 20
	}
	if o.ReserveBytes == 0 {
		o.ReserveBytes = 256 << 20
	}
	if o.LayerCacheBytes == 0 {
		o.LayerCacheBytes = 4 << 30
	}
	if o.GCInterval == 0 {
		o.GCInterval = time.Hour
	}
	if o.MaxUnflushed == 0 {
		o.MaxUnflushed = max(2<<30, 4*o.FlushBytes)
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
}

// Volume is an open volume. One process holds it at a time.
type Volume struct {
	dir   string
	opts  Options
	lock  *os.File
	store *blockstore.Store
	cache *objstore.CachedStore // in front of a remote store; nil for a local one
	fsm   *fsm.FSM
	log   Log
	// cluster is the log's cluster side, nil for a single voter; held is
	// the writer leases this node holds (lease.go).
	cluster   ClusterLog
	held      leases
	leaseLost atomic.Pointer[func(branch string, err error)]
	commit    *commit.Committer
	gate      *commit.Admission // the write path's one gate: disk space, back-pressure, the memtable bound

	fsyncs     *hist.Histogram // seconds per fsync (FsyncBounds)
	syncWrites *hist.Histogram // seconds a write to a file fsynced lately waited for its commit

	nextIno atomic.Uint64

	mu     sync.Mutex
	mounts []*BranchFS // read-write and read-only (time travel)
	// branchMu serialises branch-tree changes with mounts: a branch is not
	// deleted or replaced between the check that it is unmounted and the
	// log entry.
	branchMu sync.Mutex

	retention   time.Duration
	gen         uint64                 // this open's writer generation (0: read-only inspection or a cluster follower)
	genTerm     bool                   // a cluster node claimed gen since it last became leader
	snapCovered uint64                 // a follower's highest layer LSN at its last log snapshot
	marked      bool                   // wrote the entry-format-4 mark (fsm.EncodeMark) as leader
	fencedBy    atomic.Uint64          // a newer writer's generation, once seen
	published   atomic.Pointer[string] // the last manifest uploaded
	// Under flushMu: flushes, merges, manifests and deletions take turns.
	flushMu  sync.Mutex
	flushing atomic.Bool // a flush, merge or gc is running (for status)
	// releaseAsked: ReleaseMemory was called; the flusher acts on it.
	releaseAsked atomic.Bool
	pubState     string      // tree and layers of the last manifest
	pubSeq       uint64      // the LSN the last manifest was published at
	lastFrozen   *fsm.Frozen // the last freeze: the state manifests describe
	retired      []retired
	flushKick    chan struct{}
	flushErr     atomic.Pointer[string]
	stop         chan struct{}
	wg           sync.WaitGroup
}

// InitOptions choose where a new volume keeps its objects.
type InitOptions struct {
	S3        *s3.Config    // nil: a local directory
	Retention time.Duration // 0: DefaultRetention
	// OpenLog: as Options.OpenLog; the log it opens must be empty.
	OpenLog OpenLog
	// Cluster makes the volume's first node of a cluster (its objects must
	// be somewhere every node reaches: S3 or an absolute Objects path).
	Cluster *ClusterConfig
	// Objects is the object directory (default DATA/objects).
	Objects string
}

// Init creates an empty volume in dir, which must be missing or empty,
// with its objects in dir/objects.
func Init(ctx context.Context, dir string) error { return InitWith(ctx, dir, InitOptions{}) }

// InitWith creates an empty volume in dir, which must be missing or empty.
func InitWith(ctx context.Context, dir string, o InitOptions) error {
	if err := checkEmptyDir(dir); err != nil {
		return err
	}
	if o.S3 != nil {
		// Fail before creating anything when the bucket is unreachable.
		store, err := s3.New(ctx, *o.S3)
		if err != nil {
			return err
		}
		if objs, err := store.List(ctx, "layers/"); err != nil {
			return fmt.Errorf("list %s: %w", o.S3, err)
		} else if len(objs) > 0 {
			return fmt.Errorf("%s already holds %d layer objects: use an empty bucket or prefix", o.S3, len(objs))
		}
	}
	cfg := Config{Format: 1, Created: time.Now().UTC(), Objects: "objects", S3: o.S3}
	if o.Objects != "" {
		if o.S3 != nil {
			return errors.New("objects go to S3 or to a directory, not both")
		}
		abs, err := filepath.Abs(o.Objects)
		if err != nil {
			return fmt.Errorf("objects dir: %w", err)
		}
		cfg.Objects = abs
	}
	if o.Retention > 0 {
		cfg.Retention = o.Retention.String()
	}
	if o.Cluster != nil {
		if err := o.Cluster.Check(); err != nil {
			return err
		}
		if err := checkShared(cfg); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := writeFileSync(filepath.Join(dir, configFile), append(b, '\n')); err != nil {
		return fmt.Errorf("write volume config: %w", err)
	}
	if o.OpenLog == nil {
		rc := raftwal.Config{Dir: filepath.Join(dir, "raft")}
		if o.Cluster != nil {
			if err := writeCluster(dir, *o.Cluster); err != nil {
				return err
			}
			rc = raftwal.Config{Dir: rc.Dir, ID: o.Cluster.NodeID, Bind: o.Cluster.Bind, Advertise: o.Cluster.Advertise}
		}
		if err := raftwal.Bootstrap(rc); err != nil {
			return err
		}
	}
	v, err := Open(ctx, dir, Options{OpenLog: o.OpenLog})
	if err != nil {
		return err
	}
	t := now()
	root := Attr{Mode: syscall.S_IFDIR | 0o755, Nlink: 2, Atime: t, Mtime: t, Ctime: t}
	// The root inode is shared by every branch through ancestry: write it on
	// the root branch.
	puts := map[blockstore.Key]blockstore.Value{
		blockstore.InodeKey(snapshot.RootBranch, rootIno): {Data: encodeAttr(root)},
	}
	data, err := fsm.EncodePuts(t, puts, 128)
	if err == nil {
		_, _, err = v.log.Apply(data)
	}
	if err != nil {
		v.Close()
		return fmt.Errorf("write root directory: %w", err)
	}
	if err := v.log.Snapshot(); err != nil {
		v.Close()
		return fmt.Errorf("snapshot new volume: %w", err)
	}
	return v.Close()
}

func checkEmptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("data dir %s is not empty (holds %s)", dir, ents[0].Name())
	}
	return nil
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	return writeSyncClose(f, data)
}

// writeSyncClose writes data at the start of f, fsyncs and closes it.
func writeSyncClose(f *os.File, data []byte) error {
	if _, err := f.WriteAt(data, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadConfig reads dir's volume config, failing clearly when dir is not a
// volume.
func ReadConfig(dir string) (Config, error) {
	var cfg Config
	b, err := os.ReadFile(filepath.Join(dir, configFile))
	if errors.Is(err, os.ErrNotExist) {
		return cfg, fmt.Errorf("%s is not a neonfs volume (no %s; run neonfs init --data %s)", dir, configFile, dir)
	}
	if err != nil {
		return cfg, fmt.Errorf("read volume config: %w", err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, fmt.Errorf("volume config %s: %w", filepath.Join(dir, configFile), err)
	}
	if cfg.Retention != "" {
		if d, err := time.ParseDuration(cfg.Retention); err != nil || d <= 0 {
			return cfg, fmt.Errorf("volume config %s: retention %q is not a positive duration like 168h", filepath.Join(dir, configFile), cfg.Retention)
		}
	}
	if cfg.Format != 1 {
		return cfg, fmt.Errorf("volume config %s: unsupported format %d", filepath.Join(dir, configFile), cfg.Format)
	}
	return cfg, nil
}

// ErrInUse is wrapped when another process holds the volume.
var ErrInUse = errors.New("volume in use")

func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		pid := strings.TrimSpace(string(b))
		return nil, fmt.Errorf("volume %s is already open by process %s: %w", dir, pid, ErrInUse)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// Open opens the volume in dir: replays the log and starts the committer
// and the flusher.
func Open(ctx context.Context, dir string, opts Options) (*Volume, error) {
	opts.defaults()
	cfg, err := ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	if err := checkFormats(dir); err != nil {
		lock.Close()
		return nil, err
	}
	objects, cache, err := openObjects(ctx, dir, cfg, opts)
	if err != nil {
		lock.Close()
		return nil, err
	}
	v := &Volume{dir: dir, opts: opts, lock: lock, retention: cfg.retention(), cache: cache,
		flushKick: make(chan struct{}, 1), stop: make(chan struct{}),
		fsyncs: hist.New(FsyncBounds...), syncWrites: hist.New(FsyncBounds...)}
	v.store = blockstore.NewStore(objects, opts.CacheBytes)
	clustered, err := ReadCluster(dir)
	if err != nil {
		lock.Close()
		return nil, err
	}
	// A cluster node claims a generation when it becomes leader (the
	// flusher): only the leader writes layers and manifests.
	if !opts.NoFlush && clustered == nil {
		if v.gen, err = claimGeneration(ctx, dir, objects); err != nil {
			lock.Close()
			return nil, err
		}
		v.store.SetGeneration(v.gen)
	}
	v.fsm = fsm.New(v.store, time.Now(), rootIno)
	openLog := opts.OpenLog
	if openLog == nil {
		openLog = raftLog(dir)
	}
	v.log, err = openLog(ctx, v.fsm)
	if err != nil {
		lock.Close()
		return nil, err
	}
	if cl, ok := v.log.(ClusterLog); ok && cl.Clustered() {
		v.cluster = cl
		v.held.tokens = map[uint32]uint64{}
		if opts.OnLeaseLost != nil {
			v.OnLeaseLost(opts.OnLeaseLost)
		}
	}
	if v.cluster != nil {
		if err := v.checkClusterFormats(); err != nil {
			v.log.Close()
			lock.Close()
			return nil, fmt.Errorf("volume %s: %w", dir, err)
		}
	}
	if h := v.fsm.Halted(); h != nil && !opts.NoFlush {
		// Inspection (status) may open a stopped volume; a writer may not.
		v.log.Close()
		lock.Close()
		return nil, fmt.Errorf("volume %s: %w", dir, h)
	}
	v.nextIno.Store(v.fsm.InoHighWater())
	limits := commit.Limits{ReserveBytes: opts.ReserveBytes, MaxPending: opts.MaxPending, LogHeadroom: raftwal.HeadroomBytes}
	if !opts.NoFlush {
		limits.MaxUnflushed = opts.MaxUnflushed
	}
	v.gate = commit.NewAdmission(dir, limits, v.store, v.kickFlush)
	v.commit = commit.NewCommitter(v.propose, opts.MaxBatch, opts.Linger, v.gate.Changed)
	v.commit.SetEncoder(v.encodePuts)
	v.gate.Attach(v.commit)
	v.gate.CheckDisk()
	v.wg.Add(1)
	go v.diskWatcher()
	if v.cluster != nil {
		v.wg.Add(1)
		go v.announce()
	}
	if !opts.NoFlush {
		v.wg.Add(1)
		go v.flusher()
	}
	return v, nil
}

// openObjects opens the volume's object store, and the layer-chunk cache
// in front of it when it is remote (nil otherwise).
func openObjects(ctx context.Context, dir string, cfg Config, opts Options) (objstore.ObjectStore, *objstore.CachedStore, error) {
	if cfg.S3 != nil {
		s3cfg := *cfg.S3
		// Merged layers stream through a local file on the data dir's
		// disk, which the ENOSPC reserve covers.
		s3cfg.StagingDir = filepath.Join(dir, "staging")
		remote, err := s3.New(ctx, s3cfg)
		if err != nil {
			return nil, nil, err
		}
		// Layers are immutable, so a local copy of their chunks never goes
		// stale; it also serves hot data while the bucket is unreachable.
		c, err := objstore.NewCachedStore(remote, filepath.Join(dir, "cache"), opts.LayerCacheBytes)
		return c, c, err
	}
	objDir := cfg.Objects
	if !filepath.IsAbs(objDir) {
		objDir = filepath.Join(dir, objDir)
	}
	ds, err := objstore.NewDirStore(objDir)
	return ds, nil, err
}

// durableLog is a Log that can report an entry durable before it is
// applied (raftwal.Node.ApplyDurable): an fsync then returns without
// waiting for raft to hand the entry to the FSM and the FSM to apply it.
type durableLog interface {
	ApplyDurable(data []byte, durable func()) (index uint64, resp any, err error)
}

func (v *Volume) propose(data []byte, durable func()) error {
	defer v.fsm.Forget(data) // encodePuts expected it
	var resp any
	var err error
	if dl, ok := v.log.(durableLog); ok {
		_, resp, err = dl.ApplyDurable(data, func() {
			// A halted FSM applies nothing more: what is durable in the
			// log behind the entry that stopped it is not the volume's.
			if v.fsm.Halted() == nil {
				durable()
			}
		})
	} else {
		_, resp, err = v.log.Apply(data)
	}
	if errors.Is(err, raftwal.ErrClosed) {
		return commit.PermanentError{Err: err}
	}
	if err != nil {
		return err
	}
	if e, ok := resp.(error); ok {
		return commit.PermanentError{Err: e}
	}
	if out, ok := resp.(fsm.FencedOut); ok {
		// The rest of the batch committed; the branches named lost their
		// leases, and their mounts here stop before the batch counts as
		// done, so no fsync waiting on it is acknowledged.
		for _, id := range out.Branches {
			if f := v.writer(id); f != nil && f.lease != nil {
				v.fence(f, errors.New(out.Reason))
			}
		}
	}
	return nil
}

// settle waits until every fsync that has returned is applied too (an
// fsync returns when its entry is durable, which can be a moment before
// it is applied): an LSN or a counter read after it covers every write
// acknowledged before the call.
func (v *Volume) settle() {
	_ = v.commit.WaitApplied() // a failed log has nothing more to apply
}

// appliedLSN is the highest LSN applied, settled.
func (v *Volume) appliedLSN() uint64 {
	v.settle()
	return max(v.fsm.Applied(), v.store.Applied())
}

func (v *Volume) allocIno() uint64 { return v.nextIno.Add(1) }

// Dir is the data directory.
func (v *Volume) Dir() string { return v.dir }

// Branches returns the branch tree.
func (v *Volume) Branches() *snapshot.Tree { return v.fsm.TreeClone() }

// Mount opens branch name for reading and writing. A branch is mounted
// read-write at most once.
func (v *Volume) Mount(ctx context.Context, name string) (*BranchFS, error) {
	v.branchMu.Lock()
	defer v.branchMu.Unlock()
	tree := v.fsm.TreeClone()
	b, ok := tree.ByName(name)
	if !ok {
		return nil, fmt.Errorf("no branch %q", name)
	}
	if m := v.writer(b.ID); m != nil {
		return nil, fmt.Errorf("branch %q is already mounted at %s", name, m.place())
	}
	f := &BranchFS{vol: v, branch: b.ID, name: name, lineage: tree.Lineage(b.ID, math.MaxUint64)}
	if v.cluster != nil {
		// After the acquire this node has applied everything the previous
		// holder committed: the load below sees it all.
		if err := v.acquireLease(f); err != nil {
			return nil, err
		}
		for {
			cur, hi := v.nextIno.Load(), v.fsm.InoHighWater()
			if cur >= hi || v.nextIno.CompareAndSwap(cur, hi) {
				break
			}
		}
		if cur, ok := v.fsm.TreeClone().ByName(name); !ok || cur.ID != b.ID {
			v.releaseLease(f)
			return nil, fmt.Errorf("branch %q changed while its lease was taken; mount again", name)
		}
	}
	if err := f.load(ctx); err != nil {
		v.releaseLease(f)
		return nil, fmt.Errorf("load branch %q: %w", name, err)
	}
	v.mu.Lock()
	v.mounts = append(v.mounts, f)
	v.mu.Unlock()
	v.startPrewarm(f)
	return f, nil
}

func (v *Volume) startPrewarm(f *BranchFS) {
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		v.prewarm(f)
	}()
}

// MountAt opens branch name read-only as it was at point (an LSN, an
// RFC3339 time or a negative duration): time travel. Writes get EROFS.
func (v *Volume) MountAt(ctx context.Context, name, point string) (*BranchFS, error) {
	v.branchMu.Lock()
	defer v.branchMu.Unlock()
	tree := v.fsm.TreeClone()
	b, ok := tree.ByName(name)
	if !ok {
		return nil, fmt.Errorf("no branch %q", name)
	}
	lsn, err := v.resolvePoint(point, b)
	if err != nil {
		return nil, err
	}
	f := &BranchFS{vol: v, branch: b.ID, name: fmt.Sprintf("%s@%d", name, lsn), readOnly: true, at: lsn,
		lineage: tree.Lineage(b.ID, lsn)}
	if err := f.load(ctx); err != nil {
		return nil, fmt.Errorf("load branch %q at LSN %d: %w", name, lsn, err)
	}
	v.mu.Lock()
	v.mounts = append(v.mounts, f)
	v.mu.Unlock()
	v.startPrewarm(f)
	return f, nil
}

// writer returns the read-write mount of branch id, if any.
func (v *Volume) writer(id uint32) *BranchFS {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, m := range v.mounts {
		if m.branch == id && !m.readOnly {
			return m
		}
	}
	return nil
}

// mountsReading returns the mounts whose reads go through branch id.
func (v *Volume) mountsReading(id uint32) []*BranchFS {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []*BranchFS
	for _, m := range v.mounts {
		for _, p := range m.lineage {
			if p.Branch == id {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

// Unmount waits for the branch's changes to commit and releases it (and
// its writer lease on a cluster node).
func (v *Volume) Unmount(f *BranchFS) error {
	var err error
	if !f.readOnly && !f.fenced.Load() {
		err = v.commit.Wait(v.commit.Current())
	}
	v.releaseLease(f)
	v.mu.Lock()
	v.mounts = slices.DeleteFunc(v.mounts, func(m *BranchFS) bool { return m == f })
	v.mu.Unlock()
	return err
}

func (v *Volume) diskWatcher() {
	defer v.wg.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-v.stop:
			return
		case <-t.C:
			v.gate.CheckDisk()
		}
	}
}

// flusher writes the memtable out as layers when it grows past FlushBytes,
// merges layers after each flush, and deletes what merges replaced once
// Close commits pending changes, flushes the memtable to a layer (so the
// next open replays little), and releases the volume.
func (v *Volume) Close() error {
	cerr := v.commit.Close()
	v.gate.Close()
	close(v.stop)
	v.wg.Wait()
	if cerr == nil && !v.opts.NoFlush && v.isLeader() && (v.cluster == nil || v.gen != 0) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if err := v.Flush(ctx); err != nil {
			// Nothing is lost: the memtable is still in the log, replayed on open.
			slog.Warn("could not flush the memtable on close; the log keeps it and the next open replays it", "err", err)
		} else {
			v.flushMu.Lock()
			if _, _, err := v.deleteRetired(ctx); err != nil {
				slog.Warn("delete replaced layers on close; a later gc deletes them", "err", err)
			}
			v.flushMu.Unlock()
		}
		cancel()
	}
	lerr := v.log.Close()
	v.lock.Close()
	return errors.Join(cerr, lerr)
}
