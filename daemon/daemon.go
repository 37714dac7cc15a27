// Package daemon is the runtime of a volume's daemon: it holds the volume
// open, serves any number of its branches over FUSE (each at its own
// mountpoint) and answers the control socket (control.go). It ends when its
// last mount goes away or at Shutdown. The cli parses arguments and talks
// to it over the socket; the daemon never imports the cli, and decides
// nothing about storage (that is the volume's).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/neonfs/neonfs/fusefs"
	"github.com/neonfs/neonfs/internal/hist"
	"github.com/neonfs/neonfs/volume"
)

// Daemon holds a volume open and serves any number of its branches, each
// at its own mountpoint. It ends when its last mount goes away (unmounted
// by `neonfs unmount`, by umount, or at SIGINT/SIGTERM).
type Daemon struct {
	dir   string
	vol   *volume.Volume
	debug bool
	fuse  FUSETuning

	// requests counts the FUSE requests of all the mounts, by opcode.
	requests hist.Timings

	mu     sync.Mutex
	mounts map[string]*served // by mountpoint
	idle   chan struct{}      // closed when the last mount is gone

	// Endpoints (serve only; nil endpoints: this daemon serves none).
	runDir    string
	endpoints map[string]*runningEndpoint // by branch
	epOps     sync.Mutex                  // endpoint create and delete take turns (before mu)
	inherited inheritedListeners          // systemd's sockets, until endpoints take them (systemd.go)
}

type served struct {
	bfs      *volume.BranchFS
	srv      *fuse.Server
	mnt      string
	done     chan struct{} // closed when the FUSE server stopped
	released chan struct{} // closed when the branch is released too
}

// MountRequest asks to serve a branch at a mountpoint.
type MountRequest struct {
	Branch     string
	At         string // a point in history: read-only time travel
	Mountpoint string
	Writeback  bool
}

// MountReply says what was mounted, and by which process.
type MountReply struct {
	Branch     string `json:"branch"`
	Mountpoint string `json:"mountpoint"`
	ReadOnly   bool   `json:"read_only"`
	Pid        int    `json:"pid"`
}

// FUSETuning is how this daemon's mounts talk to the kernel.
type FUSETuning struct {
	// WALDirectIO: WAL segments bypass the page cache and a write through
	// an O_DSYNC handle returns committed (fusefs.Options.WALDirectIO).
	WALDirectIO bool
	// MaxBackground is the kernel's limit of background requests
	// (writeback, readahead) in flight; 0 leaves the kernel's 12.
	MaxBackground int
}

// SetFUSE sets the tuning of the mounts made from now on.
func (d *Daemon) SetFUSE(t FUSETuning) { d.fuse = t }

// New returns a daemon for the open volume in dir.
func New(dir string, vol *volume.Volume, debug bool) *Daemon {
	d := &Daemon{dir: dir, vol: vol, debug: debug, mounts: map[string]*served{}, idle: make(chan struct{})}
	if vol.Cluster() != nil {
		vol.OnLeaseLost(d.leaseLost)
	}
	return d
}

