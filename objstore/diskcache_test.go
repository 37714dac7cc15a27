package objstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/neonfs/neonfs/objstore/objstoretest"

	"github.com/neonfs/neonfs/objstore"
)

const cacheChunk = objstore.CacheChunkSize

// cacheChunkRoom is more than one chunk file (payload and header) takes, and
// less than two: a limit of k*cacheChunkRoom holds k full chunks.
const cacheChunkRoom = cacheChunk + 4096

var errRemoteDown = errors.New("remote down")

// spyStore wraps a remote, recording the calls that reach it; while down,
// every call fails.
type spyStore struct {
	objstore.ObjectStore
	down  atomic.Bool
	short atomic.Bool   // GetRange returns one byte less
	gate  chan struct{} // when set, GetRange waits for it to close

	mu    sync.Mutex
	calls []string
}

func (s *spyStore) record(format string, args ...any) error {
	s.mu.Lock()
	s.calls = append(s.calls, fmt.Sprintf(format, args...))
	s.mu.Unlock()
	if s.down.Load() {
		return errRemoteDown
	}
	return nil
}

// take returns the calls so far and forgets them.
func (s *spyStore) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.calls
	s.calls = nil
	return c
}

func (s *spyStore) Put(ctx context.Context, name string, data []byte) error {
	if err := s.record("Put %s", name); err != nil {
		return err
	}
	return s.ObjectStore.Put(ctx, name, data)
}

func (s *spyStore) Get(ctx context.Context, name string) ([]byte, error) {
	if err := s.record("Get %s", name); err != nil {
		return nil, err
	}
	return s.ObjectStore.Get(ctx, name)
}

func (s *spyStore) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	if err := s.record("GetRange %s %s", name, chunkRange(off, n)); err != nil {
		return nil, err
	}
	if s.gate != nil {
		<-s.gate
	}
	b, err := s.ObjectStore.GetRange(ctx, name, off, n)
	if err == nil && s.short.Load() && len(b) > 0 {
		b = b[:len(b)-1]
	}
	return b, err
}

func (s *spyStore) Size(ctx context.Context, name string) (int64, error) {
	if err := s.record("Size %s", name); err != nil {
		return 0, err
	}
	return s.ObjectStore.Size(ctx, name)
}

func (s *spyStore) Delete(ctx context.Context, name string) error {
	if err := s.record("Delete %s", name); err != nil {
		return err
	}
	return s.ObjectStore.Delete(ctx, name)
}

func (s *spyStore) List(ctx context.Context, prefix string) ([]objstore.ObjectInfo, error) {
	if err := s.record("List %s", prefix); err != nil {
		return nil, err
	}
	return s.ObjectStore.List(ctx, prefix)
}

// chunkRange spells a range in chunks where it can: "2C+1C", "4C+1000".
func chunkRange(off, n int64) string {
	f := func(x int64) string {
		if x%cacheChunk == 0 && x > 0 {
			return fmt.Sprintf("%dC", x/cacheChunk)
		}
		return fmt.Sprint(x)
	}
	return f(off) + "+" + f(n)
}

func newSpyStore(t *testing.T) *spyStore {
	t.Helper()
	ds, err := objstore.NewDirStore(filepath.Join(t.TempDir(), "remote"))
	if err != nil {
		t.Fatal(err)
	}
	return &spyStore{ObjectStore: ds}
}

// putRemote stores a random object in the remote behind the cache's back.
func putBehindCache(t *testing.T, s *spyStore, name string, n int) []byte {
	t.Helper()
	data := objstoretest.RandomBytes(n)
	if err := s.ObjectStore.Put(context.Background(), name, data); err != nil {
		t.Fatal(err)
	}
	return data
}

