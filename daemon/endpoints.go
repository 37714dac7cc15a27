package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/neonfs/neonfs/durable"
	"github.com/neonfs/neonfs/endpoint"
	"github.com/neonfs/neonfs/pgserve"
	"github.com/neonfs/neonfs/sqlproxy"
	"github.com/neonfs/neonfs/volume"
)

// EndpointSpec is an endpoint as recorded in the volume
// (DATA/endpoints.json), so endpoints survive a daemon restart.
type EndpointSpec struct {
	Branch string `json:"branch"`
	Listen string `json:"listen"` // host:port
	// SuspendAfter is a Go duration; "0s" never suspends.
	SuspendAfter string            `json:"suspend_after"`
	Conf         map[string]string `json:"pg_conf,omitempty"`
	Trust        bool              `json:"trust,omitempty"`
	PGBin        string            `json:"pg_bin,omitempty"`
	// HTTP is the serverless driver's listener (WebSocket and SQL over
	// HTTP), host:port; empty: none.
	HTTP string `json:"http,omitempty"`
	// Stopped: `endpoint stop` — clients are refused until `endpoint start`.
	Stopped bool `json:"stopped,omitempty"`
}

// EndpointInfo is one line of `endpoint list`.
type EndpointInfo struct {
	endpoint.Info
	Address string `json:"address"`
	HTTP    string `json:"http,omitempty"`
}

// EndpointReply answers endpoint create and connection-string.
type EndpointReply struct {
	Branch     string `json:"branch"`
	Address    string `json:"address"`
	ConnString string `json:"connection_string"`
	// The serverless driver's URLs, with an HTTP listener.
	WebSocketURL string `json:"websocket_url,omitempty"`
	SQLOverHTTP  string `json:"sql_over_http_url,omitempty"`
}

// served endpoint: the listener and the compute behind it.
type runningEndpoint struct {
	spec   EndpointSpec
	ep     *endpoint.Endpoint
	proxy  *sqlproxy.Proxy
	http   *sqlproxy.HTTPServer // nil without spec.HTTP
	cancel context.CancelFunc
	done   chan struct{} // closed when the watcher stopped
}

const endpointsFile = "endpoints.json"

func (d *Daemon) passwordPath(branch string) string {
	return filepath.Join(d.dir, "endpoints", branch+".password")
}

// branchMounter serves an endpoint's branch through the daemon's own
// mounts, under the run directory.
type branchMounter struct {
	d      *Daemon
	branch string
}

func (m *branchMounter) dir() string { return filepath.Join(m.d.runDir, "branches", m.branch) }

func (m *branchMounter) Mount(ctx context.Context) (string, error) {
	if err := os.MkdirAll(m.dir(), 0o755); err != nil {
		return "", err
	}
	if _, err := m.d.Mount(ctx, MountRequest{Branch: m.branch, Mountpoint: m.dir(), Writeback: true}); err != nil {
		return "", err
	}
	return m.dir(), nil
}

// Unmount stops serving the branch; with nothing else mounted, the
// volume gives its memory back (the daemon's floor while suspended).
func (m *branchMounter) Unmount(context.Context) error {
	if err := m.d.Unmount(m.dir()); err != nil {
		return err
	}
	m.d.vol.ReleaseMemory()
	return nil
}

// EnableEndpoints makes the daemon serve endpoints, with their mounts and
// sockets under runDir. Only a daemon that runs until stopped (serve) may:
// one started by mount ends with its last mount, and a suspended endpoint
// has none.
func (d *Daemon) EnableEndpoints(runDir string) error {
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	d.mu.Lock()
	d.runDir = runDir
	d.endpoints = map[string]*runningEndpoint{}
	d.mu.Unlock()
	return nil
}

// restoreEndpoints starts the recorded endpoints, suspended and listening.
func (d *Daemon) restoreEndpoints() error {
	specs, err := d.readSpecs()
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range specs {
		if err := d.startEndpoint(s); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", s.Branch, err))
		}
	}
	return errors.Join(errs...)
}

