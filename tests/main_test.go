package tests

import (
	"fmt"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "tests: "+format+"\n", args...) }
	if os.Geteuid() == 0 {
		sweepStale(logf)
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", baseDirPrefix, os.Getpid()))
	if err != nil {
		logf("creating scratch directory: %v", err)
		os.Exit(2)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		logf("chmod %s: %v", dir, err)
		os.Exit(2)
	}
	baseDir = dir

	code := m.Run()

	removeBuiltBinary()
	if os.Getenv("NEONFS_KEEP") == "" {
		if mounts := mountsUnder(baseDir); len(mounts) > 0 {
			logf("not removing %s: still mounted beneath it: %v", baseDir, mounts)
			if code == 0 {
				code = 1
			}
		} else {
			_ = os.RemoveAll(baseDir)
		}
	}
	os.Exit(code)
}
