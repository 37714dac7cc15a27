package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/neonfs/neonfs/daemon"
	"github.com/neonfs/neonfs/volume"
)

func serveCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "serve",
		Usage: "run the volume's daemon in the foreground (what systemd runs): control socket and endpoints",
		Description: "Serves the volume until SIGINT/SIGTERM: the control socket, branch mounts asked\n" +
			"for with `neonfs mount`, and the endpoints recorded in the volume (listening,\n" +
			"suspended until a client connects).",
		ArgsUsage: " ",
		Flags: append([]ucli.Flag{dataFlag,
			&ucli.StringFlag{Name: "run-dir", Usage: "where endpoint branches are mounted and Postgres sockets live (default /run/neonfs/<volume dir name>)"},
			&ucli.BoolFlag{Name: "fuse-debug", Usage: "log every FUSE request"},
			metricsFlag,
		}, append(volumeFlags(), fuseFlags()...)...),
		Action: func(c *ucli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			dir := c.String("data")
			opts, err := volumeOptions(c)
			if err != nil {
				return err
			}
			tuning, err := fuseTuning(c)
			if err != nil {
				return err
			}
			if err := checkMetricsAddr(c.String("metrics")); err != nil {
				return err
			}
			if _, err := volume.ReadConfig(dir); err != nil {
				return err
			}
			if _, ok, err := daemonRunning(c.Context, dir); err != nil {
				return err
			} else if ok {
				return fmt.Errorf("a daemon already serves %s", dir)
			}
			runDir := c.String("run-dir")
			if runDir == "" {
				abs, _ := filepath.Abs(dir)
				runDir = filepath.Join("/run/neonfs", filepath.Base(abs))
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			daemon.TuneGC()
			vol, err := volume.Open(ctx, dir, opts)
			if err != nil {
				return fmt.Errorf("open volume: %w", err)
			}
			d := daemon.New(dir, vol, c.Bool("fuse-debug"))
			d.SetFUSE(tuning)
			d.Inherit(daemon.SystemdListeners()) // neonfs@VOLUME.socket's, if any
			if err := d.EnableEndpoints(runDir); err != nil {
				return errors.Join(err, vol.Close())
			}
			stopMetrics, err := startMetrics(d, c.String("metrics"))
			if err != nil {
				vol.Close()
				return err
			}
			defer stopMetrics()
			return daemon.Serve(ctx, d, func() {
				fmt.Fprintf(os.Stderr, "neonfs: serving %s (endpoints under %s)\n", dir, runDir)
			})
		},
	}
}

// remoteFor returns the daemon serving dir, or an error saying to start one.
func remoteFor(ctx context.Context, dir string) (*remote, error) {
	if _, err := volume.ReadConfig(dir); err != nil {
		return nil, err
	}
	r, ok, err := daemonRunning(ctx, dir)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("no daemon serves %s: start one with `neonfs serve --data %s`", dir, dir)
	}
	return r, nil
}

func endpointCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "endpoint",
		Usage: "Postgres endpoints: one per branch, suspended when idle, woken by the next connection",
		Subcommands: []*ucli.Command{
			{
				Name:      "create",
				Usage:     "serve a branch's Postgres on a port (initdb on first use); prints the connection string",
				ArgsUsage: "BRANCH",
				Flags:     append([]ucli.Flag{dataFlag, jsonFlag}, endpointFlags()...),
				Action: func(c *ucli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("endpoint create: want exactly one BRANCH argument, got %d", c.NArg())
					}
					spec, err := endpointSpec(c, c.Args().First())
					if err != nil {
						return err
					}
					r, err := remoteFor(c.Context, c.String("data"))
					if err != nil {
						return err
					}
					var rep daemon.EndpointReply
					if err := r.call(c.Context, "endpoint-create", daemon.Args{Endpoint: spec}, &rep); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(rep)
					}
					printEndpoint(rep)
					return nil
				},
			},
			{
				Name:      "list",
				Usage:     "show endpoints: branch, address, state, Postgres pid, connections, last activity, cold starts",
				ArgsUsage: " ",
				Flags:     []ucli.Flag{dataFlag, jsonFlag},
				Action: func(c *ucli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					r, err := remoteFor(c.Context, c.String("data"))
					if err != nil {
						return err
					}
					var list []daemon.EndpointInfo
					if err := r.call(c.Context, "endpoint-list", daemon.Args{}, &list); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(list)
					}
					w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "BRANCH\tADDRESS\tHTTP\tSTATE\tPID\tCONNS\tLAST ACTIVITY\tCOLD STARTS\tLAST COLD START")
					for _, e := range list {
						pid := "-"
						if e.Pid != 0 {
							pid = strconv.Itoa(e.Pid)
						}
						httpAddr := e.HTTP
						if httpAddr == "" {
							httpAddr = "-"
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", e.Branch, e.Address, httpAddr, e.State, pid, e.Connections,
							e.LastActivity.UTC().Format(time.RFC3339), e.ColdStarts, e.LastColdTook.Round(time.Millisecond))
					}
					return w.Flush()
				},
			},
			endpointVerb("stop", "stop a branch's Postgres and refuse clients until `endpoint start` (kept across restarts)",
				"endpoint-stop", "stopped the endpoint of %s\n"),
			endpointVerb("start", "let clients wake a stopped endpoint again, and start its Postgres now; prints the connection string",
				"endpoint-start", ""),
			endpointVerb("suspend", "stop a branch's Postgres now, as when idle: the next client wakes it",
				"endpoint-suspend", "suspended the endpoint of %s\n"),
			{
				Name:      "delete",
				Usage:     "stop a branch's endpoint (Postgres too) and forget it",
				ArgsUsage: "BRANCH",
				Flags:     []ucli.Flag{dataFlag},
				Action: func(c *ucli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("endpoint delete: want exactly one BRANCH argument, got %d", c.NArg())
					}
					r, err := remoteFor(c.Context, c.String("data"))
					if err != nil {
						return err
					}
					if err := r.call(c.Context, "endpoint-delete", daemon.Args{Name: c.Args().First()}, nil); err != nil {
						return err
					}
					fmt.Printf("deleted the endpoint of %s\n", c.Args().First())
					return nil
				},
			},
		},
	}
}

