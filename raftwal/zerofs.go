package raftwal

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/types"
	"golang.org/x/sys/unix"

	"github.com/neonfs/neonfs/durable"
	"github.com/neonfs/neonfs/internal/hist"
)

// zeroFS is raft-wal's file system with Postgres's trick for its WAL:
// segment files are written full of zeros (and fsynced) before the log uses
// them, so a commit overwrites blocks that already exist and fdatasync has
// no metadata to journal. raft-wal's own files are only fallocated, which
// leaves unwritten extents: every commit then converts some and pays an
// ext4 journal commit on top of the data flush.
//
// The next segment is prepared in the background as a spare, so rolling to
// a new segment does not stall commits on writing 64 MiB of zeros.
type zeroFS struct {
	types.VFS
	syncs *hist.Histogram // seconds per Sync of a segment

	mu    sync.Mutex
	ready chan struct{} // closed when the spare being prepared is done; nil when none is
}

const spareName = "spare.tmp" // no .wal suffix: raft-wal's listing ignores it

func newZeroFS() *zeroFS { return &zeroFS{VFS: fs.New(), syncs: hist.New(hist.SyncBounds...)} }

func (z *zeroFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	path := filepath.Join(dir, name)
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("create segment %s: %w", path, os.ErrExist)
	}
	z.mu.Lock()
	ready := z.ready
	z.mu.Unlock()
	if ready != nil {
		<-ready
	}
	spare := filepath.Join(dir, spareName)
	if st, err := os.Stat(spare); err == nil && st.Size() == int64(size) {
		if err := os.Rename(spare, path); err != nil {
			return nil, fmt.Errorf("create segment %s: %w", path, err)
		}
	} else if err := writeZeros(path, int64(size), false); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	z.prepareSpare(spare, int64(size))
	return &zeroFile{File: f, dir: dir, fresh: true, syncs: z.syncs}, nil
}

func (z *zeroFS) OpenWriter(dir, name string) (types.WritableFile, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	return &zeroFile{File: f, dir: dir, syncs: z.syncs}, nil
}

func (z *zeroFS) prepareSpare(path string, size int64) {
	ready := make(chan struct{})
	z.mu.Lock()
	z.ready = ready
	z.mu.Unlock()
	go func() {
		defer close(ready)
		os.Remove(path)
		if err := writeZeros(path, size, true); err != nil {
			// Not fatal: the next Create writes its segment itself.
			slog.Warn("prepare spare log segment", "path", path, "err", err)
			os.Remove(path)
		}
	}()
}

// writeZeros creates path holding size zero bytes, durably (size included).
// With pace (a spare prepared in the background) the writes are spread
// out, so commits do not queue behind 64 MiB of zeros.
func writeZeros(path string, size int64, pace bool) (err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create segment %s: %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			err = fmt.Errorf("zero-fill segment %s: %w", path, err)
		}
	}()
	w := &durable.PacedWriter{F: f, Pace: pace}
	buf := make([]byte, durable.PaceChunk)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
	}
	return f.Sync()
}

// zeroFile syncs with fdatasync: its size never changes after creation.
// The first sync of a new segment also syncs the directory, which holds
// the segment's name.
type zeroFile struct {
	*os.File
	dir   string
	fresh bool
	syncs *hist.Histogram
}

func (f *zeroFile) Sync() error {
	start := time.Now()
	err := unix.Fdatasync(int(f.Fd()))
	f.syncs.Observe(time.Since(start).Seconds())
	if err != nil {
		return err
	}
	if f.fresh {
		if err := durable.SyncDir(f.dir); err != nil {
			return err
		}
		f.fresh = false
	}
	return nil
}
