// Package cli is the neonfs command line: it parses arguments, opens
// volumes, mounts branches and turns errors into one line a person can act
// on. It decides nothing about storage: that is the volume's.
package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	ucli "github.com/urfave/cli/v2"
)

// App returns the neonfs command.
func App() *ucli.App {
	return &ucli.App{
		Name:  "neonfs",
		Usage: "branchable, Raft-logged storage for stock Postgres",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		},
		Before: func(c *ucli.Context) error {
			var lvl slog.Level
			level := c.String("log-level")
			if !c.IsSet("log-level") && c.Args().First() != "mount" && c.Args().First() != "serve" {
				// A one-shot command that opens the volume itself should not
				// narrate the log replay; the daemon should.
				level = "warn"
			}
			if err := lvl.UnmarshalText([]byte(level)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.String("log-level"))
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
		Commands: []*ucli.Command{
			initCommand(),
			restoreCommand(),
			gcCommand(),
			mountCommand(),
			unmountCommand(),
			serveCommand(),
			endpointCommand(),
			connectionStringCommand(),
			statusCommand(),
			branchCommand(),
			systemdCommand(),
			joinCommand(),
			clusterCommand(),
		},
		HideHelpCommand: true,
	}
}

// dataFlag names the volume. Flags go before arguments (urfave/cli), so
// `neonfs branch create dev` relies on NEONFS_DATA or the default.
var dataFlag = &ucli.StringFlag{Name: "data", Usage: "volume data directory", Value: "/var/lib/neonfs/vol", EnvVars: []string{"NEONFS_DATA"}}

// Run runs the command line and returns the process exit code.
func Run(args []string) int {
	app := App()
	if err := app.Run(flagsFirst(app, args)); err != nil {
		msg := err.Error()
		if errors.Is(err, context.Canceled) {
			msg = "interrupted"
		}
		fmt.Fprintf(os.Stderr, "neonfs: %s\n", strings.TrimSpace(msg))
		return 1
	}
	return 0
}

func noArgs(c *ucli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q", c.Command.Name, c.Args().First())
	}
	return nil
}

// flagsFirst moves a command's flags ahead of its arguments: urfave/cli v2
// stops parsing flags at the first argument, but people (and the docs)
// write `neonfs branch create dev --parent main`.
func flagsFirst(app *ucli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	rest := args[1:]
	// Global flags, then the command path.
	var cmd *ucli.Command
	cmds := app.Commands
	for len(rest) > 0 {
		a := rest[0]
		if strings.HasPrefix(a, "-") && cmd == nil {
			out = append(out, a)
			rest = rest[1:]
			if !strings.Contains(a, "=") && takesValue(app.Flags, a) && len(rest) > 0 {
				out = append(out, rest[0])
				rest = rest[1:]
			}
			continue
		}
		var next *ucli.Command
		for _, c := range cmds {
			if c.HasName(a) {
				next = c
			}
		}
		if next == nil {
			break
		}
		cmd, cmds = next, next.Subcommands
		out = append(out, a)
		rest = rest[1:]
	}
	if cmd == nil {
		return args
	}
	var flags, pos []string
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			pos = append(pos, rest[i:]...)
			break
		}
		if strings.HasPrefix(a, "-") && len(a) > 1 && isFlag(cmd.Flags, a) {
			flags = append(flags, a)
			if !strings.Contains(a, "=") && takesValue(cmd.Flags, a) && i+1 < len(rest) {
				flags = append(flags, rest[i+1])
				i++
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(append(out, flags...), pos...)
}

func flagNamed(flags []ucli.Flag, arg string) ucli.Flag {
	name := strings.TrimLeft(arg, "-")
	name, _, _ = strings.Cut(name, "=")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

func isFlag(flags []ucli.Flag, arg string) bool { return flagNamed(flags, arg) != nil }

func takesValue(flags []ucli.Flag, arg string) bool {
	f := flagNamed(flags, arg)
	if f == nil {
		return false
	}
	_, isBool := f.(*ucli.BoolFlag)
	return !isBool
}
