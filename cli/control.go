package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/neonfs/neonfs/volume"
)

// The control socket lets the CLI talk to the daemon that holds a volume
// open (the volume lock keeps everyone else out). Mode 0600: root only.
func controlPath(dir string) string { return filepath.Join(dir, "control.sock") }

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

// rpcArgs carries every call's arguments; each call reads its own.
type rpcArgs struct {
	Name       string `json:"name,omitempty"`
	Parent     string `json:"parent,omitempty"`
	Point      string `json:"point,omitempty"`
	Preserve   bool   `json:"preserve,omitempty"`
	A          string `json:"a,omitempty"`
	B          string `json:"b,omitempty"`
	Mountpoint string `json:"mountpoint,omitempty"`
	Writeback  bool   `json:"writeback,omitempty"`
}

type rpcError struct {
	Error string `json:"error"`
}

// rpcHandlers maps a call name to its implementation on the daemon.
func rpcHandlers(d *daemon) map[string]func(context.Context, rpcArgs) (any, error) {
	v := d.vol
	return map[string]func(context.Context, rpcArgs) (any, error){
		"status":   func(ctx context.Context, _ rpcArgs) (any, error) { return v.Status(ctx) },
		"ping":     func(context.Context, rpcArgs) (any, error) { return "pong", nil },
		"branches": func(ctx context.Context, _ rpcArgs) (any, error) { return v.ListBranches(ctx) },
		"create": func(ctx context.Context, a rpcArgs) (any, error) {
			return v.CreateBranch(ctx, a.Name, a.Parent, a.Point)
		},
		"delete": func(ctx context.Context, a rpcArgs) (any, error) { return nil, v.DeleteBranch(ctx, a.Name) },
		"reset": func(ctx context.Context, a rpcArgs) (any, error) {
			return v.ResetBranch(ctx, a.Name, a.Preserve)
		},
		"restore": func(ctx context.Context, a rpcArgs) (any, error) {
			return v.RestoreBranch(ctx, a.Name, a.Point, a.Preserve)
		},
		"diff": func(ctx context.Context, a rpcArgs) (any, error) { return v.Diff(ctx, a.A, a.B) },
		"mount": func(ctx context.Context, a rpcArgs) (any, error) {
			return d.mount(ctx, mountRequest{Branch: a.Name, At: a.Point, Mountpoint: a.Mountpoint, Writeback: a.Writeback})
		},
		"unmount": func(ctx context.Context, a rpcArgs) (any, error) { return nil, d.unmount(a.Mountpoint) },
	}
}

func serveControl(d *daemon) (*http.Server, error) {
	path := controlPath(d.dir)
	os.Remove(path) // stale socket of a killed daemon; we hold the volume lock
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	handlers := rpcHandlers(d)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /rpc/{call}", func(w http.ResponseWriter, r *http.Request) {
		h := handlers[r.PathValue("call")]
		if h == nil {
			http.Error(w, "unknown call", http.StatusNotFound)
			return
		}
		var args rpcArgs
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&args); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(rpcError{Error: "bad request: " + err.Error()})
			return
		}
		out, err := h(r.Context(), args)
		if err != nil {
			w.WriteHeader(http.StatusUnprocessableEntity)
			json.NewEncoder(w).Encode(rpcError{Error: err.Error()})
			return
		}
		json.NewEncoder(w).Encode(out)
	})
	// gc streams its progress: one JSON object per line, the last holding
	// the result or the error.
	mux.HandleFunc("POST /gc", func(w http.ResponseWriter, r *http.Request) {
		enc := json.NewEncoder(w)
		flusher, _ := w.(http.Flusher)
		res, err := d.vol.GC(r.Context(), func(format string, args ...any) {
			enc.Encode(gcLine{Progress: fmt.Sprintf(format, args...)})
			if flusher != nil {
				flusher.Flush()
			}
		})
		if err != nil {
			enc.Encode(gcLine{Error: err.Error()})
			return
		}
		enc.Encode(gcLine{Result: &res})
	})
	// Profiles, for diagnosing a slow volume in place (root only, like the socket).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("control socket", "err", err)
		}
	}()
	return srv, nil
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
			return d.DialContext(ctx, "unix", controlPath(dir))
		},
	}}}
}

// call runs one call on the daemon; errNoDaemon when none listens.
func (r *remote) call(ctx context.Context, name string, args rpcArgs, out any) error {
	body, _ := json.Marshal(args)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://neonfs/rpc/"+name, bytes.NewReader(body))
	resp, err := r.client.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return errNoDaemon
		}
		return fmt.Errorf("ask the daemon over %s: %w", controlPath(r.dir), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e rpcError
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
	return st, r.call(ctx, "status", rpcArgs{}, &st)
}

func (r *remote) ListBranches(ctx context.Context) (out []volume.BranchInfo, err error) {
	return out, r.call(ctx, "branches", rpcArgs{}, &out)
}

func (r *remote) CreateBranch(ctx context.Context, name, parent, point string) (info volume.BranchInfo, err error) {
	return info, r.call(ctx, "create", rpcArgs{Name: name, Parent: parent, Point: point}, &info)
}

func (r *remote) DeleteBranch(ctx context.Context, name string) error {
	return r.call(ctx, "delete", rpcArgs{Name: name}, nil)
}

func (r *remote) ResetBranch(ctx context.Context, name string, preserve bool) (res volume.ReplaceResult, err error) {
	return res, r.call(ctx, "reset", rpcArgs{Name: name, Preserve: preserve}, &res)
}

func (r *remote) RestoreBranch(ctx context.Context, name, point string, preserve bool) (res volume.ReplaceResult, err error) {
	return res, r.call(ctx, "restore", rpcArgs{Name: name, Point: point, Preserve: preserve}, &res)
}

func (r *remote) Diff(ctx context.Context, a, b string) (d volume.Diff, err error) {
	return d, r.call(ctx, "diff", rpcArgs{A: a, B: b}, &d)
}

type gcLine struct {
	Progress string           `json:"progress,omitempty"`
	Result   *volume.GCResult `json:"result,omitempty"`
	Error    string           `json:"error,omitempty"`
}

func (r *remote) GC(ctx context.Context, progress func(format string, args ...any)) (volume.GCResult, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://neonfs/gc", nil)
	resp, err := r.client.Do(req)
	if err != nil {
		return volume.GCResult{}, fmt.Errorf("ask the daemon over %s: %w", controlPath(r.dir), err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var l gcLine
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
	if _, err := os.Stat(controlPath(dir)); err != nil {
		return nil, false, nil
	}
	// A cheap call: status would list the object store.
	switch err := r.call(ctx, "ping", rpcArgs{}, nil); {
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