func newTestCache(t *testing.T, remote objstore.ObjectStore, dir string, limit int64) *objstore.CachedStore {
	t.Helper()
	c, err := objstore.NewCachedStore(remote, dir, limit)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// chunkFile is where the cache keeps chunk idx of name (the documented
// file name).
func cacheChunkFile(dir, name string, idx int) string {
	sum := sha256.Sum256([]byte(name))
	return filepath.Join(dir, fmt.Sprintf("%s-%d", hex.EncodeToString(sum[:16]), idx))
}

func cacheDirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, de := range des {
		fi, err := de.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

func checkCachedRange(t *testing.T, s objstore.ObjectStore, name string, data []byte, off, n int64) {
	t.Helper()
	got, err := s.GetRange(context.Background(), name, off, n)
	if err != nil {
		t.Fatalf("GetRange(%s, %s): %v", name, chunkRange(off, n), err)
	}
	if !bytes.Equal(got, data[off:off+n]) {
		t.Fatalf("GetRange(%s, %s): wrong bytes", name, chunkRange(off, n))
	}
}

func TestCachedStoreConformance(t *testing.T) {
	for _, tt := range []struct {
		name  string
		limit int64
	}{
		{"roomy", 1 << 30},
		{"two chunks", 2 * cacheChunkRoom},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			objstoretest.Run(t, newTestCache(t, newSpyStore(t), dir, tt.limit))
			if n := cacheDirBytes(t, dir); n > tt.limit {
				t.Fatalf("%d bytes in the cache directory, limit %d", n, tt.limit)
			}
		})
	}
}

func TestNewCachedStoreLimit(t *testing.T) {
	for _, limit := range []int64{0, -5} {
		_, err := objstore.NewCachedStore(newSpyStore(t), t.TempDir(), limit)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprint(limit)) {
			t.Errorf("limit %d: err = %v, want one naming the limit", limit, err)
		}
	}
}

func TestCachedStoreRangedRead(t *testing.T) {
	remote := newSpyStore(t)
	const name = "layers/obj"
	size := int64(5*cacheChunk + 1000)
	data := putBehindCache(t, remote, name, int(size))
	c := newTestCache(t, remote, t.TempDir(), 1<<30)
	steps := []struct {
		name   string
		off, n int64
		remote []string
	}{
		{"middle of chunk 2", 2*cacheChunk + 100, 5000, []string{"Size layers/obj", "GetRange layers/obj 2C+1C"}},
		{"chunk 2 again", 2*cacheChunk + 7, 10, nil},
		{"chunks 1-3 fetch 1 and 3 apart", cacheChunk + 5, 2 * cacheChunk, []string{"GetRange layers/obj 1C+1C", "GetRange layers/obj 3C+1C"}},
		{"chunks 4-5 coalesced, 5 short", 4 * cacheChunk, cacheChunk + 1000, []string{"GetRange layers/obj 4C+1049576"}},
		{"footer", size - 72, 72, nil},
		{"empty", 10, 0, nil},
		{"chunk 0", 0, cacheChunk, []string{"GetRange layers/obj 0+1C"}},
		{"everything", 0, size, nil},
	}
	for _, st := range steps {
		checkCachedRange(t, c, name, data, st.off, st.n)
		if got := remote.take(); !slices.Equal(got, st.remote) {
			t.Fatalf("%s: remote calls %q, want %q", st.name, got, st.remote)
		}
	}
	if got := objstoretest.MustGet(t, c, name); !bytes.Equal(got, data) || len(remote.take()) != 0 {
		t.Fatal("Get of a cached object: wrong bytes or remote calls")
	}
	if s := c.Stats(); s.Misses != 6 {
		t.Errorf("stats %+v: want 6 misses, one per chunk", s)
	}
}

