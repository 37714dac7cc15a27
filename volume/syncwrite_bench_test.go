package volume

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkSyncWrite is one writer's committed 8 KiB write (an O_DSYNC
// WAL write) on a volume in the test's temp dir, beside the raw floor of
// the same disk (pwrite + fdatasync of a written file); it reports the
// median latency of each. Run it on a real disk: TMPDIR=/var/tmp.
func BenchmarkSyncWrite(b *testing.B) {
	ctx := context.Background()
	dir := filepath.Join(b.TempDir(), "vol")
	if err := Init(ctx, dir); err != nil {
		b.Fatal(err)
	}
	vol, err := Open(ctx, dir, Options{ReserveBytes: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer vol.Close()
	bfs, err := vol.Mount(ctx, "main")
	if err != nil {
		b.Fatal(err)
	}
	defer vol.Unmount(bfs)
	ino, _, errno := bfs.Create(rootIno, "wal", syscall.S_IFREG|0o600, 0, 0, 0, "")
	if errno != 0 {
		b.Fatal(errno)
	}
	page := make([]byte, 8192)
	raw, err := os.OpenFile(filepath.Join(b.TempDir(), "raw"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.WriteAt(make([]byte, 64<<20), 0); err != nil {
		b.Fatal(err)
	}
	unix.Fdatasync(int(raw.Fd()))
	var vlat, rlat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		off := int64(i%8192) * 8192
		page[0] = byte(i)
		t := time.Now()
		if _, errno := bfs.WriteSync(ino, page, off); errno != 0 {
			b.Fatal(errno)
		}
		vlat = append(vlat, time.Since(t))
		t = time.Now()
		if _, err := raw.WriteAt(page, off); err != nil {
			b.Fatal(err)
		}
		if err := unix.Fdatasync(int(raw.Fd())); err != nil {
			b.Fatal(err)
		}
		rlat = append(rlat, time.Since(t))
	}
	med := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Microseconds())
	}
	b.ReportMetric(med(vlat), "volume-µs/p50")
	b.ReportMetric(med(rlat), "raw-µs/p50")
}
