package volume

// A volume in a cluster: every node holds the whole committed state (the
// log, the FSM, the same object store), and any node may mount any branch,
// but only the holder of the branch's writer lease mounts it read-write
// (fsm/lease.go says how leases fence). Only the Raft leader flushes the
// memtable to layers and publishes manifests; the others apply the same
// "layer added" entries and drop the same memtable entries.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/neonfs/neonfs/raftwal"
	"github.com/neonfs/neonfs/volume/fsm"
)

// ClusterConfig is this node's part in a cluster, kept in DATA/cluster.json.
// A volume without the file is a single voter.
type ClusterConfig struct {
	NodeID string `json:"node_id"`
	// Bind is the Raft port (shared with node RPCs); Advertise is what
	// peers dial (default Bind).
	Bind      string `json:"bind"`
	Advertise string `json:"advertise,omitempty"`
	// Mutual TLS between peers: PEM files (paths, never contents).
	TLSCert string `json:"tls_cert,omitempty"`
	TLSKey  string `json:"tls_key,omitempty"`
	TLSCA   string `json:"tls_ca,omitempty"`
	// Join names a member to ask for membership at the next open; cleared
	// once the leader has added this node.
	Join string `json:"join,omitempty"`
}

const clusterFile = "cluster.json"

// Check refuses a config that cannot work, naming the field.
func (c ClusterConfig) Check() error {
	if c.NodeID == "" || len(c.NodeID) > 64 {
		return fmt.Errorf("node ID %q: give 1-64 characters", c.NodeID)
	}
	if _, _, err := net.SplitHostPort(c.Bind); err != nil {
		return fmt.Errorf("raft address %q: %w", c.Bind, err)
	}
	if c.Advertise != "" {
		if _, _, err := net.SplitHostPort(c.Advertise); err != nil {
			return fmt.Errorf("advertise address %q: %w", c.Advertise, err)
		}
	}
	n := 0
	for _, f := range []string{c.TLSCert, c.TLSKey, c.TLSCA} {
		if f != "" {
			n++
		}
	}
	if n != 0 && n != 3 {
		return errors.New("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
	}
	return nil
}

func (c ClusterConfig) raftConfig(dir string) (raftwal.Config, error) {
	rc := raftwal.Config{Dir: filepath.Join(dir, "raft"), ID: c.NodeID, Bind: c.Bind, Advertise: c.Advertise,
		EncodeReply: fsm.EncodeReply, DecodeReply: fsm.DecodeReply,
		Info: func() []byte { b, _ := os.ReadFile(filepath.Join(dir, configFile)); return b }}
	if c.TLSCert != "" {
		t, err := raftwal.LoadTLS(c.TLSCert, c.TLSKey, c.TLSCA)
		if err != nil {
			return rc, err
		}
		rc.TLS = t
	}
	return rc, nil
}

// ReadCluster reads dir's cluster config; nil when the volume is a single
// voter.
func ReadCluster(dir string) (*ClusterConfig, error) {
	path := filepath.Join(dir, clusterFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read cluster config: %w", err)
	}
	var c ClusterConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("cluster config %s: %w", path, err)
	}
	if err := c.Check(); err != nil {
		return nil, fmt.Errorf("cluster config %s: %w", path, err)
	}
	return &c, nil
}

func writeCluster(dir string, c ClusterConfig) error {
	b, _ := json.MarshalIndent(c, "", "  ")
	if err := replaceFileSync(filepath.Join(dir, clusterFile), append(b, '\n')); err != nil {
		return fmt.Errorf("write cluster config: %w", err)
	}
	return nil
}

// ClusterLog is a log shared by several nodes (raftwal over TCP).
type ClusterLog interface {
	Log
	Clustered() bool
	ID() string
	Leader() (id, addr string)
	Members() ([]raftwal.Member, error)
	Status(timeout time.Duration) ([]raftwal.NodeStats, error)
	AddVoter(id, addr string) error
	RemoveServer(id string) error
	Transfer(id string) error
}

