// Package raftwal is the volume's write-ahead log: a hashicorp/raft node
// whose log store is raft-wal (chosen by measurement: one fsync per commit,
// against about two for raft-boltdb; see bench/raftlog). Every mutation of
// a volume is an entry of this log and its Raft index is the volume's LSN.
// It carries bytes: it never imports the FSM, the block map or the volume.
package raftwal

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unsafe"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"

	"github.com/neonfs/neonfs/internal/hist"
)

// Config names one node of the log.
type Config struct {
	Dir string // holds the log (wal/) and snapshots (snapshots/)
	ID  string // server ID; "node1" when empty
	// TrailingLogs is how many entries survive a snapshot. Entries are
	// group-commit batches of up to a few MiB, so keep it small.
	TrailingLogs uint64
	Logger       *slog.Logger

	// Cluster: with Bind set the node talks Raft over TCP on one port
	// (Mux) shared with node RPCs, and Advertise (default Bind) is the
	// address peers dial. Without it the log is a single voter on an
	// in-memory transport.
	Bind, Advertise string
	TLS             *tls.Config // mutual TLS between peers; nil: plain TCP
	// EncodeReply and DecodeReply carry the FSM's answers to forwarded
	// proposals (a cluster needs both).
	EncodeReply func(any) []byte
	DecodeReply func([]byte) (any, error)
	// Info answers a peer's info request (a joining node asks for the
	// volume's description).
	Info func() []byte
	// Joining: the node is not a member yet, so Open does not wait for a
	// leader (none will talk to it before it asks to join); call CatchUp
	// after Join.
	Joining bool
}

func (c Config) clustered() bool { return c.Bind != "" }

func (c Config) advertise() string {
	if c.Advertise != "" {
		return c.Advertise
	}
	return c.Bind
}

const localAddr = "local"

// HeadroomBytes is the disk the log may take beyond its entries: segments
// are created whole (zero-filled), so one append can cost a segment, and
// the next one is prepared ahead as a spare.
var HeadroomBytes = 2 * int64(wal.DefaultSegmentSize)

func (c Config) id() string {
	if c.ID == "" {
		return "node1"
	}
	return c.ID
}

// Node is an open log.
type Node struct {
	raft  *raft.Raft
	store *walStore
	trans raft.Transport
	log   *slog.Logger
	cfg   Config
	fsm   raft.FSM

	// Cluster only: the shared port and RPC connections to peers.
	mux *Mux
	rpc *rpcClient

	// appliedCh is closed and replaced after each applied entry, so a
	// forwarded proposal can wait until this node has applied it.
	appliedMu sync.Mutex
	appliedCh chan struct{}
	done      chan struct{}
}

// walStore is raft-wal with its metadata store, which WAL.Close leaves
// open (and locked): close both.
type walStore struct {
	*wal.WAL
	meta *metadb.BoltMetaDB
	dir  string
	// syncs times the log segments' fdatasyncs (zeroFS records them).
	syncs *hist.Histogram

	// stored maps the first byte of a proposal's data to the callback
	// ApplyDurable registered for it: StoreLogs calls it once raft-wal has
	// written and fsynced the entry. On the leader raft hands StoreLogs
	// the proposer's own slice, so its address names the proposal.
	storedMu sync.Mutex
	stored   map[*byte]func()
}

// StoreLogs is raft-wal's, then tells the proposers waiting in
// ApplyDurable that their entries are on disk.
func (s *walStore) StoreLogs(logs []*raft.Log) error {
	if err := s.WAL.StoreLogs(logs); err != nil {
		return err
	}
	s.storedMu.Lock()
	defer s.storedMu.Unlock()
	if len(s.stored) == 0 {
		return nil
	}
	for _, l := range logs {
		if len(l.Data) == 0 {
			continue
		}
		k := unsafe.SliceData(l.Data)
		if f, ok := s.stored[k]; ok {
			delete(s.stored, k)
			f()
		}
	}
	return nil
}

func (s *walStore) onStored(data []byte, f func()) {
	s.storedMu.Lock()
	defer s.storedMu.Unlock()
	if s.stored == nil {
		s.stored = map[*byte]func(){}
	}
	s.stored[unsafe.SliceData(data)] = f
}

func (s *walStore) forget(data []byte) {
	s.storedMu.Lock()
	defer s.storedMu.Unlock()
	delete(s.stored, unsafe.SliceData(data))
}

func openWAL(dir string) (*walStore, error) {
	meta := &metadb.BoltMetaDB{}
	zfs := newZeroFS()
	w, err := wal.Open(walDir(dir), wal.WithLogger(hlog()), wal.WithMetaStore(meta),
		wal.WithSegmentFiler(segment.NewFiler(walDir(dir), zfs)))
	if err != nil {
		meta.Close()
		return nil, fmt.Errorf("open log %s: %w", walDir(dir), err)
	}
	return &walStore{WAL: w, meta: meta, dir: walDir(dir), syncs: zfs.syncs}, nil
}

func (s *walStore) Close() error { return errors.Join(s.WAL.Close(), s.meta.Close()) }

