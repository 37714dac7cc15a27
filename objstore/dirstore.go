package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/neonfs/neonfs/durable"
)

// DirStore is an ObjectStore in a local directory, for single-machine
// volumes and tests. An object name maps to a file; '/' in a name maps to
// subdirectories. A name component may not start with '.', so the temporary
// files of unfinished Puts (".tmp-*") can never be mistaken for objects, and
// no name can escape the directory. A name cannot be both an object and a
// directory of other objects ("a" and "a/b"). Safe for concurrent use.
type DirStore struct {
	dir string

	// Open handles of recently read objects. Objects are immutable, so a
	// handle never goes stale; it saves an open, fstat and close on every
	// 8 KiB read from a layer.
	mu  sync.Mutex
	fds map[string]*openObject

	around readAround // small reads that miss the page cache (readaround.go)
}

type openObject struct {
	f    *os.File
	fd   int // f's descriptor, valid while refs > 0
	size int64
	refs int  // readers using f; the cache holds one reference
	gone bool // evicted: close when the last reader is done

	windows []atomic.Uint32 // read-around state of each window (readaround.go)
}

const maxOpenObjects = 256

func (s *DirStore) acquire(op, name string) (*openObject, error) {
	s.mu.Lock()
	if o, ok := s.fds[name]; ok {
		o.refs++
		s.mu.Unlock()
		return o, nil
	}
	s.mu.Unlock()
	f, size, err := s.open(op, name)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if o, ok := s.fds[name]; ok { // raced with another reader
		f.Close()
		o.refs++
		return o, nil
	}
	if s.fds == nil {
		s.fds = make(map[string]*openObject)
	}
	for k := range s.fds {
		if len(s.fds) < maxOpenObjects {
			break
		}
		s.evictLocked(k)
	}
	o := &openObject{f: f, fd: int(f.Fd()), size: size, refs: 2, windows: make([]atomic.Uint32, windowsOf(size))}
	s.fds[name] = o
	return o, nil
}

func (s *DirStore) release(o *openObject) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o.refs--
	if o.refs == 0 {
		o.f.Close()
	}
}

func (s *DirStore) evictLocked(name string) {
	if o, ok := s.fds[name]; ok {
		delete(s.fds, name)
		o.refs--
		if o.refs == 0 {
			o.f.Close()
		}
	}
}

var _ ObjectStore = (*DirStore)(nil)

// dirStoreTempPrefix starts every temporary file; List skips dot files.
const dirStoreTempPrefix = ".tmp-"

// NewDirStore opens the object store in dir, creating dir (mode 0700) if it
// does not exist.
func NewDirStore(dir string) (*DirStore, error) {
	if dir == "" {
		return nil, errors.New("object store directory: empty path")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create object store directory %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("object store directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("object store directory %s: not a directory", dir)
	}
	return &DirStore{dir: filepath.Clean(dir)}, nil
}

// Dir returns the directory holding the objects.
func (s *DirStore) Dir() string { return s.dir }

// validObjectName reports whether name is a relative slash-separated path of
// non-empty components none of which starts with '.' (which also rules out
// "." and "..").
func ValidName(name string) bool {
	if name == "" || strings.ContainsRune(name, 0) || strings.ContainsRune(name, '\\') {
		return false
	}
	for c := range strings.SplitSeq(name, "/") {
		if c == "" || c[0] == '.' {
			return false
		}
	}
	return true
}

func (s *DirStore) path(name string) string {
	return filepath.Join(s.dir, filepath.FromSlash(name))
}

func (s *DirStore) checkName(op, name string) error {
	if !ValidName(name) {
		return fmt.Errorf("%s object %q: invalid object name", op, name)
	}
	return nil
}

// dirStoreNotFound maps "no such object" errors to ErrNotFound. ENOTDIR means a
// prefix of the name is an object, not a directory, and a directory where the
// object should be is another object's prefix: in both cases the object
// itself does not exist.
func dirStoreNotFound(op, name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%s object %s: %w: %w", op, name, ErrNotFound, err)
	}
	return fmt.Errorf("%s object %s: %w", op, name, err)
}