func TestCachedStoreEviction(t *testing.T) {
	remote := newSpyStore(t)
	const name = "layers/obj"
	data := putBehindCache(t, remote, name, 6*cacheChunk)
	dir := t.TempDir()
	limit := int64(3 * cacheChunkRoom)
	c := newTestCache(t, remote, dir, limit)
	if _, err := c.Size(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		cacheChunk int64
		fetched    bool
	}{
		{0, true}, {1, true}, {2, true}, // full: LRU 0 1 2
		{0, false},                         // 1 2 0
		{3, true},                          // evicts 1: 2 0 3
		{2, false}, {0, false}, {3, false}, // 2 0 3
		{1, true}, // evicts 2: 0 3 1
		{0, false}, {3, false},
		{2, true}, // evicts 1
		{1, true},
	}
	remote.take()
	for i, st := range steps {
		checkCachedRange(t, c, name, data, st.cacheChunk*cacheChunk+10, 100)
		if calls := remote.take(); (len(calls) == 1) != st.fetched {
			t.Fatalf("step %d, chunk %d: remote calls %q, want fetched=%v", i, st.cacheChunk, calls, st.fetched)
		}
		if s := c.Stats(); s.Bytes > limit || cacheDirBytes(t, dir) > limit {
			t.Fatalf("step %d: %d bytes cached, %d on disk; limit %d", i, s.Bytes, cacheDirBytes(t, dir), limit)
		}
	}
	if s := c.Stats(); s.Evictions != 4 || s.Limit != limit {
		t.Errorf("stats %+v: want 4 evictions", s)
	}
	// A whole object bigger than the cache still reads right.
	if got := objstoretest.MustGet(t, c, name); !bytes.Equal(got, data) {
		t.Fatal("Get of an object bigger than the cache: wrong bytes")
	}
	if n := cacheDirBytes(t, dir); n > limit {
		t.Fatalf("%d bytes on disk after a big Get; limit %d", n, limit)
	}
}

func TestCachedStoreRestart(t *testing.T) {
	ctx := context.Background()
	remote := newSpyStore(t)
	dir := t.TempDir()
	c := newTestCache(t, remote, dir, 1<<30)
	a := objstoretest.RandomBytes(2*cacheChunk + cacheChunk/2)
	if err := c.Put(ctx, "layers/a", a); err != nil {
		t.Fatal(err)
	}
	b := putBehindCache(t, remote, "layers/b", 3*cacheChunk)
	checkCachedRange(t, c, "layers/b", b, cacheChunk+10, 1000)
	bytesBefore := c.Stats().Bytes
	for _, f := range []string{".tmp-123", "README"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	remote.take()
	remote.down.Store(true)
	c = newTestCache(t, remote, dir, 1<<30)
	if s := c.Stats(); s.Bytes != bytesBefore {
		t.Errorf("reopened with %d bytes cached, want %d", s.Bytes, bytesBefore)
	}
	if size, err := c.Size(ctx, "layers/b"); err != nil || size != 3*cacheChunk {
		t.Errorf("Size(layers/b) = %d, %v", size, err)
	}
	if got := objstoretest.MustGet(t, c, "layers/a"); !bytes.Equal(got, a) {
		t.Error("Get(layers/a) after restart: wrong bytes")
	}
	checkCachedRange(t, c, "layers/b", b, cacheChunk, cacheChunk)
	if calls := remote.take(); len(calls) != 0 {
		t.Errorf("reads of cached chunks after restart called the remote: %q", calls)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-123")); !os.IsNotExist(err) {
		t.Errorf("temporary file survived the restart: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "README")); err != nil {
		t.Errorf("a file that is not the cache's was touched: %v", err)
	}

	// Reopened with room for one chunk, the cache keeps the most recently
	// used by mtime.
	old := time.Now().Add(-time.Hour)
	for i := range 3 {
		os.Chtimes(cacheChunkFile(dir, "layers/a", i), old, old)
	}
	c = newTestCache(t, remote, dir, cacheChunkRoom)
	checkCachedRange(t, c, "layers/b", b, cacheChunk, cacheChunk)
	if _, err := c.GetRange(ctx, "layers/a", 0, 1); !errors.Is(err, errRemoteDown) {
		t.Errorf("GetRange of an evicted chunk with the remote down: %v", err)
	}
	if s := c.Stats(); s.Bytes > cacheChunkRoom || s.Evictions != 3 {
		t.Errorf("reopened with a smaller limit: %+v", s)
	}
}

func TestCachedStoreCorruptChunk(t *testing.T) {
	const name = "layers/obj"
	size := 2*cacheChunk + 5000 // chunk 2 is short
	tests := []struct {
		name    string
		idx     int
		corrupt func(path string) error
		logged  bool
	}{
		{"payload", 1, flipCacheByte(5000 + cacheChunk/2), true},
		{"payload of a short chunk", 2, flipCacheByte(4000), true},
		{"object size", 1, flipCacheByte(9), true},
		{"block checksums", 1, flipCacheByte(20), true},
		{"magic", 1, flipCacheByte(0), true},
		{"truncated", 1, func(p string) error { return os.Truncate(p, 10000) }, true},
		{"empty", 2, func(p string) error { return os.Truncate(p, 0) }, true},
		{"deleted", 1, os.Remove, false}, // say, evicted meanwhile
	}
	for _, tt := range tests {
		for _, restart := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/restart=%v", tt.name, restart), func(t *testing.T) {
				logs := captureCacheLogs(t)
				remote := newSpyStore(t)
				data := putBehindCache(t, remote, name, size)
				dir := t.TempDir()
				c := newTestCache(t, remote, dir, 1<<30)
				checkCachedRange(t, c, name, data, 0, int64(size)) // all cached
				if err := tt.corrupt(cacheChunkFile(dir, name, tt.idx)); err != nil {
					t.Fatal(err)
				}
				if restart {
					c = newTestCache(t, remote, dir, 1<<30)
				}
				remote.take()
				checkCachedRange(t, c, name, data, 0, int64(size))
				want := []string{fmt.Sprintf("GetRange %s %s", name, chunkRange(int64(tt.idx)*cacheChunk, min(cacheChunk, int64(size-tt.idx*cacheChunk))))}
				if got := remote.take(); !slices.Equal(got, want) {
					t.Fatalf("remote calls %q, want %q", got, want)
				}
				checkCachedRange(t, c, name, data, 0, int64(size))
				if got := remote.take(); len(got) != 0 {
					t.Fatalf("refetched chunk was not cached again: %q", got)
				}
				if logged := strings.Contains(logs.String(), "bad chunk"); logged != tt.logged {
					t.Errorf("bad chunk logged = %v, want %v; logs:\n%s", logged, tt.logged, logs)
				}
			})
		}
	}
}