func (d *Daemon) readSpecs() ([]EndpointSpec, error) {
	b, err := os.ReadFile(filepath.Join(d.dir, endpointsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var specs []EndpointSpec
	if err := json.Unmarshal(b, &specs); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(d.dir, endpointsFile), err)
	}
	return specs, nil
}

// writeSpecsLocked records the endpoints (atomically: a crash leaves the
// old list or the new one).
func (d *Daemon) writeSpecsLocked() error {
	specs := make([]EndpointSpec, 0, len(d.endpoints))
	for _, e := range d.endpoints {
		specs = append(specs, e.spec)
	}
	sort.Slice(specs, func(i, j int) bool { return specs[i].Branch < specs[j].Branch })
	b, _ := json.MarshalIndent(specs, "", "  ")
	path := filepath.Join(d.dir, endpointsFile)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	err = errors.Join(err, f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = durable.SyncDir(d.dir)
	}
	return err
}

// CreateEndpoint checks spec, generates the postgres role's password (kept
// 0600 under DATA/endpoints), listens, and records the endpoint. Nothing
// is left behind when it fails.
func (d *Daemon) CreateEndpoint(spec EndpointSpec) (EndpointReply, error) {
	d.epOps.Lock()
	defer d.epOps.Unlock()
	if d.endpoints == nil {
		return EndpointReply{}, d.checkSpec(&spec)
	}
	if _, ok := d.vol.Branches().ByName(spec.Branch); !ok {
		return EndpointReply{}, fmt.Errorf("no branch %q", spec.Branch)
	}
	if err := d.checkSpec(&spec); err != nil {
		return EndpointReply{}, err
	}
	d.mu.Lock()
	_, dup := d.endpoints[spec.Branch]
	d.mu.Unlock()
	if dup {
		return EndpointReply{}, fmt.Errorf("branch %q already has an endpoint", spec.Branch)
	}
	host, port, _ := net.SplitHostPort(spec.Listen)
	var err error
	if port == "0" {
		if spec.Listen, err = FreePort(host); err != nil {
			return EndpointReply{}, err
		}
	}
	pw := d.passwordPath(spec.Branch)
	_, statErr := os.Stat(pw)
	newPassword := errors.Is(statErr, os.ErrNotExist)
	if newPassword && !spec.Trust {
		if err := os.MkdirAll(filepath.Dir(pw), 0o700); err != nil {
			return EndpointReply{}, err
		}
		// A branch forked from one with a cluster holds that cluster, and
		// with it the postgres role's password: inherit it.
		secret := d.inheritedPassword(spec.Branch)
		if secret == "" {
			secret = pgserve.NewPassword()
		}
		if err := os.WriteFile(pw, []byte(secret+"\n"), 0o600); err != nil {
			return EndpointReply{}, fmt.Errorf("endpoint password: %w", err)
		}
	}
	if err := d.startEndpoint(spec); err != nil {
		if newPassword {
			os.Remove(pw)
		}
		return EndpointReply{}, err
	}
	d.mu.Lock()
	err = d.writeSpecsLocked()
	d.mu.Unlock()
	if err != nil {
		d.deleteEndpointLocked(spec.Branch)
		return EndpointReply{}, fmt.Errorf("record endpoint: %w", err)
	}
	return d.ConnectionString(spec.Branch)
}

