package metrics

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/neonfs/neonfs/endpoint"
	"github.com/neonfs/neonfs/internal/hist"
	"github.com/neonfs/neonfs/objstore"
	"github.com/neonfs/neonfs/volume"
	"github.com/neonfs/neonfs/volume/commit"
)

func scrape(t *testing.T, src Source) string {
	t.Helper()
	srv := httptest.NewServer(Handler(src))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s\n%s", resp.Status, b)
	}
	return string(b)
}

// wantLines checks that every line is in the scrape, whole.
func wantLines(t *testing.T, text string, lines ...string) {
	t.Helper()
	have := map[string]bool{}
	for _, l := range strings.Split(text, "\n") {
		have[l] = true
	}
	for _, l := range lines {
		if !have[l] {
			t.Errorf("scrape lacks %q", l)
		}
	}
}

func fakeSource() Source {
	fsyncs := hist.New(volume.FsyncBounds...)
	for _, s := range []float64{0.0002, 0.0008, 0.0009, 0.03, 20} {
		fsyncs.Observe(s)
	}
	logSyncs := hist.New(volume.FsyncBounds...)
	logSyncs.Observe(0.0003)
	colds := hist.New(endpoint.ColdStartBounds...)
	colds.Observe(0.6)
	colds.Observe(0.4)
	vm := volume.Metrics{
		Commits:   commit.CommitStats{Entries: 7, Bytes: 70000, Puts: 40, Retries: 1, Seconds: 0.5},
		Fsyncs:    fsyncs.Snapshot(),
		BatchPuts: hist.New(commit.BatchPutsBounds...).Snapshot(), BatchBytes: hist.New(commit.BatchBytesBounds...).Snapshot(),
		SyncWrites:     hist.New(volume.FsyncBounds...).Snapshot(),
		LogSyncs:       logSyncs.Snapshot(),
		BlockCacheHits: 9, BlockCacheMisses: 3, Layers: 2, LayerBytes: 4096,
		MemtableBytes: 100, FrozenBytes: 50, CommittedLSN: 30, FlushedLSN: 25, DiskFull: true, Mounts: 1,
	}
	var requests hist.Timings
	for range 3 {
		requests.Add("WRITE", 250*time.Microsecond)
	}
	requests.Add("FSYNC", 2*time.Millisecond)
	return Source{
		Volume:       func() volume.Metrics { return vm },
		FuseRequests: requests.Snapshot,
		Endpoints: func() []EndpointStats {
			return []EndpointStats{
				{Info: endpoint.Info{Branch: "main", State: endpoint.Active, Connections: 2, Relayed: 5, ColdStarts: 2},
					ColdStarts: colds.Snapshot()},
				{Info: endpoint.Info{Branch: "dev", State: endpoint.Suspended},
					ColdStarts: hist.New(endpoint.ColdStartBounds...).Snapshot()},
			}
		},
	}
}

