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

// fioJobs is a random 8k write job with fsync every 16 writes and a
// sequential 128k write job, both verified with crc32c after writing.
func fioJobs(dir string) []string {
	return []string{
		"--directory=" + dir,
		"--ioengine=psync",
		"--size=64m",
		"--verify=crc32c",
		"--do_verify=1",
		"--verify_fatal=1",
		"--fallocate=none",
		"--name=verify", "--rw=randwrite", "--bs=8k", "--fsync=16",
		"--name=seqverify", "--rw=write", "--bs=128k", "--fsync=32",
	}
}

// runFio runs fio in workDir (where it leaves its *-verify.state files).
func runFio(t *testing.T, workDir, what string, args ...string) {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "fio", args...)
	cmd.Dir = workDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fio (%s) failed: %v\nfio %s\n%s", what, err, strings.Join(args, " "), out)
	}
	var summary []string
	for _, line := range strings.Split(string(out), "\n") {
		l := strings.TrimSpace(line)
		if strings.HasPrefix(l, "WRITE:") || strings.HasPrefix(l, "READ:") {
			summary = append(summary, l)
		}
	}
	t.Logf("fio (%s) passed in %v\n\t%s", what, time.Since(start).Round(time.Millisecond), strings.Join(summary, "\n\t"))
}

// TestFio writes with fio and verifies, then remounts and verifies again.
func TestFio(t *testing.T) {
	requireE2E(t)
	if _, err := exec.LookPath("fio"); err != nil {
		t.Skip("fio is not installed (apt-get install fio, or scripts/deps.sh)")
	}
	total := time.Now()
	tg := newTarget(t)
	dir := filepath.Join(tg.Dir(), "fio")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	workDir := testDir(t, "fio")
	runFio(t, workDir, "write+verify", fioJobs(dir)...)

	tg.Stop(t)
	tg.Restart(t)
	runFio(t, workDir, "verify after remount", append(fioJobs(dir), "--verify_only")...)
	tg.Stop(t)
	t.Logf("total %v", time.Since(total).Round(time.Millisecond))
}
