package daemon

import (
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
	"time"

	"github.com/neonfs/neonfs/volume"
)

// The control socket lets the CLI talk to the daemon that holds a volume
// open (the volume lock keeps everyone else out): HTTP over a unix socket,
// mode 0600, root only. The client is the cli's; these are the server and
// the wire types both use.

// ControlPath is where the daemon of the volume in dir listens.
func ControlPath(dir string) string { return filepath.Join(dir, "control.sock") }

// Args carries every call's arguments; each call reads its own.
type Args struct {
	Name       string `json:"name,omitempty"`
	Parent     string `json:"parent,omitempty"`
	Point      string `json:"point,omitempty"`
	Preserve   bool   `json:"preserve,omitempty"`
	A          string `json:"a,omitempty"`
	B          string `json:"b,omitempty"`
	Mountpoint string `json:"mountpoint,omitempty"`
	Writeback  bool   `json:"writeback,omitempty"`
	// Endpoint is endpoint create's, and branch create's with --endpoint.
	Endpoint *EndpointSpec `json:"endpoint,omitempty"`
	// Force: branch delete, reset and restore stop the branch's Postgres
	// instead of refusing.
	Force bool `json:"force,omitempty"`
	// NoCheckpoint: branch create forks without asking the parent's
	// Postgres for a checkpoint first.
	NoCheckpoint bool `json:"no_checkpoint,omitempty"`
}

// ErrorReply is a failed call's answer.
type ErrorReply struct {
	Error string `json:"error"`
}

// rpcHandlers maps a call name to its implementation on the daemon.
func rpcHandlers(d *Daemon) map[string]func(context.Context, Args) (any, error) {
	v := d.vol
	return map[string]func(context.Context, Args) (any, error){
		"status":   func(ctx context.Context, _ Args) (any, error) { return v.Status(ctx) },
		"ping":     func(context.Context, Args) (any, error) { return "pong", nil },
		"branches": func(ctx context.Context, _ Args) (any, error) { return v.ListBranches(ctx) },
		"create": func(ctx context.Context, a Args) (any, error) {
			return d.CreateBranch(ctx, a.Name, a.Parent, a.Point, !a.NoCheckpoint, a.Endpoint)
		},
		"delete": func(ctx context.Context, a Args) (any, error) { return nil, d.DeleteBranch(ctx, a.Name, a.Force) },
		"reset": func(ctx context.Context, a Args) (any, error) {
			return d.ResetBranch(ctx, a.Name, a.Preserve, a.Force)
		},
		"restore": func(ctx context.Context, a Args) (any, error) {
			return d.RestoreBranch(ctx, a.Name, a.Point, a.Preserve, a.Force)
		},
		"diff": func(ctx context.Context, a Args) (any, error) { return v.Diff(ctx, a.A, a.B) },
		"mount": func(ctx context.Context, a Args) (any, error) {
			return d.Mount(ctx, MountRequest{Branch: a.Name, At: a.Point, Mountpoint: a.Mountpoint, Writeback: a.Writeback})
		},
		"unmount": func(ctx context.Context, a Args) (any, error) { return nil, d.Unmount(a.Mountpoint) },
		"endpoint-create": func(ctx context.Context, a Args) (any, error) {
			if a.Endpoint == nil {
				return nil, errors.New("endpoint create: no endpoint given")
			}
			return d.CreateEndpoint(*a.Endpoint)
		},
		"endpoint-list":     func(context.Context, Args) (any, error) { return d.ListEndpoints(), nil },
		"endpoint-delete":   func(ctx context.Context, a Args) (any, error) { return nil, d.DeleteEndpoint(a.Name) },
		"endpoint-stop":     func(ctx context.Context, a Args) (any, error) { return nil, d.StopEndpoint(ctx, a.Name) },
		"endpoint-start":    func(ctx context.Context, a Args) (any, error) { return d.StartEndpoint(ctx, a.Name) },
		"endpoint-suspend":  func(ctx context.Context, a Args) (any, error) { return nil, d.SuspendEndpoint(ctx, a.Name) },
		"connection-string": func(ctx context.Context, a Args) (any, error) { return d.ConnectionString(a.Name) },
	}
}

func serveControl(d *Daemon) (*http.Server, error) {
	path := ControlPath(d.dir)
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
	for name, h := range clusterHandlers(d) {
		handlers[name] = h
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /rpc/{call}", func(w http.ResponseWriter, r *http.Request) {
		h := handlers[r.PathValue("call")]
		if h == nil {
			http.Error(w, "unknown call", http.StatusNotFound)
			return
		}
		var args Args
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&args); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(ErrorReply{Error: "bad request: " + err.Error()})
			return
		}
		out, err := h(r.Context(), args)
		if err != nil {
			w.WriteHeader(http.StatusUnprocessableEntity)
			json.NewEncoder(w).Encode(ErrorReply{Error: err.Error()})
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
			enc.Encode(GCLine{Progress: fmt.Sprintf(format, args...)})
			if flusher != nil {
				flusher.Flush()
			}
		})
		if err != nil {
			enc.Encode(GCLine{Error: err.Error()})
			return
		}
		enc.Encode(GCLine{Result: &res})
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

// GCLine is one line of gc's streamed answer: progress, then the result
// or the error.
type GCLine struct {
	Progress string           `json:"progress,omitempty"`
	Result   *volume.GCResult `json:"result,omitempty"`
	Error    string           `json:"error,omitempty"`
}