func TestScrape(t *testing.T) {
	text := scrape(t, fakeSource())
	wantLines(t, text,
		"# TYPE neonfs_commits_total counter",
		"neonfs_commits_total 7",
		"neonfs_commit_bytes_total 70000",
		"neonfs_commit_retries_total 1",
		"# TYPE neonfs_fsync_seconds histogram",
		`neonfs_fsync_seconds_bucket{le="0.0001"} 0`,
		`neonfs_fsync_seconds_bucket{le="0.00025"} 1`,
		`neonfs_fsync_seconds_bucket{le="0.001"} 3`,
		`neonfs_fsync_seconds_bucket{le="0.05"} 4`,
		`neonfs_fsync_seconds_bucket{le="10"} 4`,
		`neonfs_fsync_seconds_bucket{le="+Inf"} 5`,
		"neonfs_fsync_seconds_count 5",
		"# TYPE neonfs_log_sync_seconds histogram",
		`neonfs_log_sync_seconds_bucket{le="0.00025"} 0`,
		`neonfs_log_sync_seconds_bucket{le="0.0005"} 1`,
		"neonfs_log_sync_seconds_count 1",
		"# TYPE neonfs_commit_batch_puts histogram",
		"neonfs_commit_batch_puts_count 0",
		"neonfs_block_cache_hits_total 9",
		"neonfs_block_cache_misses_total 3",
		"neonfs_layers 2",
		"neonfs_layer_bytes 4096",
		`neonfs_memtable_bytes{segment="active"} 100`,
		`neonfs_memtable_bytes{segment="frozen"} 50`,
		"neonfs_flush_lag_entries 5",
		"neonfs_disk_full 1",
		"neonfs_stopped 0",
		`neonfs_endpoint_state{branch="main",state="active"} 1`,
		`neonfs_endpoint_state{branch="main",state="suspended"} 0`,
		`neonfs_endpoint_state{branch="dev",state="suspended"} 1`,
		`neonfs_endpoint_state{branch="dev",state="active"} 0`,
		`neonfs_endpoint_connections{branch="main"} 2`,
		`neonfs_endpoint_relayed_connections_total{branch="main"} 5`,
		`neonfs_endpoint_relayed_connections_total{branch="dev"} 0`,
		"# TYPE neonfs_endpoint_cold_start_seconds histogram",
		`neonfs_endpoint_cold_start_seconds_bucket{branch="main",le="0.3"} 0`,
		`neonfs_endpoint_cold_start_seconds_bucket{branch="main",le="0.5"} 1`,
		`neonfs_endpoint_cold_start_seconds_bucket{branch="main",le="0.75"} 2`,
		`neonfs_endpoint_cold_start_seconds_sum{branch="main"} 1`,
		`neonfs_endpoint_cold_start_seconds_count{branch="main"} 2`,
		`neonfs_endpoint_cold_start_seconds_count{branch="dev"} 0`,
		"# TYPE neonfs_fuse_requests_total counter",
		`neonfs_fuse_requests_total{op="WRITE"} 3`,
		`neonfs_fuse_requests_total{op="FSYNC"} 1`,
		"# TYPE neonfs_fuse_request_seconds_total counter",
		`neonfs_fuse_request_seconds_total{op="WRITE"} 0.00075`,
		`neonfs_fuse_request_seconds_total{op="FSYNC"} 0.002`,
	)
	// The Go runtime and the process, from the handler's own registry.
	for _, name := range []string{"go_goroutines ", "process_resident_memory_bytes "} {
		if !strings.Contains(text, "\n"+name) {
			t.Errorf("scrape lacks %s", name)
		}
	}
	// A local volume has no layer cache.
	if strings.Contains(text, "neonfs_layer_cache_") {
		t.Error("layer cache metrics without a layer cache")
	}
}

func TestScrapeLayerCacheAndNoEndpoints(t *testing.T) {
	src := fakeSource()
	vol := src.Volume
	src.Volume = func() volume.Metrics {
		m := vol()
		m.LayerCache = &objstore.CacheStats{Hits: 4, Misses: 2, Evictions: 1, Bytes: 1 << 20, Limit: 1 << 30}
		return m
	}
	src.Endpoints = nil
	src.FuseRequests = nil
	text := scrape(t, src)
	wantLines(t, text,
		"neonfs_layer_cache_hits_total 4",
		"neonfs_layer_cache_misses_total 2",
		"neonfs_layer_cache_evictions_total 1",
		"neonfs_layer_cache_bytes 1.048576e+06",
		"neonfs_layer_cache_limit_bytes 1.073741824e+09")
	if strings.Contains(text, "neonfs_endpoint_") {
		t.Error("endpoint metrics without endpoints")
	}
	if strings.Contains(text, "neonfs_fuse_") {
		t.Error("FUSE request metrics without a recorder")
	}
}

// rootIno is a volume's root directory, as FUSE numbers it.
const rootIno = 1

// A real volume's fsyncs reach the scrape.
func TestScrapeVolume(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "vol")
	if err := volume.Init(ctx, dir); err != nil {
		t.Fatal(err)
	}
	v, err := volume.Open(ctx, dir, volume.Options{ReserveBytes: 1, Linger: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	f, err := v.Mount(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Unmount(f)
	ino, _, errno := f.Create(rootIno, "wal", syscall.S_IFREG|0o600, 0, 0, 0, "")
	if errno != 0 {
		t.Fatal(errno)
	}
	for i := range 3 {
		if _, errno := f.Write(ino, bytes.Repeat([]byte{1}, 8192), int64(i)*8192); errno != 0 {
			t.Fatal(errno)
		}
		if errno := f.Fsync(ino, true); errno != 0 {
			t.Fatal(errno)
		}
	}
	text := scrape(t, Source{Volume: v.Metrics})
	wantLines(t, text, "neonfs_fsync_seconds_count 3", `neonfs_fsync_seconds_bucket{le="+Inf"} 3`, "neonfs_mounts 1")
	if strings.Contains(text, "neonfs_commits_total 0\n") {
		t.Errorf("no commits counted:\n%s", text)
	}
}
