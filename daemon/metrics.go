package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/neonfs/neonfs/endpoint"
	"github.com/neonfs/neonfs/internal/hist"
	"github.com/neonfs/neonfs/metrics"
)

// MetricsSource is what the daemon's /metrics reports: the volume's
// counters (volume.Metrics, never Status, which lists the object store),
// its endpoints' and its FUSE requests.
func (d *Daemon) MetricsSource() metrics.Source {
	return metrics.Source{Volume: d.vol.Metrics, Endpoints: d.endpointMetrics, FuseRequests: d.FuseRequests}
}

// FuseRequests returns the FUSE requests all this daemon's mounts have
// answered since it started, by opcode, with the time the file system
// took: the round trips a Postgres commit costs (WRITE, SETATTR, FSYNC).
func (d *Daemon) FuseRequests() []hist.Timing { return d.requests.Snapshot() }

func (d *Daemon) endpointMetrics() []metrics.EndpointStats {
	d.mu.Lock()
	eps := make([]*endpoint.Endpoint, 0, len(d.endpoints))
	for _, r := range d.endpoints {
		eps = append(eps, r.ep)
	}
	d.mu.Unlock()
	out := make([]metrics.EndpointStats, 0, len(eps))
	for _, ep := range eps {
		out = append(out, metrics.EndpointStats{Info: ep.Info(), ColdStarts: ep.ColdStarts()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Info.Branch < out[j].Info.Branch })
	return out
}

// ServeMetrics serves GET /metrics over HTTP on addr (host:port) until
// stop. Unlike the control socket it is open to anyone who can reach addr,
// so it serves nothing else.
func (d *Daemon) ServeMetrics(addr string) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			err = op.Err // "bind: address already in use", without repeating the address
		}
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(d.MetricsSource()))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("metrics", "address", ln.Addr().String(), "err", err)
		}
	}()
	slog.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}
