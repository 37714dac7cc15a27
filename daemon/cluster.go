package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/neonfs/neonfs/endpoint"
	"github.com/neonfs/neonfs/raftwal"
	"github.com/neonfs/neonfs/volume"
)

// A daemon on a cluster node: it stops what it serves of a branch whose
// writer lease it lost, takes over the branches of its endpoints whose
// writer died (an orphaned lease), and answers `neonfs cluster`.

// ClusterStatus is `neonfs cluster status`'s answer.
type ClusterStatus struct {
	Node    string              `json:"node"`
	Leader  string              `json:"leader"`
	Members []MemberStatus      `json:"members"`
	Leases  []BranchLeaseStatus `json:"leases"`
	// Formats the cluster writes (switched to once every voter's binary
	// reads them).
	Formats volume.Formats `json:"formats"`
}

// MemberStatus is one node as it reports itself, with its lag behind the
// leader's commit index.
type MemberStatus struct {
	raftwal.NodeStats
	Voter bool   `json:"voter"`
	Lag   uint64 `json:"lag"`
	// Knows is what the node's binary announced it reads and writes.
	Knows *volume.Formats `json:"knows,omitempty"`
}

// BranchLeaseStatus is one branch's writer lease.
type BranchLeaseStatus struct {
	Branch  string    `json:"branch"`
	Node    string    `json:"node"`
	Token   uint64    `json:"token"`
	Expires time.Time `json:"expires"`
}

var errNotClustered = errors.New("this volume is a single node (no cluster.json): create a cluster with `neonfs init --node-id ID --raft-addr HOST:PORT`")

func (d *Daemon) cluster() (volume.ClusterLog, error) {
	c := d.vol.Cluster()
	if c == nil {
		return nil, errNotClustered
	}
	return c, nil
}

// ClusterStatus asks every member how far it is.
func (d *Daemon) ClusterStatus(ctx context.Context) (ClusterStatus, error) {
	c, err := d.cluster()
	if err != nil {
		return ClusterStatus{}, err
	}
	leader, _ := c.Leader()
	out := ClusterStatus{Node: c.ID(), Leader: leader}
	ms, err := c.Members()
	if err != nil {
		return out, err
	}
	voter := map[string]bool{}
	for _, m := range ms {
		voter[m.ID] = m.Voter
	}
	stats, err := c.Status(2 * time.Second)
	if err != nil {
		return out, err
	}
	inUse, table := d.vol.ClusterFormats()
	out.Formats = inUse
	var commit uint64
	for _, s := range stats {
		if s.ID == leader {
			commit = s.CommitIndex
		}
	}
	for _, s := range stats {
		m := MemberStatus{NodeStats: s, Voter: voter[s.ID]}
		if f, ok := table[s.ID]; ok {
			m.Knows = &f
		}
		if s.Error == "" && commit > s.AppliedIndex {
			m.Lag = commit - s.AppliedIndex
		}
		out.Members = append(out.Members, m)
	}
	branches, err := d.vol.ListBranches(ctx)
	if err != nil {
		return out, err
	}
	for _, b := range branches {
		if st, err := d.vol.Lease(b.Name); err == nil && st.Held {
			out.Leases = append(out.Leases, BranchLeaseStatus{Branch: b.Name, Node: st.Node, Token: st.Token, Expires: st.Expires})
		}
	}
	return out, nil
}

// ClusterAdd makes id at addr a voter.
func (d *Daemon) ClusterAdd(id, addr string) error {
	c, err := d.cluster()
	if err != nil {
		return err
	}
	return c.AddVoter(id, addr)
}

// ClusterRemove removes id from the cluster.
func (d *Daemon) ClusterRemove(id string) error {
	c, err := d.cluster()
	if err != nil {
		return err
	}
	return c.RemoveServer(id)
}

// ClusterTransfer moves leadership to id (any voter when empty).
func (d *Daemon) ClusterTransfer(id string) error {
	c, err := d.cluster()
	if err != nil {
		return err
	}
	return c.Transfer(id)
}

// leaseLost stops everything this daemon serves read-write of branch: its
// endpoint's Postgres (the mount is fenced, so Postgres is failing
// already), or a plain mount.
func (d *Daemon) leaseLost(branch string, why error) {
	d.mu.Lock()
	r := d.endpoints[branch]
	var mnts []string
	for mnt, s := range d.mounts {
		if s.bfs.Name() == branch && !s.bfs.ReadOnly() {
			mnts = append(mnts, mnt)
		}
	}
	d.mu.Unlock()
	slog.Error("lost the writer lease: stopping what serves the branch", "branch", branch, "err", why)
	if r != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.ep.Suspend(ctx); err != nil {
			slog.Error("suspend endpoint after losing its lease", "branch", branch, "err", err)
		}
		return
	}
	for _, mnt := range mnts {
		if err := d.Unmount(mnt); err != nil {
			slog.Error("unmount after losing the lease", "branch", branch, "mountpoint", mnt, "err", err)
		}
	}
}

// takeOverEvery is how often a cluster daemon looks for orphaned leases
// of its endpoints' branches.
const takeOverEvery = 200 * time.Millisecond

// watchLeases wakes a suspended endpoint whose branch's writer died (its
// lease expired without a release): failover. A released lease (the
// writer suspended when idle) is left alone, so scale to zero still
// scales to zero; the next client wakes whichever endpoint it reaches.
func (d *Daemon) watchLeases(ctx context.Context) {
	t := time.NewTicker(takeOverEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		eps := make(map[string]*runningEndpoint, len(d.endpoints))
		for b, r := range d.endpoints {
			eps[b] = r
		}
		d.mu.Unlock()
		for branch, r := range eps {
			if r.ep.Info().State != endpoint.Suspended {
				continue
			}
			st, err := d.vol.Lease(branch)
			if err != nil || !st.Orphaned {
				continue
			}
			slog.Warn("the branch's writer stopped renewing its lease: taking over", "branch", branch,
				"node", st.Node, "expired", st.Expires)
			start := time.Now()
			if err := r.ep.Wake(ctx); err != nil {
				slog.Error("take over branch", "branch", branch, "err", err)
				continue
			}
			slog.Info("took over branch", "branch", branch, "took", time.Since(start).Round(time.Millisecond))
		}
	}
}

// startCluster watches for branches to take over (New already stops
// what a lost lease fences).
func (d *Daemon) startCluster(ctx context.Context) {
	if d.vol.Cluster() == nil {
		return
	}
	go d.watchLeases(ctx)
	leader, _ := d.vol.Cluster().Leader()
	slog.Info("cluster node", "node", d.vol.Node(), "leader", leader)
}

func clusterHandlers(d *Daemon) map[string]func(context.Context, Args) (any, error) {
	return map[string]func(context.Context, Args) (any, error){
		"cluster-status": func(ctx context.Context, _ Args) (any, error) { return d.ClusterStatus(ctx) },
		"cluster-add": func(_ context.Context, a Args) (any, error) {
			if a.Name == "" || a.A == "" {
				return nil, fmt.Errorf("cluster add needs a node ID and its Raft address")
			}
			return nil, d.ClusterAdd(a.Name, a.A)
		},
		"cluster-remove":   func(_ context.Context, a Args) (any, error) { return nil, d.ClusterRemove(a.Name) },
		"cluster-transfer": func(_ context.Context, a Args) (any, error) { return nil, d.ClusterTransfer(a.Name) },
	}
}
