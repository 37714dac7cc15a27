package tests

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// startServeMetrics is startServe with --metrics addr; it returns once
// /metrics answers.
func startServeMetrics(t *testing.T, c volumeCLI, runDir, logPath, addr string) *serveDaemon {
	t.Helper()
	s := launchServe(t, exec.Command(c.bin, "serve", "--data", c.data, "--run-dir", runDir, "--metrics", addr), runDir, logPath)
	waitFor(t, time.Minute, "neonfs serve to answer /metrics", func() bool {
		select {
		case <-s.done:
			t.Fatalf("neonfs serve exited:\n%s", tailFile(logPath, 2000))
		default:
		}
		_, err := scrapeMetrics("http://" + addr + "/metrics")
		return err == nil
	})
	return s
}

func scrapeMetrics(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// metricValue returns the value of the sample line that starts with
// series (name and labels), or -1.
func metricValue(text, series string) float64 {
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// `neonfs serve --metrics` serves Prometheus metrics: the volume's, its
// fsyncs through a mount, the Go runtime's. A bad or busy address is
// refused with one line, leaving the volume as it was.
func TestMetrics(t *testing.T) {
	requireE2E(t)
	if targetKind() != "neonfs" {
		t.Skip("metrics are neonfs's")
	}
	dir := testDir(t, "metrics")
	c := volumeCLI{bin: neonfsBinary(t), data: filepath.Join(dir, "volume")}
	runDir := filepath.Join(dir, "run")
	if out, err := exec.Command(c.bin, "init", "--data", c.data).CombinedOutput(); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}

	c.refused(t, `--metrics "notanaddr": want host:port`, "serve", "--run-dir", runDir, "--metrics", "notanaddr")
	c.refused(t, `--metrics "127.0.0.1:0"`, "serve", "--run-dir", runDir, "--metrics", "127.0.0.1:0")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.refused(t, "metrics address "+busy.Addr().String()+": bind: address already in use",
		"serve", "--run-dir", runDir, "--metrics", busy.Addr().String())
	busy.Close()

	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	startServeMetrics(t, c, runDir, filepath.Join(dir, "serve.log"), addr)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	c.refused(t, "a daemon already serves", "mount", "--metrics", "127.0.0.1:"+strconv.Itoa(freePort(t)), mnt)
	c.ok(t, "mount", mnt)
	t.Cleanup(func() { forceUnmount(mnt) })
	putFile(t, filepath.Join(mnt, "f"), randomBytes(64<<10, 1)) // written and fsynced

	text, err := scrapeMetrics("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"neonfs_commits_total", "neonfs_commit_batch_puts_count", "neonfs_fsync_seconds_count",
		"neonfs_block_cache_hits_total", "neonfs_layers", `neonfs_memtable_bytes{segment="active"}`, "neonfs_flush_lag_entries",
		"neonfs_disk_full", "go_goroutines", "process_resident_memory_bytes"} {
		if metricValue(text, name) < 0 {
			t.Errorf("/metrics has no %s", name)
		}
	}
	for _, name := range []string{"neonfs_fsync_seconds_count", "neonfs_log_sync_seconds_count"} {
		if n := metricValue(text, name); n < 1 {
			t.Errorf("%s %v after an fsync through the mount", name, n)
		}
	}
	if n := metricValue(text, "neonfs_mounts"); n != 1 {
		t.Errorf("neonfs_mounts %v with one mount", n)
	}
	if resp, err := http.Get("http://" + addr + "/debug/pprof/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("the metrics address serves /debug/pprof/: %s", resp.Status)
		}
	}
	c.ok(t, "unmount", mnt)
}