// Put writes data to a temporary file, fsyncs it, renames it into place and
// fsyncs the directory, so that after a crash the object is either absent or
// complete.
func (s *DirStore) Put(ctx context.Context, name string, data []byte) error {
	f, err := s.CreateTemp(ctx, name)
	if err != nil {
		return err
	}
	// Allocated up front, the object's blocks are not new at writeback: on
	// ext4 (data=ordered) the log's next fsync would otherwise commit their
	// allocation and wait for all their data. Only a hint where unsupported.
	if len(data) > 1<<20 {
		if ferr := unix.Fallocate(int(f.Fd()), 0, 0, int64(len(data))); errors.Is(ferr, syscall.ENOSPC) {
			DiscardTemp(f)
			return fmt.Errorf("put object %s: %w", name, ferr)
		}
	}
	w := &durable.PacedWriter{F: f, Pace: len(data) > durable.PaceChunk}
	if _, err := w.Write(data); err != nil {
		DiscardTemp(f)
		return fmt.Errorf("put object %s: %w", name, err)
	}
	return s.PutFile(ctx, name, f)
}

// CreateTemp returns a new temporary file beside where the object name
// will be, for PutFile.
func (s *DirStore) CreateTemp(ctx context.Context, name string) (*os.File, error) {
	if err := s.checkName("put", name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("put object %s: %w", name, err)
	}
	parent := filepath.Dir(s.path(name))
	if err := s.mkdirs(parent); err != nil {
		return nil, fmt.Errorf("put object %s: %w", name, err)
	}
	f, err := os.CreateTemp(parent, dirStoreTempPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("put object %s: %w", name, err)
	}
	return f, nil
}

// PutFile makes f, a file from CreateTemp holding the whole object, the
// object name: it fsyncs f, renames it into place and fsyncs the
// directory. It closes f, and removes it on error.
func (s *DirStore) PutFile(ctx context.Context, name string, f *os.File) error {
	err := f.Sync()
	// Close can report a deferred write error (NFS, quota), so check it.
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), s.path(name))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("put object %s: %w", name, err)
	}
	if err := durable.SyncDir(filepath.Dir(s.path(name))); err != nil {
		return fmt.Errorf("put object %s: %w", name, err)
	}
	return nil
}

// Forget does nothing: a directory keeps no copies.
func (s *DirStore) Forget(string) {}

// RemoveStaleTemps deletes the temporary files of Puts and merges that a
// crash cut short (up to a gigabyte each), once nothing has written to
// them for age: a Put in progress keeps writing to its file.
func (s *DirStore) RemoveStaleTemps(age time.Duration) (n int, bytes int64, err error) {
	err = filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() || !strings.HasPrefix(d.Name(), dirStoreTempPrefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil || time.Since(fi.ModTime()) < age {
			return nil
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		n++
		bytes += fi.Size()
		return nil
	})
	if err != nil {
		return n, bytes, fmt.Errorf("remove stale temporary files in %s: %w", s.dir, err)
	}
	return n, bytes, nil
}

// mkdirs creates dir and its missing parents below the store root, fsyncing
// the parent of every directory it creates: otherwise a crash could lose a
// new directory, and with it an object that Put reported durable.
func (s *DirStore) mkdirs(dir string) error {
	if dir == s.dir {
		return nil
	}
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if err := s.mkdirs(parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// A concurrent Put created it; it may still be unsynced, so
			// sync the parent anyway.
			if fi, serr := os.Stat(dir); serr == nil && fi.IsDir() {
				return durable.SyncDir(parent)
			}
		}
		return err
	}
	return durable.SyncDir(parent)
}

// open opens an object for reading; a directory is not an object.
func (s *DirStore) open(op, name string) (*os.File, int64, error) {
	if err := s.checkName(op, name); err != nil {
		return nil, 0, err
	}
	f, err := os.Open(s.path(name))
	if err != nil {
		return nil, 0, dirStoreNotFound(op, name, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("%s object %s: %w", op, name, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s object %s: %w: not a regular file", op, name, ErrNotFound)
	}
	return f, fi.Size(), nil
}

func (s *DirStore) Get(ctx context.Context, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get object %s: %w", name, err)
	}
	f, size, err := s.open("get", name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, size)
	if _, err := io.ReadFull(f, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			// Objects are immutable, so a file shorter than its size was
			// truncated behind our back.
			return nil, fmt.Errorf("get object %s: %w: shorter than its size %d", name, ErrCorrupt, size)
		}
		return nil, fmt.Errorf("get object %s: %w", name, err)
	}
	return b, nil
}

