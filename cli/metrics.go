package cli

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	ucli "github.com/urfave/cli/v2"

	"github.com/neonfs/neonfs/daemon"
)

// metricsFlag is serve's and mount's: where the daemon serves Prometheus
// metrics.
var metricsFlag = &ucli.StringFlag{Name: "metrics", Usage: "serve Prometheus metrics at http://ADDR/metrics (host:port, e.g. 127.0.0.1:9474 or :9474)"}

// checkMetricsAddr refuses a --metrics value that is not host:port with a
// port from 1 to 65535, or that cannot be listened on ("" is no metrics).
// It runs before the volume is opened: a busy port should not cost a log
// replay and a flush first.
func checkMetricsAddr(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 {
		return fmt.Errorf("--metrics %q: want host:port with a port from 1 to 65535, like 127.0.0.1:9474 or :9474", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			err = op.Err
		}
		return fmt.Errorf("metrics address %s: %w", addr, err)
	}
	return ln.Close()
}

// startMetrics serves d's metrics on addr ("": none) and returns how to
// stop them.
func startMetrics(d *daemon.Daemon, addr string) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	return d.ServeMetrics(addr)
}