func walDir(dir string) string  { return filepath.Join(dir, "wal") }
func snapDir(dir string) string { return filepath.Join(dir, "snapshots") }

// Bootstrap creates an empty single-voter log in cfg.Dir.
func Bootstrap(cfg Config) error {
	return bootstrap(cfg, func(store *walStore, snaps raft.SnapshotStore, trans raft.Transport, conf raft.Configuration) error {
		if err := raft.BootstrapCluster(raftConfig(cfg), store, store, snaps, trans, conf); err != nil {
			return fmt.Errorf("bootstrap log: %w", err)
		}
		return nil
	})
}

// BootstrapFromSnapshot creates a single-voter log in cfg.Dir whose only
// content is a snapshot at index holding data (an FSM snapshot): the log of
// a volume rebuilt from its object store. New entries follow index.
func BootstrapFromSnapshot(cfg Config, index uint64, data []byte) error {
	return bootstrap(cfg, func(store *walStore, snaps raft.SnapshotStore, trans raft.Transport, conf raft.Configuration) error {
		sink, err := snaps.Create(raft.SnapshotVersionMax, index, 1, conf, 1, trans)
		if err != nil {
			return fmt.Errorf("create snapshot: %w", err)
		}
		if _, err := sink.Write(data); err != nil {
			sink.Cancel()
			return fmt.Errorf("write snapshot: %w", err)
		}
		if err := sink.Close(); err != nil {
			return fmt.Errorf("write snapshot: %w", err)
		}
		if err := store.SetUint64([]byte("CurrentTerm"), 1); err != nil {
			return fmt.Errorf("write term: %w", err)
		}
		return nil
	})
}

// bootstrap creates the log's stores in cfg.Dir and lets seed fill them for
// a single-voter configuration.
func bootstrap(cfg Config, seed func(*walStore, raft.SnapshotStore, raft.Transport, raft.Configuration) error) error {
	if err := os.MkdirAll(walDir(cfg.Dir), 0o700); err != nil {
		return fmt.Errorf("create log dir: %w", err)
	}
	store, err := openWAL(cfg.Dir)
	if err != nil {
		return err
	}
	defer store.Close()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(snapDir(cfg.Dir), 2, hlog())
	if err != nil {
		return fmt.Errorf("create snapshot store: %w", err)
	}
	addr := raft.ServerAddress(localAddr)
	if cfg.clustered() {
		addr = raft.ServerAddress(cfg.advertise())
	}
	_, trans := raft.NewInmemTransport(addr)
	conf := raft.Configuration{Servers: []raft.Server{{ID: raft.ServerID(cfg.id()), Address: addr}}}
	return seed(store, snaps, trans, conf)
}

func raftConfig(cfg Config) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(cfg.id())
	c.Logger = hlog()
	// A single voter elects itself after one heartbeat timeout: keep it short
	// so a mount is ready quickly.
	c.HeartbeatTimeout = 150 * time.Millisecond
	c.ElectionTimeout = 150 * time.Millisecond
	c.LeaderLeaseTimeout = 100 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.MaxAppendEntries = 256
	c.BatchApplyCh = true
	// Snapshots are taken by the volume right after a layer is flushed, when
	// the memtable is small; never by entry count.
	c.SnapshotThreshold = 1 << 62
	c.SnapshotInterval = 24 * time.Hour
	c.TrailingLogs = cfg.TrailingLogs
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 16
	}
	if cfg.clustered() {
		// Peers over TCP: a missed heartbeat or two must not start an
		// election, and an election must end well inside a writer lease's
		// renewal margin (volume: TTL/2).
		c.HeartbeatTimeout = 500 * time.Millisecond
		c.ElectionTimeout = 500 * time.Millisecond
		c.LeaderLeaseTimeout = 250 * time.Millisecond
		// A follower that was away briefly catches up from the log, not a
		// snapshot of the whole memtable.
		if cfg.TrailingLogs == 0 {
			c.TrailingLogs = 512
		}
	}
	return c
}

// Exists reports whether dir holds a log.
func Exists(dir string) bool {
	_, err := os.Stat(walDir(dir))
	return err == nil
}

