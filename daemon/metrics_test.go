package daemon

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/neonfs/neonfs/metrics"
	"github.com/neonfs/neonfs/volume"
)

// The daemon counts the FUSE requests of its mounts, and /metrics shows
// them by opcode.
func TestFuseRequestsScraped(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts FUSE")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "vol")
	if err := volume.Init(ctx, dir); err != nil {
		t.Fatal(err)
	}
	vol, err := volume.Open(ctx, dir, volume.Options{ReserveBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	d := New(dir, vol, false)
	mnt := t.TempDir()
	if _, err := d.Mount(ctx, MountRequest{Branch: "main", Mountpoint: mnt, Writeback: true}); err != nil {
		vol.Close()
		t.Fatal(err)
	}
	defer func() {
		d.Shutdown()
		if err := vol.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	f, err := os.Create(filepath.Join(mnt, "wal"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(bytes.Repeat([]byte{1}, 8192)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}

	rec := httptest.NewRecorder()
	metrics.Handler(d.MetricsSource()).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Result().Body)
	text := string(body)
	for _, want := range []string{
		`neonfs_fuse_requests_total{op="CREATE"} 1`,
		`neonfs_fuse_requests_total{op="FSYNC"} 1`,
		`neonfs_fuse_requests_total{op="WRITE"} `,
		`neonfs_fuse_request_seconds_total{op="FSYNC"} `,
	} {
		if !strings.Contains(text, "\n"+want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}
