// Package cli is the neonfs command line: it parses arguments, opens
// volumes, mounts branches and turns errors into one line a person can act
// on.
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
			if err := lvl.UnmarshalText([]byte(c.String("log-level"))); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.String("log-level"))
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
		Commands: []*ucli.Command{
			initCommand(),
			mountCommand(),
			statusCommand(),
		},
		HideHelpCommand: true,
	}
}

var dataFlag = &ucli.StringFlag{Name: "data", Usage: "volume data directory", Required: true}

// Run runs the command line and returns the process exit code.
func Run(args []string) int {
	if err := App().Run(args); err != nil {
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
