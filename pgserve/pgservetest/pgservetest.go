// Package pgservetest helps tests run a real Postgres: it skips where one
// cannot run and makes directories the postgres user can reach.
package pgservetest

import (
	"os"
	"os/user"
	"path/filepath"
	"testing"

	"github.com/neonfs/neonfs/pgserve"
)

// Dir skips t unless a real Postgres can run here (not -short, root, a
// postgres user, Debian's Postgres 15), and returns a temporary directory
// the postgres user can traverse.
func Dir(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real Postgres: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run Postgres as the postgres user")
	}
	if _, err := user.Lookup("postgres"); err != nil {
		t.Skip("no postgres user (scripts/deps.sh installs Postgres 15)")
	}
	if _, err := os.Stat(filepath.Join(pgserve.DefaultBinDir, "postgres")); err != nil {
		t.Skip("Postgres 15 is not installed (scripts/deps.sh)")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // testing makes them 0700
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
