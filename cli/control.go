package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

func serveControl(dir string, vol *volume.Volume) (*http.Server, error) {
	path := controlPath(dir)
	os.Remove(path) // stale socket of a killed daemon; we hold the volume lock
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st, err := vol.Status(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		json.NewEncoder(w).Encode(st)
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

func controlClient(dir string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", controlPath(dir))
		},
	}}
}

func controlStatus(ctx context.Context, dir string) (volume.Status, error) {
	var st volume.Status
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://neonfs/status", nil)
	resp, err := controlClient(dir).Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return st, errNoDaemon
		}
		return st, fmt.Errorf("ask daemon over %s: %w", controlPath(dir), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var msg [512]byte
		n, _ := resp.Body.Read(msg[:])
		return st, fmt.Errorf("daemon: %s", msg[:n])
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}