// Open starts the node on an existing log. A single voter returns once it
// leads and has applied every committed entry to fsm; a cluster node once
// it has caught up with the leader, or after a while without one (a
// replica may start while its peers are down; proposals then wait).
func Open(ctx context.Context, cfg Config, fsm raft.FSM) (*Node, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if !Exists(cfg.Dir) {
		return nil, fmt.Errorf("no log in %s", cfg.Dir)
	}
	if cfg.clustered() && (cfg.EncodeReply == nil || cfg.DecodeReply == nil) {
		return nil, errors.New("a cluster log needs EncodeReply and DecodeReply")
	}
	store, err := openWAL(cfg.Dir)
	if err != nil {
		return nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(snapDir(cfg.Dir), 2, hlog())
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	n := &Node{store: store, log: log, cfg: cfg, fsm: fsm, appliedCh: make(chan struct{}), done: make(chan struct{})}
	if cfg.clustered() {
		if n.mux, err = Listen(cfg.Bind, cfg.advertise(), cfg.TLS); err != nil {
			store.Close()
			return nil, err
		}
		n.rpc = &rpcClient{mux: n.mux, idle: map[string][]*rpcConn{}}
		n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: n.mux.Raft(), MaxPool: 4, Timeout: 10 * time.Second, Logger: hlog()})
	} else {
		_, n.trans = raft.NewInmemTransport(localAddr)
	}
	r, err := newRaft(raftConfig(cfg), notifyFSM{FSM: fsm, n: n}, store, snaps, n.trans)
	if err != nil {
		n.closeTransport()
		store.Close()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n.raft = r
	log.Info("replaying log", "last_index", r.LastIndex())
	if cfg.clustered() {
		go n.serveRPC(n.mux.RPC())
		if !cfg.Joining {
			n.CatchUp(ctx)
		}
		return n, nil
	}
	for r.State() != raft.Leader {
		select {
		case <-ctx.Done():
			n.Close()
			return nil, fmt.Errorf("wait for log leadership: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Barrier returns once every entry committed before it is applied.
	if err := r.Barrier(0).Error(); err != nil {
		n.Close()
		return nil, fmt.Errorf("replay log: %w", err)
	}
	return n, nil
}

// newRaft is raft.NewRaft, which panics when the log store cannot read an
// entry it needs (a damaged log, or raft-wal before v0.4.1 after a tail
// truncation): the volume must refuse to open with the reason, not crash.
func newRaft(conf *raft.Config, fsm raft.FSM, store *walStore, snaps raft.SnapshotStore, trans raft.Transport) (r *raft.Raft, err error) {
	defer func() {
		if p := recover(); p != nil {
			r, err = nil, fmt.Errorf("the log in %s cannot be read: %v", store.dir, p)
		}
	}()
	return raft.NewRaft(conf, fsm, store, store, snaps, trans)
}

// ErrClosed is returned by Apply after Close.
var ErrClosed = errors.New("log closed")

// Apply appends data as one entry and returns once it is committed and
// applied here, with its index and the FSM's response. On a cluster node
// that does not lead, the leader proposes it (forwarded over the RPC port)
// and Apply waits until this node has applied it too, so a writer reads
// its own writes. Errors other than ErrClosed are transient: no leader, a
// leader that changed or is unreachable; the caller retries.
func (n *Node) Apply(data []byte) (uint64, any, error) {
	if n.mux == nil || n.raft.State() == raft.Leader {
		idx, resp, err := n.applyLocal(data)
		if n.mux == nil || !errors.Is(err, raft.ErrNotLeader) {
			return idx, resp, err
		}
	}
	return n.forward(data)
}

// ApplyDurable is Apply that also calls durable (at most once, from
// raft's leader loop: it must not block) as soon as the entry is written
// and fsynced in this node's log, before it is applied. On a single-voter
// node that is when the entry is committed: no other node can be elected
// to truncate it, and a restart replays it. A cluster node needs a quorum
// for that, so there it never calls durable and Apply's return is the
// signal.
func (n *Node) ApplyDurable(data []byte, durable func()) (uint64, any, error) {
	if n.mux != nil || len(data) == 0 {
		return n.Apply(data)
	}
	n.store.onStored(data, durable)
	defer n.store.forget(data)
	return n.applyLocal(data)
}

func (n *Node) applyLocal(data []byte) (uint64, any, error) {
	f := n.raft.Apply(data, 0)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrRaftShutdown) {
			return 0, nil, ErrClosed
		}
		return 0, nil, err
	}
	return f.Index(), f.Response(), nil
}

// Snapshot asks Raft to snapshot the FSM now and truncate the log before
// it (keeping TrailingLogs entries).
func (n *Node) Snapshot() error {
	err := n.raft.Snapshot().Error()
	if errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil
	}
	return err
}

// LogSyncs is the seconds each fdatasync of the log's segments took: the
// disk's share of a commit.
func (n *Node) LogSyncs() hist.Snapshot { return n.store.syncs.Snapshot() }

// Stats reports the log's indexes.
func (n *Node) Stats() (last, applied uint64) {
	return n.raft.LastIndex(), n.raft.AppliedIndex()
}

// LogBytes is the size of the log on disk.
func LogBytes(dir string) int64 {
	var total int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	return total
}

// Close stops the node and closes the log store. A cluster leader hands
// leadership to a caught-up voter first, so the others do not wait out an
// election timeout.
func (n *Node) Close() error {
	if n.mux != nil && n.raft.State() == raft.Leader && n.otherVoters() > 0 {
		if err := n.raft.LeadershipTransfer().Error(); err != nil {
			n.log.Warn("could not hand leadership over before stopping", "err", err)
		} else {
			n.log.Info("handed leadership over before stopping")
		}
	}
	close(n.done)
	err := n.raft.Shutdown().Error()
	n.closeTransport()
	return errors.Join(err, n.store.Close())
}

func (n *Node) closeTransport() {
	if c, ok := n.trans.(io.Closer); ok {
		c.Close()
	}
	if n.rpc != nil {
		n.rpc.close()
	}
	if n.mux != nil {
		n.mux.Close()
	}
}
