// Command neonfs serves stock Postgres from a branchable, Raft-logged volume.
package main

import (
	"os"

	"github.com/neonfs/neonfs/cli"
)

func main() { os.Exit(cli.Run(os.Args)) }