// checkSpec refuses an endpoint that could not start, before anything is
// created for it.
func (d *Daemon) checkSpec(spec *EndpointSpec) error {
	if d.endpoints == nil {
		return errors.New("endpoints need a daemon started by `neonfs serve` (this one, started by `neonfs mount`, ends with its last mount)")
	}
	bin := spec.PGBin
	if bin == "" {
		bin = pgserve.DefaultBinDir
	}
	for _, b := range []string{"postgres", "initdb"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return fmt.Errorf("postgres binary %s: %w (choose the directory with --pg-bin)", filepath.Join(bin, b), err)
		}
	}
	if _, err := time.ParseDuration(spec.SuspendAfter); err != nil {
		return fmt.Errorf("--suspend-after %q: want a duration like 5m (0 never suspends)", spec.SuspendAfter)
	}
	if _, _, err := net.SplitHostPort(spec.Listen); err != nil {
		return fmt.Errorf("listen address %q: %w", spec.Listen, err)
	}
	if spec.HTTP != "" {
		if _, _, err := net.SplitHostPort(spec.HTTP); err != nil {
			return fmt.Errorf("--http %q: want HOST:PORT (%v)", spec.HTTP, err)
		}
		if spec.HTTP == spec.Listen {
			return fmt.Errorf("--http %s is the endpoint's Postgres port too: give it a port of its own", spec.HTTP)
		}
	}
	return nil
}

// maxSocketPath is the longest unix socket path Postgres accepts (the
// kernel's sun_path less its NUL).
const maxSocketPath = 107

// socketDir is where branch's Postgres puts its unix socket: under the run
// directory, named by a hash so that any branch name fits; when the run
// directory itself is too deep for a socket path, under /run/neonfs
// (root's: the directory must not be one another user could plant).
func (d *Daemon) socketDir(branch string) string {
	h := sha256.Sum256([]byte(branch))
	dir := filepath.Join(d.runDir, "sockets", hex.EncodeToString(h[:6]))
	if len(dir)+len("/.s.PGSQL.5432") <= maxSocketPath {
		return dir
	}
	r := sha256.Sum256([]byte(d.runDir))
	return filepath.Join("/run/neonfs/sockets", hex.EncodeToString(r[:6])+"-"+hex.EncodeToString(h[:6]))
}

// startEndpoint listens for spec's branch; the endpoint starts suspended.
func (d *Daemon) startEndpoint(spec EndpointSpec) error {
	suspend, err := time.ParseDuration(spec.SuspendAfter)
	if err != nil {
		return fmt.Errorf("suspend after %q: %w", spec.SuspendAfter, err)
	}
	password := ""
	if !spec.Trust {
		b, err := os.ReadFile(d.passwordPath(spec.Branch))
		if err != nil {
			return fmt.Errorf("endpoint password: %w", err)
		}
		password = strings.TrimSpace(string(b))
	}
	ln, err := d.listen(spec.Branch, spec.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", spec.Listen, err)
	}
	spec.Listen = ln.Addr().String()
	// wal_sync_method stays Postgres's fdatasync unless --pg-conf says
	// otherwise: open_datasync saves a FUSE round trip per commit but
	// TPC-B measured the same (median 1.01x over 3 rounds), and it makes
	// every WAL write of a bulk load a commit of its own (pgbench -i -s 20:
	// 16.2 s against 10.0 s).
	conf := maps.Clone(spec.Conf)
	ep := endpoint.New(endpoint.Config{Branch: spec.Branch, SuspendAfter: suspend, Stopped: spec.Stopped,
		PG: pgserve.Config{BinDir: spec.PGBin, SocketDir: d.socketDir(spec.Branch),
			Password: password, Trust: spec.Trust, Conf: conf}},
		&branchMounter{d: d, branch: spec.Branch})
	var hs *sqlproxy.HTTPServer
	if spec.HTTP != "" {
		hln, err := d.listen(spec.Branch, spec.HTTP)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen for HTTP on %s: %w", spec.HTTP, err)
		}
		spec.HTTP = hln.Addr().String()
		hs = sqlproxy.ServeHTTP(hln, ep, sqlproxy.HTTPOptions{})
		ep.OnSuspend(hs.CloseIdle)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningEndpoint{spec: spec, ep: ep, proxy: sqlproxy.Serve(ln, ep), http: hs, cancel: cancel, done: make(chan struct{})}
	go func() {
		ep.Run(ctx)
		close(r.done)
	}()
	d.mu.Lock()
	d.endpoints[spec.Branch] = r
	d.mu.Unlock()
	slog.Info("endpoint listening", "branch", spec.Branch, "address", spec.Listen, "suspend_after", suspend)
	return nil
}