// captureCacheLogs sends slog's output to the returned buffer until the test ends.
func captureCacheLogs(t *testing.T) *bytes.Buffer {
	var logs bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	return &logs
}

func flipCacheByte(off int64) func(string) error {
	return func(path string) error {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, off); err != nil {
			return err
		}
		b[0] ^= 0x40
		_, err = f.WriteAt(b, off)
		return err
	}
}

func TestCachedStoreRemoteDown(t *testing.T) {
	ctx := context.Background()
	remote := newSpyStore(t)
	c := newTestCache(t, remote, t.TempDir(), 1<<30)
	put := objstoretest.RandomBytes(cacheChunk + 100)
	if err := c.Put(ctx, "layers/put", put); err != nil {
		t.Fatal(err)
	}
	read := putBehindCache(t, remote, "layers/read", 3*cacheChunk)
	checkCachedRange(t, c, "layers/read", read, 10, 100)
	remote.take()

	remote.down.Store(true)
	if got := objstoretest.MustGet(t, c, "layers/put"); !bytes.Equal(got, put) {
		t.Error("Get of a put object: wrong bytes")
	}
	checkCachedRange(t, c, "layers/read", read, 0, cacheChunk)
	if calls := remote.take(); len(calls) != 0 {
		t.Errorf("cached reads called the remote: %q", calls)
	}
	fails := []struct {
		name string
		op   func() error
	}{
		{"uncached range", func() error { _, err := c.GetRange(ctx, "layers/read", cacheChunk-1, 2); return err }},
		{"Get", func() error { _, err := c.Get(ctx, "layers/read"); return err }},
		{"Size", func() error { _, err := c.Size(ctx, "layers/other"); return err }},
		{"Put", func() error { return c.Put(ctx, "layers/new", []byte("x")) }},
		{"List", func() error { _, err := c.List(ctx, "layers/"); return err }},
	}
	for _, f := range fails {
		if err := f.op(); !errors.Is(err, errRemoteDown) {
			t.Errorf("%s: err = %v, want the remote's error", f.name, err)
		}
	}
	// A failed Put caches nothing.
	if _, err := c.Size(ctx, "layers/new"); !errors.Is(err, errRemoteDown) {
		t.Errorf("Size of a failed Put: %v", err)
	}
}

