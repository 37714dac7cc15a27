package durable

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// PaceChunk is how much a PacedWriter writes before starting writeback.
const PaceChunk = 2 << 20

// PacedWriter writes to F, a file at offset 0, in chunks and, with
// Pace, starts writeback of each chunk as it goes and pauses briefly
// between chunks. A layer is 100+ MiB and a log segment 64 MiB; written at
// once and fsynced, either would monopolise the disk for a fraction of a
// second, and every Raft commit (a Postgres fsync waiting) would queue
// behind it. Spread out, the final fsync has little left to do.
type PacedWriter struct {
	F    *os.File
	Pace bool
	off  int64
}

func (w *PacedWriter) Write(data []byte) (int, error) {
	for done := 0; done < len(data); {
		end := min(done+PaceChunk, len(data))
		n, err := w.F.Write(data[done:end])
		if err != nil {
			return done + n, err
		}
		if w.Pace {
			// Only a hint: errors are left to Sync.
			unix.SyncFileRange(int(w.F.Fd()), w.off, int64(n), unix.SYNC_FILE_RANGE_WRITE)
			time.Sleep(2 * time.Millisecond)
		}
		w.off += int64(n)
		done = end
	}
	return len(data), nil
}
