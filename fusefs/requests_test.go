package fusefs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/neonfs/neonfs/internal/hist"
)

// One pwrite and one fsync reach the recorder as the requests Postgres's
// commits are measured by, under go-fuse's names.
func TestRequestsCounted(t *testing.T) {
	for _, wb := range []bool{false, true} {
		name := "direct"
		if wb {
			name = "writeback"
		}
		t.Run(name, func(t *testing.T) {
			var rec hist.Timings
			mnt := mountVolume(t, Options{WritebackCache: wb, Requests: &rec})
			f, err := os.OpenFile(filepath.Join(mnt, "wal"), os.O_CREATE|os.O_RDWR, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			before := counts(rec.Snapshot())
			if before["CREATE"] != 1 {
				t.Errorf("CREATE counted %d times, want 1 (%v)", before["CREATE"], before)
			}
			if _, err := f.WriteAt(bytes.Repeat([]byte{1}, 8192), 0); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			snap := rec.Snapshot()
			after := counts(snap)
			t.Logf("requests: %v", after)
			// With the writeback cache the kernel may send the two pages
			// as one WRITE or two; without it, the write is one.
			writes := after["WRITE"] - before["WRITE"]
			if writes < 1 || !wb && writes != 1 {
				t.Errorf("%d WRITEs counted for one pwrite (%v)", writes, after)
			}
			if n := after["FSYNC"] - before["FSYNC"]; n != 1 {
				t.Errorf("%d FSYNCs counted for one fsync (%v)", n, after)
			}
			for _, e := range snap {
				if e.Name == "FSYNC" && e.Seconds <= 0 {
					t.Errorf("FSYNC took no time: %+v", e)
				}
			}
		})
	}
}

func counts(s []hist.Timing) map[string]uint64 {
	m := map[string]uint64{}
	for _, e := range s {
		m[e.Name] = e.Count
	}
	return m
}