// CheckMountpoint refuses a mountpoint that is missing, not a directory,
// or already mounted.
func CheckMountpoint(mnt string) error {
	fi, err := os.Stat(mnt)
	if err != nil {
		return fmt.Errorf("mountpoint: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("mountpoint %s is not a directory", mnt)
	}
	if m, err := fusefs.IsMounted(mnt); err != nil {
		return err
	} else if m {
		return fmt.Errorf("mountpoint %s is already mounted (unmount it first)", mnt)
	}
	return nil
}

// Mount serves a branch (or a past state of one, read-only) at a
// mountpoint.
func (d *Daemon) Mount(ctx context.Context, req MountRequest) (MountReply, error) {
	mnt, err := filepath.Abs(req.Mountpoint)
	if err != nil {
		return MountReply{}, err
	}
	if err := CheckMountpoint(mnt); err != nil {
		return MountReply{}, err
	}
	d.mu.Lock()
	if _, busy := d.mounts[mnt]; busy {
		d.mu.Unlock()
		return MountReply{}, fmt.Errorf("mountpoint %s is already served by this daemon", mnt)
	}
	d.mu.Unlock()
	start := time.Now()
	var bfs *volume.BranchFS
	if req.At != "" {
		bfs, err = d.vol.MountAt(ctx, req.Branch, req.At)
	} else {
		bfs, err = d.vol.Mount(ctx, req.Branch)
	}
	if err != nil {
		return MountReply{}, err
	}
	bfs.SetMountpoint(mnt)
	srv, err := fusefs.Mount(bfs, mnt, fusefs.Options{
		WritebackCache: req.Writeback && !bfs.ReadOnly(), Debug: d.debug, Requests: &d.requests,
		WALDirectIO: d.fuse.WALDirectIO, MaxBackground: d.fuse.MaxBackground})
	if err != nil {
		return MountReply{}, errors.Join(err, d.vol.Unmount(bfs))
	}
	s := &served{bfs: bfs, srv: srv, mnt: mnt, done: make(chan struct{}), released: make(chan struct{})}
	d.mu.Lock()
	d.mounts[mnt] = s
	d.mu.Unlock()
	go func() {
		srv.Wait()
		close(s.done)
		d.release(s)
		close(s.released)
	}()
	inodes, _ := bfs.Counts()
	slog.Info("mounted", "branch", bfs.Name(), "read_only", bfs.ReadOnly(), "mountpoint", mnt, "inodes", inodes,
		"took", time.Since(start).Round(time.Millisecond))
	return MountReply{Branch: bfs.Name(), Mountpoint: mnt, ReadOnly: bfs.ReadOnly(), Pid: os.Getpid()}, nil
}

// release forgets a mount whose FUSE server stopped.
func (d *Daemon) release(s *served) {
	if err := d.vol.Unmount(s.bfs); err != nil {
		slog.Error("release branch", "branch", s.bfs.Name(), "err", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mounts[s.mnt] == s {
		delete(d.mounts, s.mnt)
	}
	slog.Info("unmounted", "branch", s.bfs.Name(), "mountpoint", s.mnt)
	if len(d.mounts) == 0 {
		select {
		case <-d.idle:
		default:
			close(d.idle)
		}
	}
}

// Unmount stops serving mnt.
func (d *Daemon) Unmount(mnt string) error {
	abs, err := filepath.Abs(mnt)
	if err != nil {
		return err
	}
	d.mu.Lock()
	s := d.mounts[abs]
	d.mu.Unlock()
	if s == nil {
		return fmt.Errorf("%s is not served by the daemon of %s", abs, d.dir)
	}
	unmount(s.srv, s.mnt, s.done)
	// The branch can be mounted again once this returns.
	select {
	case <-s.released:
	case <-time.After(30 * time.Second):
		slog.Warn("branch not released after unmount", "mountpoint", s.mnt)
	}
	return nil
}

// Shutdown unmounts everything.
func (d *Daemon) Shutdown() {
	d.mu.Lock()
	var all []*served
	for _, s := range d.mounts {
		all = append(all, s)
	}
	d.mu.Unlock()
	if len(all) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unmount(s.srv, s.mnt, s.done)
		}()
	}
	wg.Wait()
	// The release goroutines run after each server stops.
	select {
	case <-d.idle:
	case <-time.After(30 * time.Second):
		slog.Warn("mounts still held after unmount")
	}
}

// unmount retries while the mount is busy (a process still has files open),
// then detaches it lazily so the daemon can still close the volume cleanly.
func unmount(srv interface{ Unmount() error }, mnt string, done <-chan struct{}) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := srv.Unmount()
		if err == nil {
			break
		}
		select {
		case <-done:
			return // already gone (unmounted from outside)
		default:
		}
		if time.Now().After(deadline) {
			slog.Warn("mount still busy: detaching lazily", "mountpoint", mnt, "err", err)
			syscall.Unmount(mnt, syscall.MNT_DETACH)
			break
		}
		slog.Warn("unmount failed, retrying", "mountpoint", mnt, "err", err)
		time.Sleep(500 * time.Millisecond)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		slog.Warn("FUSE server did not stop after unmount", "mountpoint", mnt)
	}
}

// Run serves first, then the control socket, until ctx is done (then it
// unmounts everything) or the last mount goes away, and closes the volume.
// ready is told once first is mounted.
func Run(ctx context.Context, d *Daemon, first MountRequest, ready func(MountReply)) error {
	rep, err := d.Mount(ctx, first)
	if err != nil {
		return errors.Join(err, d.vol.Close())
	}
	ctl, err := serveControl(d)
	if err != nil {
		slog.Warn("control socket unavailable: other commands will not reach this daemon", "err", err)
	}
	ready(rep)

	// Shutdown, not Close: the call that unmounted the last mount is
	// still writing its answer.
	stopControl := func() {
		if ctl != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ctl.Shutdown(sctx)
			cancel()
			ctl = nil
		}
	}
	select {
	case <-ctx.Done():
		slog.Info("signal received: unmounting everything", "data", d.dir)
		stopControl()
		d.Shutdown()
	case <-d.idle:
		slog.Info("last mount gone: closing the volume", "data", d.dir)
	}
	stopControl()
	if err := d.vol.Close(); err != nil {
		return fmt.Errorf("close volume: %w", err)
	}
	slog.Info("volume closed cleanly", "data", d.dir)
	return nil
}