func TestCachedStoreShortRemoteRead(t *testing.T) {
	remote := newSpyStore(t)
	data := putBehindCache(t, remote, "layers/obj", 2*cacheChunk)
	c := newTestCache(t, remote, t.TempDir(), 1<<30)
	remote.short.Store(true)
	_, err := c.GetRange(context.Background(), "layers/obj", 10, 10)
	if !errors.Is(err, objstore.ErrCorrupt) || !strings.Contains(err.Error(), "layers/obj") {
		t.Fatalf("short remote read: err = %v, want ErrCorrupt naming the object", err)
	}
	remote.short.Store(false)
	checkCachedRange(t, c, "layers/obj", data, 10, 10)
}

func TestCachedStorePutCacheFailure(t *testing.T) {
	ctx := context.Background()
	logs := captureCacheLogs(t)
	remote := newSpyStore(t)
	dir := filepath.Join(t.TempDir(), "cache")
	c := newTestCache(t, remote, dir, 1<<30)
	// The cache directory turns into a file: no chunk can be written.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	data := objstoretest.RandomBytes(cacheChunk + 1)
	if err := c.Put(ctx, "layers/obj", data); err != nil {
		t.Fatalf("Put with a broken cache: %v", err)
	}
	if !strings.Contains(logs.String(), "layers/obj") {
		t.Errorf("the failure to cache was not logged; logs:\n%s", logs)
	}
	if got := objstoretest.MustGet(t, c, "layers/obj"); !bytes.Equal(got, data) {
		t.Fatal("Get with a broken cache: wrong bytes")
	}
	if s := c.Stats(); s.Bytes != 0 {
		t.Errorf("stats %+v: nothing could be cached", s)
	}
}

func TestCachedStoreConcurrentMiss(t *testing.T) {
	remote := newSpyStore(t)
	const name = "layers/obj"
	data := putBehindCache(t, remote, name, 3*cacheChunk)
	c := newTestCache(t, remote, t.TempDir(), 1<<30)
	if _, err := c.Size(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	remote.take()
	remote.gate = make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			off := cacheChunk + rand.Int64N(cacheChunk-100)
			got, err := c.GetRange(context.Background(), name, off, 100)
			if err != nil {
				errs <- err
			} else if !bytes.Equal(got, data[off:off+100]) {
				errs <- fmt.Errorf("GetRange at %d: wrong bytes", off)
			}
		})
	}
	// Let the readers pile up behind the first fetch.
	for started := false; !started; {
		time.Sleep(time.Millisecond)
		remote.mu.Lock()
		started = len(remote.calls) > 0
		remote.mu.Unlock()
	}
	time.Sleep(20 * time.Millisecond)
	close(remote.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if calls := remote.take(); !slices.Equal(calls, []string{"GetRange layers/obj 1C+1C"}) {
		t.Fatalf("remote calls %q, want one fetch of chunk 1", calls)
	}
}

// BenchmarkCachedStoreGetRange reads 8 KiB records from cached chunks,
// against the same reads from a DirStore for scale.
func BenchmarkCachedStoreGetRange(b *testing.B) {
	ctx := context.Background()
	ds, err := objstore.NewDirStore(filepath.Join(b.TempDir(), "remote"))
	if err != nil {
		b.Fatal(err)
	}
	c, err := objstore.NewCachedStore(ds, b.TempDir(), 1<<30)
	if err != nil {
		b.Fatal(err)
	}
	const size, n = 16 * cacheChunk, 8 << 10
	if err := c.Put(ctx, "layers/obj", objstoretest.RandomBytes(size)); err != nil {
		b.Fatal(err)
	}
	for _, s := range []objstore.ObjectStore{ds, c} {
		b.Run(fmt.Sprintf("%T", s), func(b *testing.B) {
			b.SetBytes(n)
			for b.Loop() {
				if _, err := s.GetRange(ctx, "layers/obj", rand.Int64N(size-n), n); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
