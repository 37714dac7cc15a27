// Package systemdtest checks unit files the way systemd reads them, with
// systemd-analyze verify.
package systemdtest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Required says a missing systemd-analyze fails the tests instead of
// skipping them (make test sets it; scripts/deps.sh installs systemd).
const Required = "NEONFS_REQUIRE_SYSTEMD"

// Analyze returns the path of systemd-analyze, or skips t without it.
func Analyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv(Required) != "" {
			t.Fatalf("systemd-analyze not found (%v) and %s is set: run scripts/deps.sh", err, Required)
		}
		t.Skipf("systemd-analyze not found (%v): install Debian's systemd (scripts/deps.sh)", err)
	}
	return p
}

// Verify runs `systemd-analyze verify` on each unit (a name: dir comes
// first in the unit search path, then the system's, so drop-ins in dir
// apply to system units) and fails t if it fails or says anything about
// the units or dir. Anything else it says (about other units of the
// system) is logged.
func Verify(t *testing.T, dir string, units ...string) {
	t.Helper()
	bin := Analyze(t)
	for _, u := range units {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, bin, "verify", "--man=no", u)
		// A trailing ':' appends the default search path.
		cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":", "SYSTEMD_LOG_COLOR=0")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		cancel()
		if err != nil {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out.String())
			continue
		}
		var ours, other []string
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			switch {
			case line == "":
			case strings.Contains(line, dir) || strings.Contains(line, strings.TrimSuffix(u, filepath.Ext(u))):
				ours = append(ours, line)
			default:
				other = append(other, line)
			}
		}
		if len(ours) > 0 {
			t.Errorf("systemd-analyze verify %s:\n%s", u, strings.Join(ours, "\n"))
		}
		if len(other) > 0 {
			t.Logf("systemd-analyze verify %s, about other units:\n%s", u, strings.Join(other, "\n"))
		}
	}
}