// stopEndpoint stops listening and suspends the compute.
func (r *runningEndpoint) stop(ctx context.Context) error {
	r.cancel()
	<-r.done
	err := r.proxy.Close()
	if r.http != nil {
		err = errors.Join(err, r.http.Close())
	}
	return errors.Join(err, r.ep.Close(ctx))
}

// DeleteEndpoint stops an endpoint and forgets it (not its password: the
// cluster on the branch keeps it).
func (d *Daemon) DeleteEndpoint(branch string) error {
	d.epOps.Lock()
	defer d.epOps.Unlock()
	return d.deleteEndpointLocked(branch)
}

func (d *Daemon) deleteEndpointLocked(branch string) error {
	d.mu.Lock()
	r := d.endpoints[branch]
	delete(d.endpoints, branch)
	d.mu.Unlock()
	if r == nil {
		return fmt.Errorf("branch %q has no endpoint", branch)
	}
	err := r.stop(context.Background())
	d.mu.Lock()
	werr := d.writeSpecsLocked()
	d.mu.Unlock()
	// The password stays: the branch's cluster keeps it for a next endpoint.
	return errors.Join(err, werr)
}

// StopEndpoint suspends branch's endpoint and keeps it stopped (recorded,
// so across restarts too): clients are refused until StartEndpoint.
func (d *Daemon) StopEndpoint(ctx context.Context, branch string) error {
	d.epOps.Lock()
	defer d.epOps.Unlock()
	r, err := d.endpointOf(branch)
	if err != nil {
		return err
	}
	if err := d.setStopped(r, true); err != nil {
		return err
	}
	return r.ep.Stop(ctx)
}

// StartEndpoint lets clients wake branch's endpoint again, and wakes it.
func (d *Daemon) StartEndpoint(ctx context.Context, branch string) (EndpointReply, error) {
	d.epOps.Lock()
	defer d.epOps.Unlock()
	r, err := d.endpointOf(branch)
	if err != nil {
		return EndpointReply{}, err
	}
	if err := d.setStopped(r, false); err != nil {
		return EndpointReply{}, err
	}
	if err := r.ep.Start(ctx); err != nil {
		return EndpointReply{}, err
	}
	return d.ConnectionString(branch)
}

// SuspendEndpoint suspends branch's endpoint now; the next client wakes it.
func (d *Daemon) SuspendEndpoint(ctx context.Context, branch string) error {
	r, err := d.endpointOf(branch)
	if err != nil {
		return err
	}
	return r.ep.Suspend(ctx)
}

func (d *Daemon) endpointOf(branch string) (*runningEndpoint, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r := d.endpoints[branch]; r != nil {
		return r, nil
	}
	return nil, fmt.Errorf("branch %q has no endpoint", branch)
}

// setStopped records r's stopped flag.
func (d *Daemon) setStopped(r *runningEndpoint, stopped bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r.spec.Stopped == stopped {
		return nil
	}
	r.spec.Stopped = stopped
	if err := d.writeSpecsLocked(); err != nil {
		r.spec.Stopped = !stopped
		return fmt.Errorf("record endpoint: %w", err)
	}
	return nil
}

// holdBranch runs fn (a reset, restore or delete of branch) while the
// branch's endpoint, if any, cannot wake; an endpoint running Postgres
// refuses it unless force stops Postgres first.
func (d *Daemon) holdBranch(ctx context.Context, branch string, force bool, fn func() error) error {
	d.mu.Lock()
	r := d.endpoints[branch]
	d.mu.Unlock()
	if r == nil {
		return fn()
	}
	return r.ep.Hold(ctx, force, fn)
}