func (s *DirStore) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	return s.ReadRange(ctx, name, off, n, nil)
}

// ReadRange is GetRange into buf's capacity when it is big enough, so a
// merge reading gigabytes reuses one buffer instead of faulting in fresh
// memory for every chunk.
func (s *DirStore) ReadRange(ctx context.Context, name string, off, n int64, buf []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get object %s: %w", name, err)
	}
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("get object %s: invalid range offset %d length %d", name, off, n)
	}
	o, err := s.acquire("get", name)
	if err != nil {
		return nil, err
	}
	defer s.release(o)
	f, size := o.f, o.size
	// Checked before allocating so a corrupted length read from a layer
	// cannot allocate more than the object's size.
	if off > size || n > size-off {
		return nil, fmt.Errorf("get object %s: range [%d, %d+%d) beyond size %d: %w", name, off, off, n, size, ErrCorrupt)
	}
	b := RangeBuffer(buf, n)
	if n < readAroundBytes && s.around.read(o, off, b) {
		return b, nil
	}
	if _, err := f.ReadAt(b, off); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("get object %s: range [%d, %d+%d) beyond end of file: %w", name, off, off, n, ErrCorrupt)
		}
		return nil, fmt.Errorf("get object %s: %w", name, err)
	}
	return b, nil
}

// Prefetch asks the kernel to read all of name into the page cache
// (posix_fadvise WILLNEED) and returns once the reads are queued: later
// reads of it are page-cache hits, not one disk read each.
func (s *DirStore) Prefetch(name string) error {
	o, err := s.acquire("prefetch", name)
	if err != nil {
		return err
	}
	defer s.release(o)
	if err := unix.Fadvise(o.fd, 0, o.size, unix.FADV_WILLNEED); err != nil {
		return fmt.Errorf("prefetch object %s: %w", name, err)
	}
	return nil
}

func (s *DirStore) Size(ctx context.Context, name string) (int64, error) {
	if err := s.checkName("stat", name); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("stat object %s: %w", name, err)
	}
	fi, err := os.Stat(s.path(name))
	if err != nil {
		return 0, dirStoreNotFound("stat", name, err)
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("stat object %s: %w: not a regular file", name, ErrNotFound)
	}
	return fi.Size(), nil
}

// Delete removes the object and fsyncs its directory. Empty subdirectories
// are left behind: removing them would race with a concurrent Put into them.
func (s *DirStore) Delete(ctx context.Context, name string) error {
	if err := s.checkName("delete", name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete object %s: %w", name, err)
	}
	s.mu.Lock()
	s.evictLocked(name)
	s.mu.Unlock()
	p := s.path(name)
	fi, err := os.Lstat(p)
	if err != nil {
		return dirStoreNotFound("delete", name, err)
	}
	if fi.IsDir() {
		return fmt.Errorf("delete object %s: %w: is a directory", name, ErrNotFound)
	}
	if err := os.Remove(p); err != nil {
		return dirStoreNotFound("delete", name, err)
	}
	if err := durable.SyncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("delete object %s: %w", name, err)
	}
	return nil
}

// List returns the objects whose names start with prefix, sorted by name.
func (s *DirStore) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list objects %q: %w", prefix, err)
	}
	// Walk only the directory the prefix names. If that directory part is
	// not a valid name, no valid object name can start with prefix.
	root := s.dir
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		if !ValidName(prefix[:i]) {
			return nil, nil
		}
		root = s.path(prefix[:i])
	}
	var out []ObjectInfo
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			// Missing root (nothing stored under the prefix yet) or an
			// entry deleted during the walk.
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return nil
			}
			return err
		}
		if p == root {
			if !d.IsDir() {
				return nil
			}
			return ctx.Err()
		}
		if strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(s.dir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if d.IsDir() {
			// Descend only where names can still match the prefix.
			if dn := name + "/"; !strings.HasPrefix(dn, prefix) && !strings.HasPrefix(prefix, dn) {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(name, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		out = append(out, ObjectInfo{Name: name, Size: fi.Size()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list objects %q in %s: %w", prefix, s.dir, err)
	}
	// WalkDir's per-directory order is not the order of full names
	// ("a-b" < "a/x" but the walk visits a/ first).
	slices.SortFunc(out, func(a, b ObjectInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
