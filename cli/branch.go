package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/neonfs/neonfs/daemon"
	"github.com/neonfs/neonfs/volume"
)

var jsonFlag = &ucli.BoolFlag{Name: "json", Usage: "print JSON"}

var forceFlag = &ucli.BoolFlag{Name: "force", Usage: "stop the branch's Postgres (its endpoint) instead of refusing while it runs"}

const pointUsage = "LSN, RFC3339 time (2026-11-24T14:05:00Z) or duration ago (-15m, -2h, -1d)"

func branchCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "branch",
		Usage: "create, list, delete, reset, restore and compare branches",
		Subcommands: []*ucli.Command{
			{
				Name:      "create",
				Usage:     "create a copy-on-write branch (instant: copies no data)",
				ArgsUsage: "NAME",
				Description: "Through a running daemon, a parent whose endpoint runs Postgres checkpoints just\n" +
					"before the fork (--no-checkpoint skips it), so the branch starts without replaying WAL.\n" +
					"With --endpoint the branch gets its own endpoint (the endpoint create flags apply)\n" +
					"and the connection string is printed; if the endpoint cannot be made, no branch is left.",
				Flags: append([]ucli.Flag{dataFlag, jsonFlag,
					&ucli.StringFlag{Name: "parent", Value: "main", Usage: "branch to fork"},
					&ucli.StringFlag{Name: "at", Usage: "fork at this point of the parent's history (default: now): " + pointUsage},
					&ucli.BoolFlag{Name: "endpoint", Usage: "also create an endpoint for the branch and print its connection string"},
					&ucli.BoolFlag{Name: "no-checkpoint", Usage: "do not ask the parent's running Postgres for a CHECKPOINT before the fork"},
				}, endpointFlags()...),
				Action: branchAction(1, func(c *ucli.Context, v volumeAPI, args []string) error {
					r, viaDaemon := v.(*remote)
					if !viaDaemon {
						if c.Bool("endpoint") {
							return fmt.Errorf("--endpoint: no daemon serves %s: start one with `neonfs serve --data %s`", c.String("data"), c.String("data"))
						}
						info, err := v.CreateBranch(c.Context, args[0], c.String("parent"), c.String("at"))
						if err != nil {
							return err
						}
						return printCreated(c, daemon.CreateReply{BranchInfo: info})
					}
					a := daemon.Args{Name: args[0], Parent: c.String("parent"), Point: c.String("at"), NoCheckpoint: c.Bool("no-checkpoint")}
					if c.Bool("endpoint") {
						spec, err := endpointSpec(c, args[0])
						if err != nil {
							return err
						}
						a.Endpoint = spec
					}
					var rep daemon.CreateReply
					if err := r.call(c.Context, "create", a, &rep); err != nil {
						return err
					}
					return printCreated(c, rep)
				}),
			},
			{
				Name:      "list",
				Usage:     "show the branch tree",
				ArgsUsage: " ",
				Flags:     []ucli.Flag{dataFlag, jsonFlag},
				Action: branchAction(0, func(c *ucli.Context, v volumeAPI, _ []string) error {
					list, err := v.ListBranches(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(list)
					}
					printBranches(list)
					return nil
				}),
			},
			{
				Name:      "delete",
				Usage:     "delete a branch (not while mounted or while it has children), and its endpoint",
				ArgsUsage: "NAME",
				Flags:     []ucli.Flag{dataFlag, forceFlag},
				Action: branchAction(1, func(c *ucli.Context, v volumeAPI, args []string) error {
					var err error
					if r, ok := v.(*remote); ok {
						err = r.call(c.Context, "delete", daemon.Args{Name: args[0], Force: c.Bool("force")}, nil)
					} else {
						err = v.DeleteBranch(c.Context, args[0])
					}
					if err != nil {
						return err
					}
					fmt.Printf("deleted branch %s\n", args[0])
					return nil
				}),
			},
			{
				Name:      "reset",
				Usage:     "move a branch to its parent's latest state (the old state is kept as NAME_old_<time>)",
				ArgsUsage: "NAME",
				Flags: []ucli.Flag{dataFlag, jsonFlag, forceFlag,
					&ucli.BoolFlag{Name: "no-preserve", Usage: "drop the old state instead of keeping it as a branch"}},
				Action: branchAction(1, func(c *ucli.Context, v volumeAPI, args []string) error {
					var res volume.ReplaceResult
					var err error
					if r, ok := v.(*remote); ok {
						err = r.call(c.Context, "reset", daemon.Args{Name: args[0], Preserve: !c.Bool("no-preserve"), Force: c.Bool("force")}, &res)
					} else {
						res, err = v.ResetBranch(c.Context, args[0], !c.Bool("no-preserve"))
					}
					if err != nil {
						return err
					}
					return printReplace(c, "reset", res)
				}),
			},
			{
				Name:      "restore",
				Usage:     "move a branch back to a point of its own history (the old state is kept as NAME_old_<time>)",
				ArgsUsage: "NAME",
				Flags: []ucli.Flag{dataFlag, jsonFlag, forceFlag,
					&ucli.StringFlag{Name: "at", Required: true, Usage: "point to restore: " + pointUsage},
					&ucli.BoolFlag{Name: "no-preserve", Usage: "do not keep the old state as a visible branch"}},
				Action: branchAction(1, func(c *ucli.Context, v volumeAPI, args []string) error {
					var res volume.ReplaceResult
					var err error
					if r, ok := v.(*remote); ok {
						err = r.call(c.Context, "restore", daemon.Args{Name: args[0], Point: c.String("at"),
							Preserve: !c.Bool("no-preserve"), Force: c.Bool("force")}, &res)
					} else {
						res, err = v.RestoreBranch(c.Context, args[0], c.String("at"), !c.Bool("no-preserve"))
					}
					if err != nil {
						return err
					}
					return printReplace(c, "restored", res)
				}),
			},
			{
				Name:      "diff",
				Usage:     "list the files and count the blocks that differ between two branches",
				ArgsUsage: "A B",
				Flags:     []ucli.Flag{dataFlag, jsonFlag},
				Action: branchAction(2, func(c *ucli.Context, v volumeAPI, args []string) error {
					d, err := v.Diff(c.Context, args[0], args[1])
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(d)
					}
					w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
					for _, f := range d.Files {
						extra := ""
						if f.From != "" {
							extra = " (was " + f.From + ")"
						}
						fmt.Fprintf(w, "%s\t%s%s\t%d blocks\n", f.Change, f.Path, extra, f.Blocks)
					}
					w.Flush()
					fmt.Printf("%d files differ, %d blocks (%s); %d keys checked\n", len(d.Files), d.BlocksDiffer,
						human(d.BlocksDiffer*8192), d.KeysChecked)
					return nil
				}),
			},
		},
	}
}