// DeleteBranch deletes a branch, and its endpoint with it: refused while
// the endpoint runs Postgres unless force.
func (d *Daemon) DeleteBranch(ctx context.Context, name string, force bool) error {
	d.epOps.Lock()
	defer d.epOps.Unlock()
	if err := d.holdBranch(ctx, name, force, func() error { return d.vol.DeleteBranch(ctx, name) }); err != nil {
		return err
	}
	d.mu.Lock()
	_, has := d.endpoints[name]
	d.mu.Unlock()
	if has {
		if err := d.deleteEndpointLocked(name); err != nil {
			return fmt.Errorf("deleted branch %s, but its endpoint: %w", name, err)
		}
	}
	// The password went with the cluster.
	os.Remove(d.passwordPath(name))
	return nil
}

// ResetBranch and RestoreBranch replace a branch's state under its
// endpoint: refused while the endpoint runs Postgres unless force; a
// suspended endpoint wakes into the new state.
func (d *Daemon) ResetBranch(ctx context.Context, name string, preserve, force bool) (res volume.ReplaceResult, err error) {
	err = d.holdBranch(ctx, name, force, func() (err error) {
		res, err = d.vol.ResetBranch(ctx, name, preserve)
		return err
	})
	return res, err
}

func (d *Daemon) RestoreBranch(ctx context.Context, name, point string, preserve, force bool) (res volume.ReplaceResult, err error) {
	err = d.holdBranch(ctx, name, force, func() (err error) {
		res, err = d.vol.RestoreBranch(ctx, name, point, preserve)
		return err
	})
	return res, err
}

// CreateReply answers branch create: the branch, and its endpoint when
// one was asked for.
type CreateReply struct {
	volume.BranchInfo
	Endpoint *EndpointReply `json:"endpoint,omitempty"`
}

// CreateBranch forks a branch; when the parent's endpoint runs Postgres
// and checkpoint is set (and the fork is at "now"), Postgres checkpoints
// just before, so the branch starts without replaying minutes of WAL.
// With spec, the branch gets an endpoint too, or is deleted again.
func (d *Daemon) CreateBranch(ctx context.Context, name, parent, point string, checkpoint bool, spec *EndpointSpec) (CreateReply, error) {
	if spec != nil {
		spec.Branch = name
		if err := d.checkSpec(spec); err != nil {
			return CreateReply{}, err
		}
	}
	if checkpoint && point == "" {
		d.mu.Lock()
		r := d.endpoints[parent]
		d.mu.Unlock()
		if r != nil {
			start := time.Now()
			if err := r.ep.Checkpoint(ctx); err != nil {
				return CreateReply{}, fmt.Errorf("checkpoint %s before the fork (skip with --no-checkpoint): %w", parent, err)
			}
			slog.Info("checkpointed before a fork", "parent", parent, "branch", name, "took", time.Since(start).Round(time.Millisecond))
		}
	}
	info, err := d.vol.CreateBranch(ctx, name, parent, point)
	if err != nil {
		return CreateReply{}, err
	}
	rep := CreateReply{BranchInfo: info}
	if spec == nil {
		return rep, nil
	}
	ep, err := d.CreateEndpoint(*spec)
	if err != nil {
		if derr := d.vol.DeleteBranch(ctx, name); derr != nil {
			return CreateReply{}, fmt.Errorf("endpoint: %w (and the new branch %s could not be deleted: %v)", err, name, derr)
		}
		return CreateReply{}, fmt.Errorf("endpoint: %w (branch %s not created)", err, name)
	}
	rep.Endpoint = &ep
	return rep, nil
}

