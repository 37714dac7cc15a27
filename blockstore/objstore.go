package blockstore

import (
	"context"
	"errors"
	"os"
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

// A stagingStore takes a big object from a local file it made itself, so
// the object (a merged layer, up to a gigabyte) never has to be held in
// memory whole. DirStore is one; other stores get objects through Put.
type stagingStore interface {
	CreateTemp(ctx context.Context, name string) (*os.File, error)
	PutFile(ctx context.Context, name string, f *os.File) error
}

// A rangeReader reads a range into the capacity of a caller's buffer
// (DirStore), so a merge reading gigabytes reuses one buffer per input.
type rangeReader interface {
	ReadRange(ctx context.Context, name string, off, n int64, buf []byte) ([]byte, error)
}

// ObjectStore is the seam to the object store (a local directory, S3, ...)
// that holds layer objects. Implementations must be safe for concurrent use.
// Byte slices returned by Get and GetRange belong to the caller: layers hand
// sub-slices of them to their own callers, so an implementation must not
// keep or reuse them.
type ObjectStore interface {
	// Put stores data under name; when it returns nil the object is durable.
	// It must not retain data after it returns: callers reuse the buffer.
	// Objects are immutable: callers never Put the same name twice with
	// different data.
	Put(ctx context.Context, name string, data []byte) error
	Get(ctx context.Context, name string) ([]byte, error)
	// GetRange returns n bytes at off; a short object is an error wrapping
	// ErrCorrupt (not a short read).
	GetRange(ctx context.Context, name string, off, n int64) ([]byte, error)
	Size(ctx context.Context, name string) (int64, error)
	Delete(ctx context.Context, name string) error
	// List returns the objects whose names start with prefix, sorted by name.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
}