// branchAction checks the argument count and runs fn against the volume,
// through the daemon when one holds it.
func branchAction(nargs int, fn func(*ucli.Context, volumeAPI, []string) error) ucli.ActionFunc {
	return func(c *ucli.Context) error {
		if c.NArg() != nargs {
			return fmt.Errorf("branch %s: want %d argument(s) (%s), got %d", c.Command.Name, nargs, c.Command.ArgsUsage, c.NArg())
		}
		return withVolume(c.Context, c.String("data"), func(v volumeAPI) error {
			return fn(c, v, c.Args().Slice())
		})
	}
}

// printCreated prints branch create's answer; with an endpoint, the
// connection string alone on stdout (for scripts) and the rest on stderr.
func printCreated(c *ucli.Context, rep daemon.CreateReply) error {
	if c.Bool("json") {
		return printJSON(rep)
	}
	line := fmt.Sprintf("created branch %s from %s at LSN %d%s\n", rep.Name, rep.Parent, rep.ForkLSN, atTime(rep.ForkTime))
	if rep.Endpoint == nil {
		fmt.Print(line)
		return nil
	}
	fmt.Fprint(os.Stderr, line)
	fmt.Fprintf(os.Stderr, "endpoint listening on %s\n", rep.Endpoint.Address)
	printEndpoint(*rep.Endpoint)
	return nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func atTime(t *time.Time) string {
	if t == nil {
		return ""
	}
	return " (" + t.Format(time.RFC3339) + ")"
}

func printReplace(c *ucli.Context, verb string, res volume.ReplaceResult) error {
	if c.Bool("json") {
		return printJSON(res)
	}
	if verb == "reset" {
		fmt.Printf("reset branch %s to %s at LSN %d%s", res.Branch.Name, res.Branch.Parent, res.Branch.ForkLSN, atTime(res.Branch.ForkTime))
	} else {
		fmt.Printf("restored branch %s to LSN %d%s", res.Branch.Name, res.Branch.ForkLSN, atTime(res.Branch.ForkTime))
	}
	if res.Old != "" {
		fmt.Printf("; the previous state is branch %s", res.Old)
	}
	fmt.Println()
	return nil
}

func printBranches(list []volume.BranchInfo) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "BRANCH\tPARENT\tFORK LSN\tFORK TIME\tLOGICAL\tUNIQUE\tMOUNTED")
	for _, b := range list {
		name := b.Name
		if b.Depth > 0 {
			name = strings.Repeat("  ", b.Depth-1) + "└─ " + name
		}
		parent, lsn, at := "-", "-", "-"
		if b.Parent != "" {
			parent, lsn = b.Parent, fmt.Sprint(b.ForkLSN)
		}
		if b.ForkTime != nil {
			at = b.ForkTime.Format(time.RFC3339)
		}
		mounted := strings.Join(b.Mounted, ", ")
		if mounted == "" {
			mounted = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, parent, lsn, at, human(b.LogicalBytes), human(b.UniqueBytes), mounted)
	}
	w.Flush()
}
