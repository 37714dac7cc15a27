// Package objstore holds the object-store seam: the ObjectStore interface
// that layer objects are written through, its local-directory
// implementation (DirStore) and the on-disk cache of remote layer chunks
// (CachedStore); S3 is in objstore/s3, the conformance suite every
// implementation passes in objstore/objstoretest. It knows objects, not
// what is in them: it never imports blockstore, the volume or the fs.
package objstore

import (
	"context"
	"errors"
	"os"
	"time"
)

// ErrNotFound is wrapped by ObjectStore methods when the object does not exist.
var ErrNotFound = errors.New("object not found")

// ErrCorrupt is wrapped when an object fails a checksum or is malformed/truncated.
var ErrCorrupt = errors.New("corrupt object")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Name string
	Size int64
}

// ObjectStore is the seam to the object store (a local directory, S3, ...)
// that holds layer objects. Implementations must be safe for concurrent use.
// Byte slices returned by Get, GetRange and ReadRange belong to the
// caller: layers hand sub-slices of them to their own callers, so an
// implementation must not keep or reuse them.
type ObjectStore interface {
	// Put stores data under name; when it returns nil the object is durable.
	// It must not retain data after it returns: callers reuse the buffer.
	// Objects are immutable: callers never Put the same name twice with
	// different data.
	Put(ctx context.Context, name string, data []byte) error
	// CreateTemp and PutFile stream an object too big to hold in memory
	// (a merged layer, up to a gigabyte): the caller writes it to the local
	// file CreateTemp returns, then PutFile makes the file's content the
	// object name, durably, and closes and removes the file (also on
	// error). A caller giving up closes and removes the file itself.
	CreateTemp(ctx context.Context, name string) (*os.File, error)
	PutFile(ctx context.Context, name string, f *os.File) error
	Get(ctx context.Context, name string) ([]byte, error)
	// GetRange returns n bytes at off; a short object is an error wrapping
	// ErrCorrupt (not a short read).
	GetRange(ctx context.Context, name string, off, n int64) ([]byte, error)
	// ReadRange is GetRange into buf's capacity when it is big enough, so
	// a merge reading gigabytes reuses one buffer per input.
	ReadRange(ctx context.Context, name string, off, n int64, buf []byte) ([]byte, error)
	Size(ctx context.Context, name string) (int64, error)
	Delete(ctx context.Context, name string) error
	// List returns the objects whose names start with prefix, sorted by name.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
	// Forget drops any local copy of name (a cache's) after a reader found
	// it corrupt, so a repaired object is read afresh.
	Forget(name string)
	// RemoveStaleTemps deletes the temporary files of uploads a crash cut
	// short, once nothing has written to them for age.
	RemoveStaleTemps(age time.Duration) (n int, bytes int64, err error)
}

// RangeBuffer returns n bytes of buf's storage when it is big enough, else
// a new slice: where ReadRange reads to.
func RangeBuffer(buf []byte, n int64) []byte {
	if int64(cap(buf)) < n {
		return make([]byte, n)
	}
	return buf[:n]
}

// DiscardTemp closes and removes a file from CreateTemp that will not be
// put.
func DiscardTemp(f *os.File) {
	f.Close()
	os.Remove(f.Name())
}

// Prefetcher is an ObjectStore that can bring objects into memory ahead
// of reads without the caller waiting for it (DirStore: into the page
// cache). Prefetch is a hint: an error only says it was not taken.
type Prefetcher interface {
	Prefetch(name string) error
}
