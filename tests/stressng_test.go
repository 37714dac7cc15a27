package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStressNG runs stress-ng's file system stressors with verification.
func TestStressNG(t *testing.T) {
	requireE2E(t)
	if _, err := exec.LookPath("stress-ng"); err != nil {
		t.Skip("stress-ng is not installed (apt-get install stress-ng, or scripts/deps.sh)")
	}
	total := time.Now()
	tg := newTarget(t)
	dir := filepath.Join(tg.Dir(), "stress-ng")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--hdd", "2", "--hdd-bytes", "32m", "--hdd-write-size", "8k",
		"--dir", "2", "--dir-dirs", "1024",
		"--rename", "2",
		"--link", "2",
		"--verify",
		"--timeout", "20s",
		"--temp-path", dir,
		"--metrics-brief",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "stress-ng", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("stress-ng %s: %v (exit 2 = a stressor failed, e.g. verification)\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("stress-ng passed in %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	tg.Stop(t)
	t.Logf("total %v", time.Since(total).Round(time.Millisecond))
}
