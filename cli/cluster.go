package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/neonfs/neonfs/daemon"
	"github.com/neonfs/neonfs/volume"
)

// nodeFlags are a cluster node's own settings, for init and join.
func nodeFlags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.StringFlag{Name: "node-id", Usage: "this node's ID in the cluster (makes init create a cluster)"},
		&ucli.StringFlag{Name: "raft-addr", Usage: "HOST:PORT this node listens on for Raft and peer calls (one port for both)"},
		&ucli.StringFlag{Name: "advertise", Usage: "HOST:PORT peers dial to reach this node (default --raft-addr)"},
		&ucli.StringFlag{Name: "tls-cert", Usage: "PEM certificate of this node, signed by --tls-ca (mutual TLS between peers)"},
		&ucli.StringFlag{Name: "tls-key", Usage: "PEM private key of --tls-cert"},
		&ucli.StringFlag{Name: "tls-ca", Usage: "PEM CA certificate every peer's certificate must be signed by"},
	}
}

// clusterConfig reads nodeFlags; nil when none is set (a single node).
func clusterConfig(c *ucli.Context, required bool) (*volume.ClusterConfig, error) {
	set := false
	for _, f := range []string{"node-id", "raft-addr", "advertise", "tls-cert", "tls-key", "tls-ca"} {
		set = set || c.IsSet(f)
	}
	if !set && !required {
		return nil, nil
	}
	if c.String("node-id") == "" || c.String("raft-addr") == "" {
		return nil, fmt.Errorf("a cluster node needs both --node-id and --raft-addr")
	}
	cc := &volume.ClusterConfig{NodeID: c.String("node-id"), Bind: c.String("raft-addr"), Advertise: c.String("advertise"),
		TLSCert: abs(c.String("tls-cert")), TLSKey: abs(c.String("tls-key")), TLSCA: abs(c.String("tls-ca"))}
	return cc, cc.Check()
}

func abs(p string) string {
	if p == "" {
		return ""
	}
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

func joinCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "join",
		Usage: "prepare an empty data dir as a new node of an existing cluster",
		Description: "Asks --peer (any member) for the volume's description and records this node.\n" +
			"The node becomes a voter when it first starts (`neonfs serve --data DIR`): the\n" +
			"leader adds it and it catches up by snapshot and log. Joining again with the\n" +
			"same ID and address is a no-op; a node whose data dir was lost joins again\n" +
			"with an empty one.",
		ArgsUsage: " ",
		Flags: append([]ucli.Flag{
			&ucli.StringFlag{Name: "data", Usage: "data directory to create for this node", Required: true, EnvVars: []string{"NEONFS_DATA"}},
			&ucli.StringFlag{Name: "peer", Usage: "HOST:PORT of any member's --raft-addr", Required: true},
		}, nodeFlags()...),
		Action: func(c *ucli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			cc, err := clusterConfig(c, true)
			if err != nil {
				return err
			}
			dir := c.String("data")
			if err := volume.Join(c.Context, dir, *cc, c.String("peer")); err != nil {
				return fmt.Errorf("join %s: %w", c.String("peer"), err)
			}
			fmt.Printf("prepared node %s in %s: start it with `neonfs serve --data %s` to join the cluster\n", cc.NodeID, dir, dir)
			return nil
		},
	}
}

func clusterCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "cluster",
		Usage: "a cluster's members, leader and writer leases",
		Subcommands: []*ucli.Command{
			{
				Name:      "status",
				Usage:     "members, leader, each node's applied LSN and lag, and the branches' writer leases",
				ArgsUsage: " ",
				Flags:     []ucli.Flag{dataFlag, &ucli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *ucli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					r, err := remoteFor(c.Context, c.String("data"))
					if err != nil {
						return err
					}
					var st daemon.ClusterStatus
					if err := r.call(c.Context, "cluster-status", daemon.Args{}, &st); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(st)
					}
					printClusterStatus(st)
					return nil
				},
			},
			clusterVerb("add", "ID HOST:PORT", "add a voter (as `neonfs join` does when the node starts)", "cluster-add", 2),
			clusterVerb("remove", "ID", "remove a member", "cluster-remove", 1),
			clusterVerb("transfer", "[ID]", "move leadership to ID (any caught-up voter when omitted)", "cluster-transfer", -1),
		},
	}
}

func clusterVerb(name, args, usage, call string, nargs int) *ucli.Command {
	return &ucli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: args,
		Flags:     []ucli.Flag{dataFlag},
		Action: func(c *ucli.Context) error {
			if nargs >= 0 && c.NArg() != nargs || nargs < 0 && c.NArg() > 1 {
				return fmt.Errorf("cluster %s: want %s, got %d arguments", name, args, c.NArg())
			}
			r, err := remoteFor(c.Context, c.String("data"))
			if err != nil {
				return err
			}
			a := daemon.Args{Name: c.Args().Get(0), A: c.Args().Get(1)}
			if err := r.call(c.Context, call, a, nil); err != nil {
				return err
			}
			fmt.Printf("cluster %s: done\n", name)
			return nil
		},
	}
}

func printClusterStatus(st daemon.ClusterStatus) {
	fmt.Printf("node %s; leader %s; formats in use: entries %d, layers %d, snapshots %d, manifests %d\n\n", st.Node, orDash(st.Leader),
		st.Formats.Entries, st.Formats.Layers, st.Formats.Snapshots, st.Formats.Manifests)
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tADDRESS\tROLE\tSTATE\tTERM\tAPPLIED\tLAG\tENTRY FORMAT")
	for _, m := range st.Members {
		role := "voter"
		if !m.Voter {
			role = "nonvoter"
		}
		if m.Error != "" {
			fmt.Fprintf(w, "%s\t%s\t%s\tunreachable\t-\t-\t-\t-\n", m.ID, m.Addr, role)
			continue
		}
		knows := "-"
		if m.Knows != nil {
			knows = strconv.Itoa(m.Knows.Entries)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", m.ID, m.Addr, role, m.State, m.Term, m.AppliedIndex, m.Lag, knows)
	}
	w.Flush()
	if len(st.Leases) == 0 {
		fmt.Println("\nno writer leases held")
		return
	}
	fmt.Println()
	w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "BRANCH\tWRITER\tTOKEN\tEXPIRES IN")
	for _, l := range st.Leases {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", l.Branch, l.Node, l.Token, time.Until(l.Expires).Round(100*time.Millisecond))
	}
	w.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