// inheritedPassword is the password of the nearest ancestor of branch
// that has one, or "".
func (d *Daemon) inheritedPassword(branch string) string {
	tree := d.vol.Branches()
	b, ok := tree.ByName(branch)
	for ok && b.Parent != 0 {
		b, ok = tree.Branches[b.Parent], tree.Branches[b.Parent] != nil
		if !ok {
			break
		}
		if pw, err := os.ReadFile(d.passwordPath(b.Name)); err == nil {
			return strings.TrimSpace(string(pw))
		}
	}
	return ""
}

// ListEndpoints describes every endpoint.
func (d *Daemon) ListEndpoints() []EndpointInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]EndpointInfo, 0, len(d.endpoints))
	for _, r := range d.endpoints {
		out = append(out, EndpointInfo{Info: r.ep.Info(), Address: r.spec.Listen, HTTP: r.spec.HTTP})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Branch < out[j].Branch })
	return out
}

// ConnectionString is how a client reaches branch's endpoint.
func (d *Daemon) ConnectionString(branch string) (EndpointReply, error) {
	d.mu.Lock()
	r := d.endpoints[branch]
	d.mu.Unlock()
	if r == nil {
		return EndpointReply{}, fmt.Errorf("branch %q has no endpoint", branch)
	}
	host, port, _ := net.SplitHostPort(r.spec.Listen)
	u := url.URL{Scheme: "postgres", Host: net.JoinHostPort(host, port), Path: "/postgres"}
	if r.spec.Trust {
		u.User = url.User("postgres")
	} else {
		b, err := os.ReadFile(d.passwordPath(branch))
		if err != nil {
			return EndpointReply{}, fmt.Errorf("endpoint password: %w", err)
		}
		u.User = url.UserPassword("postgres", strings.TrimSpace(string(b)))
	}
	rep := EndpointReply{Branch: branch, Address: r.spec.Listen, ConnString: u.String()}
	if r.spec.HTTP != "" {
		rep.WebSocketURL = "ws://" + r.spec.HTTP + "/v2"
		rep.SQLOverHTTP = "http://" + r.spec.HTTP + "/sql"
	}
	return rep, nil
}

// stopEndpoints suspends every endpoint and stops listening (shutdown).
func (d *Daemon) stopEndpoints() {
	d.mu.Lock()
	all := make([]*runningEndpoint, 0, len(d.endpoints))
	for _, r := range d.endpoints {
		all = append(all, r)
	}
	d.mu.Unlock()
	for _, r := range all {
		if err := r.stop(context.Background()); err != nil {
			slog.Error("stop endpoint", "branch", r.spec.Branch, "err", err)
		}
	}
}

// FreePort returns host:port with the first port from 5432 that is free.
func FreePort(host string) (string, error) {
	for p := 5432; p < 5532; p++ {
		addr := net.JoinHostPort(host, strconv.Itoa(p))
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			ln.Close()
			return addr, nil
		}
	}
	return "", fmt.Errorf("no free port on %s from 5432 to 5531", host)
}

// Serve runs the daemon until ctx is done: the control socket, and the
// recorded endpoints (suspended, listening). Then it stops the endpoints,
// unmounts everything and closes the volume.
func Serve(ctx context.Context, d *Daemon, ready func()) error {
	ctl, err := serveControl(d)
	if err != nil {
		return errors.Join(err, d.vol.Close())
	}
	if err := d.restoreEndpoints(); err != nil {
		slog.Error("restore endpoints", "err", err)
	}
	d.closeUnclaimed()
	d.startCluster(ctx)
	ready()
	notify(notifyReady)
	<-ctx.Done()
	notify(notifyStopping)
	slog.Info("signal received: stopping endpoints and unmounting everything", "data", d.dir)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	ctl.Shutdown(sctx)
	cancel()
	d.stopEndpoints()
	d.Shutdown()
	if err := d.vol.Close(); err != nil {
		return fmt.Errorf("close volume: %w", err)
	}
	slog.Info("volume closed cleanly", "data", d.dir)
	return nil
}
