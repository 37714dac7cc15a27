package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"syscall"

	"github.com/neonfs/neonfs/daemon"
	"github.com/neonfs/neonfs/volume"
)

var errNoDaemon = errors.New("no daemon")

// volumeAPI is what the CLI asks of a volume. *volume.Volume implements
// it when the CLI opens the volume itself; remote when a daemon holds it.
// Both answer the same, so every command works either way.
type volumeAPI interface {
	Status(ctx context.Context) (volume.Status, error)
	ListBranches(ctx context.Context) ([]volume.BranchInfo, error)
	CreateBranch(ctx context.Context, name, parent, point string) (volume.BranchInfo, error)
	DeleteBranch(ctx context.Context, name string) error
	ResetBranch(ctx context.Context, name string, preserve bool) (volume.ReplaceResult, error)
	RestoreBranch(ctx context.Context, name, point string, preserve bool) (volume.ReplaceResult, error)
	Diff(ctx context.Context, a, b string) (volume.Diff, error)
	GC(ctx context.Context, progress func(format string, args ...any)) (volume.GCResult, error)
}

// remote is a volume held by a daemon, reached over its control socket.
type remote struct {
	dir    string
	client *http.Client
}

func dialDaemon(dir string) *remote {
	return &remote{dir: dir, client: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", daemon.ControlPath(dir))
		},
	}}}
}

// call runs one call on the daemon; errNoDaemon when none listens.
func (r *remote) call(ctx context.Context, name string, args daemon.Args, out any) error {
	body, _ := json.Marshal(args)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://neonfs/rpc/"+name, bytes.NewReader(body))
	resp, err := r.client.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return errNoDaemon
		}
		return fmt.Errorf("ask the daemon over %s: %w", daemon.ControlPath(r.dir), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e daemon.ErrorReply
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("daemon answered %s to %s", resp.Status, name)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode the daemon's answer to %s: %w", name, err)
	}
	return nil
}

func (r *remote) Status(ctx context.Context) (st volume.Status, err error) {
	return st, r.call(ctx, "status", daemon.Args{}, &st)
}

func (r *remote) ListBranches(ctx context.Context) (out []volume.BranchInfo, err error) {
	return out, r.call(ctx, "branches", daemon.Args{}, &out)
}

func (r *remote) CreateBranch(ctx context.Context, name, parent, point string) (info volume.BranchInfo, err error) {
	return info, r.call(ctx, "create", daemon.Args{Name: name, Parent: parent, Point: point}, &info)
}

func (r *remote) DeleteBranch(ctx context.Context, name string) error {
	return r.call(ctx, "delete", daemon.Args{Name: name}, nil)
}

func (r *remote) ResetBranch(ctx context.Context, name string, preserve bool) (res volume.ReplaceResult, err error) {
	return res, r.call(ctx, "reset", daemon.Args{Name: name, Preserve: preserve}, &res)
}

func (r *remote) RestoreBranch(ctx context.Context, name, point string, preserve bool) (res volume.ReplaceResult, err error) {
	return res, r.call(ctx, "restore", daemon.Args{Name: name, Point: point, Preserve: preserve}, &res)
}

func (r *remote) Diff(ctx context.Context, a, b string) (d volume.Diff, err error) {
	return d, r.call(ctx, "diff", daemon.Args{A: a, B: b}, &d)
}

func (r *remote) GC(ctx context.Context, progress func(format string, args ...any)) (volume.GCResult, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://neonfs/gc", nil)
	resp, err := r.client.Do(req)
	if err != nil {
		return volume.GCResult{}, fmt.Errorf("ask the daemon over %s: %w", daemon.ControlPath(r.dir), err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var l daemon.GCLine
		if err := dec.Decode(&l); err != nil {
			return volume.GCResult{}, fmt.Errorf("the daemon stopped answering gc: %w", err)
		}
		switch {
		case l.Error != "":
			return volume.GCResult{}, errors.New(l.Error)
		case l.Result != nil:
			return *l.Result, nil
		default:
			progress("%s", l.Progress)
		}
	}
}

// daemonRunning reports whether a daemon answers on dir's control socket.
func daemonRunning(ctx context.Context, dir string) (*remote, bool, error) {
	r := dialDaemon(dir)
	if _, err := os.Stat(daemon.ControlPath(dir)); err != nil {
		return nil, false, nil
	}
	// A cheap call: status would list the object store.
	switch err := r.call(ctx, "ping", daemon.Args{}, nil); {
	case err == nil:
		return r, true, nil
	case errors.Is(err, errNoDaemon):
		return nil, false, nil
	default:
		return nil, false, err
	}
}

// withVolume runs fn against the daemon holding dir, or, when none does,
// against the volume opened here (without background flushes: a command
// should not leave work behind).
func withVolume(ctx context.Context, dir string, fn func(volumeAPI) error) error {
	return withVolumeOpts(ctx, dir, volume.Options{NoFlush: true}, fn)
}

// withVolumeOpts is withVolume, opening the volume with opts when no
// daemon holds it.
func withVolumeOpts(ctx context.Context, dir string, opts volume.Options, fn func(volumeAPI) error) error {
	if _, err := volume.ReadConfig(dir); err != nil {
		return err
	}
	r, ok, err := daemonRunning(ctx, dir)
	if err != nil {
		return err
	}
	if ok {
		return fn(r)
	}
	vol, err := volume.Open(ctx, dir, opts)
	if err != nil {
		return fmt.Errorf("open volume: %w", err)
	}
	return errors.Join(fn(vol), vol.Close())
}