// openClusterLog opens this node's Raft log with peers, and asks to join
// when the config says so.
func openClusterLog(ctx context.Context, dir string, c ClusterConfig, f *fsm.FSM) (Log, error) {
	rc, err := c.raftConfig(dir)
	if err != nil {
		return nil, err
	}
	rc.Joining = c.Join != ""
	n, err := raftwal.Open(ctx, rc, f)
	if err != nil {
		return nil, err
	}
	if c.Join == "" {
		return n, nil
	}
	backoff := 200 * time.Millisecond
	for {
		err := n.Join(c.Join)
		if err == nil {
			break
		}
		slog.Warn("join the cluster: retrying", "peer", c.Join, "err", err)
		select {
		case <-ctx.Done():
			n.Close()
			return nil, fmt.Errorf("join via %s: %w (last error: %v)", c.Join, ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	slog.Info("joined the cluster", "node", c.NodeID, "via", c.Join)
	n.CatchUp(ctx)
	c.Join = ""
	if err := writeCluster(dir, c); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// Join prepares dir as a new node of the cluster peer belongs to: it asks
// peer for the volume's description, records this node's config, and
// creates an empty log. The next open (serve or mount) asks the leader to
// add this node as a voter and catches up from it.
func Join(ctx context.Context, dir string, c ClusterConfig, peer string) error {
	if err := c.Check(); err != nil {
		return err
	}
	if err := checkEmptyDir(dir); err != nil {
		return err
	}
	rc, err := c.raftConfig(dir)
	if err != nil {
		return err
	}
	info, err := raftwal.FetchInfo(ctx, c.Bind, c.Advertise, peer, rc.TLS)
	if err != nil {
		return err
	}
	var vc Config
	if err := json.Unmarshal(info, &vc); err != nil {
		return fmt.Errorf("volume description from %s: %w", peer, err)
	}
	if err := checkShared(vc); err != nil {
		return fmt.Errorf("volume at %s: %w", peer, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if err := writeFileSync(filepath.Join(dir, configFile), info); err != nil {
		return fmt.Errorf("write volume config: %w", err)
	}
	c.Join = peer
	if err := writeCluster(dir, c); err != nil {
		return err
	}
	return raftwal.PrepareJoin(rc)
}

// checkShared refuses an object store only one node can reach: every node
// reads the layers the leader flushed.
func checkShared(vc Config) error {
	if vc.S3 == nil && !filepath.IsAbs(vc.Objects) {
		return fmt.Errorf("objects are kept in the node's own data dir (%s): a cluster needs an object store every node reaches (init with --objects /shared/path or --s3)", vc.Objects)
	}
	return nil
}

// Cluster returns the log's cluster side; nil for a single voter.
func (v *Volume) Cluster() ClusterLog { return v.cluster }

// Node is this node's ID in a cluster, "" for a single voter.
func (v *Volume) Node() string {
	if v.cluster == nil {
		return ""
	}
	return v.cluster.ID()
}

func (v *Volume) isLeader() bool { return v.cluster == nil || v.log.IsLeader() }

// checkClusterFormats refuses to run a binary older than the formats the
// cluster switched to (it would halt on the first entry it cannot read).
func (v *Volume) checkClusterFormats() error {
	if err := written.Knows(v.fsm.InUse()); err != nil {
		return fmt.Errorf("the cluster has switched to formats this binary cannot read: %w; run the newer neonfs on this node", err)
	}
	return nil
}

// announce records this binary's formats in the log (retrying until a
// quorum takes it), so the leader knows when every voter can read newer
// ones.
func (v *Volume) announce() {
	defer v.wg.Done()
	b, err := fsm.EncodeNode(now(), fsm.NodeFormats{Node: v.cluster.ID(), Formats: written})
	if err != nil {
		slog.Error("announce formats", "err", err)
		return
	}
	for {
		_, _, err := v.log.Apply(b)
		if err == nil {
			slog.Info("announced this binary's formats to the cluster", "entries", written.Entries, "layers", written.Layers,
				"snapshots", written.Snapshots, "manifests", written.Manifests)
			return
		}
		select {
		case <-v.stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// maybeSwitchFormats, on the leader, moves the cluster to the newest
// formats every voter has announced, once each has. A voter that has not
// announced yet (still starting) holds the switch back.
func (v *Volume) maybeSwitchFormats() {
	ms, err := v.cluster.Members()
	if err != nil {
		return
	}
	table := v.fsm.NodeTable()
	common := written
	for _, m := range ms {
		if !m.Voter {
			continue
		}
		f, ok := table[m.ID]
		if !ok {
			return
		}
		common = common.Min(f)
	}
	inUse := v.fsm.InUse()
	if common.Max(inUse) == inUse {
		if inUse.Entries >= 4 && !v.marked {
			// Only a binary of entry format 4 writes marks, and only now
			// that every voter reads them.
			if b, err := fsm.EncodeMark(now(), "cluster writes entry format 4"); err == nil {
				if _, _, err := v.log.Apply(b); err == nil {
					v.marked = true
				}
			}
		}
		return
	}
	b, err := fsm.EncodeSwitch(now(), common.Max(inUse))
	if err != nil {
		return
	}
	if _, _, err := v.log.Apply(b); err != nil {
		slog.Warn("switch the cluster's formats", "err", err)
		return
	}
	slog.Info("every voter reads newer formats: the cluster switched", "entries", common.Entries, "layers", common.Layers,
		"snapshots", common.Snapshots, "manifests", common.Manifests)
}

// ClusterFormats returns the formats the cluster switched to and what each
// node announced.
func (v *Volume) ClusterFormats() (inUse Formats, nodes map[string]Formats) {
	return v.fsm.InUse(), v.fsm.NodeTable()
}