// printEndpoint prints the connection string alone on stdout (for
// scripts) and the serverless driver's URLs, if any, on stderr.
func printEndpoint(rep daemon.EndpointReply) {
	if rep.WebSocketURL != "" {
		fmt.Fprintf(os.Stderr, "serverless driver: WebSocket %s, SQL over HTTP %s\n", rep.WebSocketURL, rep.SQLOverHTTP)
	}
	fmt.Println(rep.ConnString)
}

// endpointFlags are endpoint create's, shared with branch create --endpoint.
func endpointFlags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.IntFlag{Name: "port", Usage: "TCP port (default: the first free one from 5432)"},
		&ucli.StringFlag{Name: "listen", Value: "127.0.0.1", Usage: "address to listen on"},
		&ucli.DurationFlag{Name: "suspend-after", Value: 5 * time.Minute, Usage: "suspend after this long without activity (0: never)"},
		&ucli.StringSliceFlag{Name: "pg-conf", Usage: "postgresql.conf setting KEY=VALUE (repeatable)"},
		&ucli.StringFlag{Name: "auth", Value: "scram-sha-256", Usage: "scram-sha-256, or trust"},
		&ucli.StringFlag{Name: "pg-bin", Usage: "Postgres binaries (default /usr/lib/postgresql/15/bin)"},
		&ucli.StringFlag{Name: "http", Usage: "also serve Neon's serverless driver on HOST:PORT (WebSocket at /v2, SQL over HTTP at /sql)"},
	}
}

// endpointSpec reads endpointFlags.
func endpointSpec(c *ucli.Context, branch string) (*daemon.EndpointSpec, error) {
	spec := &daemon.EndpointSpec{Branch: branch, SuspendAfter: c.Duration("suspend-after").String(), PGBin: c.String("pg-bin")}
	if c.Duration("suspend-after") < 0 {
		return nil, fmt.Errorf("--suspend-after %s: want 0 (never) or more", c.Duration("suspend-after"))
	}
	if c.Int("port") < 0 || c.Int("port") > 65535 {
		return nil, fmt.Errorf("--port %d: want 1-65535", c.Int("port"))
	}
	if net.ParseIP(c.String("listen")) == nil && c.String("listen") != "localhost" {
		return nil, fmt.Errorf("--listen %q: want an IP address", c.String("listen"))
	}
	spec.Listen = net.JoinHostPort(c.String("listen"), strconv.Itoa(c.Int("port")))
	if h := c.String("http"); h != "" {
		host, port, err := net.SplitHostPort(h)
		if err != nil {
			return nil, fmt.Errorf("--http %q: want HOST:PORT", h)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			return nil, fmt.Errorf("--http %q: want a port 0-65535", h)
		}
		if host != "" && host != "localhost" && net.ParseIP(host) == nil {
			return nil, fmt.Errorf("--http %q: want an IP address", h)
		}
		spec.HTTP = h
	}
	switch c.String("auth") {
	case "scram-sha-256":
	case "trust":
		spec.Trust = true
	default:
		return nil, fmt.Errorf("--auth %q: want scram-sha-256 or trust", c.String("auth"))
	}
	for _, kv := range c.StringSlice("pg-conf") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--pg-conf %q: want KEY=VALUE", kv)
		}
		if spec.Conf == nil {
			spec.Conf = map[string]string{}
		}
		spec.Conf[k] = v
	}
	return spec, nil
}

// endpointVerb is a one-branch endpoint command: call the daemon, print
// done (or, when empty, the connection string it answers).
func endpointVerb(name, usage, call, done string) *ucli.Command {
	return daemonVerb(name, "endpoint "+name, usage, call, done)
}

// daemonVerb is endpointVerb for a command named label in messages.
func daemonVerb(name, label, usage, call, done string) *ucli.Command {
	return &ucli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "BRANCH",
		Flags:     []ucli.Flag{dataFlag},
		Action: func(c *ucli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("%s: want exactly one BRANCH argument, got %d", label, c.NArg())
			}
			r, err := remoteFor(c.Context, c.String("data"))
			if err != nil {
				return err
			}
			var rep daemon.EndpointReply
			if err := r.call(c.Context, call, daemon.Args{Name: c.Args().First()}, &rep); err != nil {
				return err
			}
			if done == "" {
				printEndpoint(rep)
			} else {
				fmt.Printf(done, c.Args().First())
			}
			return nil
		},
	}
}

func connectionStringCommand() *ucli.Command {
	return daemonVerb("connection-string", "connection-string", "print the connection string of a branch's endpoint",
		"connection-string", "")
}
