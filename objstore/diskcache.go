package objstore

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// CacheChunkSize is the unit in which a CachedStore caches objects: chunk i
// of an object holds its bytes [i*CacheChunkSize, (i+1)*CacheChunkSize),
// the last chunk fewer.
const CacheChunkSize = 1 << 20

// A chunk file, named <hex of sha256(object name)[:16]>-<chunk index>:
//
//	   0 magic "neonfsC1"
//	   8 object size u64
//	  16 crc32c of each 4 KiB block of the payload, 256 x u32 (0 past its end)
//	1040 crc32c of bytes 0..1040 u32
//	1044 payload: the chunk's bytes
//
// Checksumming blocks, not the chunk, lets an 8 KiB record read read and
// verify 8-12 KiB instead of a whole chunk. The object size in every chunk
// lets a restarted cache answer Size without the remote.
const (
	cacheMagic      = "neonfsC1"
	cacheBlockSize  = 4 << 10
	cacheHeaderLen  = 16 + 4*(CacheChunkSize/cacheBlockSize) + 4
	cacheTouchEvery = time.Minute // how stale a cached chunk's mtime may get
)

// CachedStore is an ObjectStore that keeps chunks of a remote store's
// objects on local disk, within a byte limit, evicting the least recently
// used chunks. Objects are immutable, so cached chunks and sizes never go
// stale, and reads of cached ranges never touch the remote: they keep
// working while it is unreachable. Writes and deletes go to the remote.
// The cache is disposable: files are not fsynced, and a chunk that fails
// its checksum is dropped and fetched again. Safe for concurrent use;
// concurrent misses on one chunk fetch it once.
//
// Deleting an object while it is being read may leave chunks of it in the
// cache until they are evicted; they are unreachable, since its size is
// forgotten (and GC deletes only layers nobody reads).
type CachedStore struct {
	remote ObjectStore
	dir    string
	limit  int64

	hits, misses, evictions atomic.Int64

	mu       sync.Mutex
	used     int64      // bytes of chunk files, plus those being written
	lru      *list.List // of *cacheEntry, most recently used first
	chunks   map[cacheKey]*list.Element
	sizes    map[cacheObjID]int64
	inflight map[cacheKey]*cacheFetch
}

var _ ObjectStore = (*CachedStore)(nil)

// CacheStats counts chunks, not calls: a read spanning three chunks is
// three hits or misses.
type CacheStats struct {
	Hits      int64 `json:"hits"`   // chunk reads served from disk
	Misses    int64 `json:"misses"` // chunk reads that had to wait for the remote
	Evictions int64 `json:"evictions"`
	Bytes     int64 `json:"bytes"` // on disk, headers included
	Limit     int64 `json:"limit"`
}

type cacheObjID [16]byte

type cacheKey struct {
	obj cacheObjID
	idx int64
}

type cacheEntry struct {
	key     cacheKey
	size    int64     // of the file
	touched time.Time // last mtime set
}

// cacheFetch is a remote read of one chunk that other readers can wait for.
type cacheFetch struct {
	done chan struct{}
	data []byte // the chunk, once done; readers only copy from it
	err  error
}

// NewCachedStore opens the cache in dir (creating it), keeping at most
// limit bytes of chunk files there. Chunks left by an earlier run are kept,
// least recently used first by mtime; temporary files are removed. The
// directory must belong to this store alone: chunks are keyed by object
// name, so two remotes (or two processes) must not share one.
func NewCachedStore(remote ObjectStore, dir string, limit int64) (*CachedStore, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("layer cache %s: size limit %d: must be positive", dir, limit)
	}
	if dir == "" {
		return nil, errors.New("layer cache directory: empty path")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create layer cache directory %s: %w", dir, err)
	}
	c := &CachedStore{
		remote:   remote,
		dir:      filepath.Clean(dir),
		limit:    limit,
		lru:      list.New(),
		chunks:   make(map[cacheKey]*list.Element),
		sizes:    make(map[cacheObjID]int64),
		inflight: make(map[cacheKey]*cacheFetch),
	}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *CachedStore) load() error {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return fmt.Errorf("layer cache %s: %w", c.dir, err)
	}
	var found []*cacheEntry
	for _, de := range des {
		p := filepath.Join(c.dir, de.Name())
		if strings.HasPrefix(de.Name(), dirStoreTempPrefix) {
			os.Remove(p) // a write cut short
			continue
		}
		key, ok := parseCacheFileName(de.Name())
		if !ok || !de.Type().IsRegular() {
			continue // not ours: leave it alone
		}
		fi, err := de.Info()
		if err != nil {
			continue
		}
		size, err := readCacheChunk(p, key.idx, 0, 0, nil)
		if want := cacheHeaderLen + cacheChunkLen(size, key.idx); err == nil && fi.Size() != want {
			err = fmt.Errorf("%w: %d bytes, want %d", ErrCorrupt, fi.Size(), want)
		}
		if err != nil {
			slog.Warn("layer cache: removing bad chunk file", "file", p, "err", err)
			os.Remove(p)
			continue
		}
		c.sizes[key.obj] = size
		found = append(found, &cacheEntry{key: key, size: fi.Size(), touched: fi.ModTime()})
	}
	slices.SortFunc(found, func(a, b *cacheEntry) int { return a.touched.Compare(b.touched) })
	for _, e := range found {
		c.chunks[e.key] = c.lru.PushFront(e)
		c.used += e.size
	}
	removeFiles(c.evictLocked()) // the limit may have shrunk
	return nil
}

func (c *CachedStore) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Evictions: c.evictions.Load(), Bytes: c.used, Limit: c.limit}
}

// Put writes to the remote, then caches data: fresh layers are hot. Failing
// to cache is logged, not returned.
func (c *CachedStore) Put(ctx context.Context, name string, data []byte) error {
	if err := c.remote.Put(ctx, name, data); err != nil {
		return err
	}
	obj, size := cacheObjectID(name), int64(len(data))
	c.mu.Lock()
	c.sizes[obj] = size
	c.mu.Unlock()
	if size > c.limit {
		return nil // it would only evict itself
	}
	for i := int64(0); i*CacheChunkSize < size; i++ {
		chunk := data[i*CacheChunkSize : min((i+1)*CacheChunkSize, size)]
		if err := c.store(cacheKey{obj, i}, size, chunk); err != nil {
			slog.Warn("layer cache: caching a put object failed", "object", name, "chunk", i, "err", err)
			break
		}
	}
	return nil
}

func (c *CachedStore) Get(ctx context.Context, name string) ([]byte, error) {
	size, err := c.Size(ctx, name)
	if err != nil {
		return nil, err
	}
	out := make([]byte, size)
	if size > 0 {
		if err := c.read(ctx, name, size, 0, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (c *CachedStore) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	return c.ReadRange(ctx, name, off, n, nil)
}

func (c *CachedStore) ReadRange(ctx context.Context, name string, off, n int64, buf []byte) ([]byte, error) {
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("get object %s: invalid range offset %d length %d", name, off, n)
	}
	size, err := c.Size(ctx, name)
	if err != nil {
		return nil, err
	}
	if off > size || n > size-off {
		return nil, fmt.Errorf("get object %s: range [%d, %d+%d) beyond size %d: %w", name, off, off, n, size, ErrCorrupt)
	}
	out := RangeBuffer(buf, n)
	if n > 0 {
		if err := c.read(ctx, name, size, off, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// CreateTemp stages a streamed object where the remote does.
func (c *CachedStore) CreateTemp(ctx context.Context, name string) (*os.File, error) {
	return c.remote.CreateTemp(ctx, name)
}

// PutFile uploads a streamed object. Its content is not cached: streamed
// objects are merged layers, as big as the cache, and no hotter than
// their inputs were.
func (c *CachedStore) PutFile(ctx context.Context, name string, f *os.File) error {
	return c.remote.PutFile(ctx, name, f)
}

// RemoveStaleTemps removes the remote's stale staging files.
func (c *CachedStore) RemoveStaleTemps(age time.Duration) (int, int64, error) {
	return c.remote.RemoveStaleTemps(age)
}

// Size answers from the cache when it can: sizes never change.
func (c *CachedStore) Size(ctx context.Context, name string) (int64, error) {
	if !ValidName(name) {
		return 0, fmt.Errorf("stat object %q: invalid object name", name)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("stat object %s: %w", name, err)
	}
	obj := cacheObjectID(name)
	c.mu.Lock()
	size, ok := c.sizes[obj]
	c.mu.Unlock()
	if ok {
		return size, nil
	}
	size, err := c.remote.Size(ctx, name)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.sizes[obj] = size
	c.mu.Unlock()
	return size, nil
}

// Delete deletes the remote object and drops its cached chunks, even when
// the remote fails: the cache may always forget.
func (c *CachedStore) Delete(ctx context.Context, name string) error {
	err := c.remote.Delete(ctx, name)
	c.Forget(name)
	return err
}

// Forget drops the cached chunks of name: a reader found them corrupt,
// and the next read should go to the remote (which may have been repaired).
func (c *CachedStore) Forget(name string) {
	obj := cacheObjectID(name)
	var paths []string
	c.mu.Lock()
	size, ok := c.sizes[obj]
	delete(c.sizes, obj)
	for i := int64(0); ok && i*CacheChunkSize < size; i++ {
		if el, ok := c.chunks[cacheKey{obj, i}]; ok {
			c.removeLocked(el)
			paths = append(paths, c.path(cacheKey{obj, i}))
		}
	}
	c.mu.Unlock()
	removeFiles(paths)
}

func (c *CachedStore) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	return c.remote.List(ctx, prefix)
}

// read fills out with the object's bytes at off: from cached chunks, and
// the missing ones fetched (adjacent ones in one remote read) and cached.
func (c *CachedStore) read(ctx context.Context, name string, size, off int64, out []byte) error {
	obj, end := cacheObjectID(name), off+int64(len(out))
	// span is the part of chunk i that out wants, relative to the chunk,
	// and where in out it goes.
	span := func(i int64) (lo, hi int64, dst []byte) {
		start := i * CacheChunkSize
		lo, hi = max(off, start)-start, min(end, start+CacheChunkSize)-start
		return lo, hi, out[start+lo-off : start+hi-off]
	}
	var missing []int64
	for i := off / CacheChunkSize; i*CacheChunkSize < end; i++ {
		lo, hi, dst := span(i)
		if !c.readCached(cacheKey{obj, i}, name, size, lo, hi, dst) {
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	// Claim the missing chunks nobody is fetching; wait for the others.
	// One cached since we looked is read again.
	var mine, theirs, again []int64
	fetches := make(map[int64]*cacheFetch, len(missing))
	c.mu.Lock()
	for _, i := range missing {
		k := cacheKey{obj, i}
		if f, ok := c.inflight[k]; ok {
			fetches[i], theirs = f, append(theirs, i)
		} else if _, ok := c.chunks[k]; ok {
			again = append(again, i)
		} else {
			fetches[i], mine = &cacheFetch{done: make(chan struct{})}, append(mine, i)
			c.inflight[k] = fetches[i]
		}
	}
	c.mu.Unlock()
	c.misses.Add(int64(len(mine) + len(theirs)))

	// Finish every claimed fetch, failed or not, before waiting for
	// others': two readers waiting for each other would deadlock.
	var err error
	for j := 0; j < len(mine); {
		k := j + 1
		for k < len(mine) && mine[k] == mine[k-1]+1 {
			k++
		}
		var data []byte
		if err == nil {
			data, err = c.fetchRemote(ctx, name, size, mine[j], mine[k-1])
		}
		c.complete(name, obj, size, mine[j:k], fetches, data, err)
		j = k
	}
	if err != nil {
		return err
	}
	for _, i := range append(mine, theirs...) {
		f := fetches[i]
		select {
		case <-f.done:
		case <-ctx.Done():
			return fmt.Errorf("cache chunk %s@%d: %w", name, i*CacheChunkSize, ctx.Err())
		}
		lo, hi, dst := span(i)
		switch {
		case f.err == nil:
			copy(dst, f.data[lo:hi])
		case ctx.Err() == nil && (errors.Is(f.err, context.Canceled) || errors.Is(f.err, context.DeadlineExceeded)):
			// Another reader gave up; that is no reason for this one to.
			again = append(again, i)
		default:
			return f.err
		}
	}
	for _, i := range again {
		lo, _, dst := span(i)
		if err := c.read(ctx, name, size, i*CacheChunkSize+lo, dst); err != nil {
			return err
		}
	}
	return nil
}

// readCached reads [lo, hi) of a cached chunk into dst. A chunk that cannot
// be read is dropped, and the caller fetches it.
func (c *CachedStore) readCached(key cacheKey, name string, size, lo, hi int64, dst []byte) bool {
	c.mu.Lock()
	el, ok := c.chunks[key]
	touch := false
	if ok {
		c.lru.MoveToFront(el)
		e := el.Value.(*cacheEntry)
		if now := time.Now(); now.Sub(e.touched) > cacheTouchEvery {
			e.touched, touch = now, true
		}
	}
	c.mu.Unlock()
	if !ok {
		return false
	}
	p := c.path(key)
	hsize, err := readCacheChunk(p, key.idx, lo, hi, dst)
	if err == nil && hsize != size {
		err = fmt.Errorf("%w: object size %d, want %d", ErrCorrupt, hsize, size)
	}
	if err == nil {
		c.hits.Add(1)
		if touch { // a restart rebuilds the LRU order from mtimes
			now := time.Now()
			os.Chtimes(p, now, now)
		}
		return true
	}
	c.mu.Lock()
	ours := c.chunks[key] == el
	if ours {
		c.removeLocked(el)
	}
	c.mu.Unlock()
	if ours && !errors.Is(err, fs.ErrNotExist) { // a missing file needs no warning
		slog.Warn("layer cache: dropping bad chunk", "object", name, "chunk", key.idx, "file", p, "err", err)
		os.Remove(p)
	}
	return false
}

// readCacheChunk verifies the header of chunk file idx, returning its
// object's size, and reads [lo, hi) of its payload into dst, verifying the
// blocks that range lies in.
func readCacheChunk(path string, idx, lo, hi int64, dst []byte) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	hdr := make([]byte, cacheHeaderLen)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return 0, fmt.Errorf("%w: header: %w", ErrCorrupt, err)
	}
	size := int64(binary.BigEndian.Uint64(hdr[8:]))
	switch {
	case string(hdr[:8]) != cacheMagic:
		return 0, fmt.Errorf("%w: bad magic %q", ErrCorrupt, hdr[:8])
	case crc32.Checksum(hdr[:cacheHeaderLen-4], crcTable) != binary.BigEndian.Uint32(hdr[cacheHeaderLen-4:]):
		return 0, fmt.Errorf("%w: header checksum mismatch", ErrCorrupt)
	case size <= 0 || idx > (size-1)/CacheChunkSize || hi > cacheChunkLen(size, idx):
		return 0, fmt.Errorf("%w: no bytes [%d, %d) in chunk %d of an object of %d bytes", ErrCorrupt, lo, hi, idx, size)
	}
	bs := lo / cacheBlockSize * cacheBlockSize
	be := min((hi+cacheBlockSize-1)/cacheBlockSize*cacheBlockSize, cacheChunkLen(size, idx))
	buf := dst // read in place when the range is whole blocks
	if lo != bs || hi != be {
		buf = make([]byte, be-bs)
	}
	if _, err := f.ReadAt(buf, cacheHeaderLen+bs); err != nil {
		return 0, fmt.Errorf("%w: payload: %w", ErrCorrupt, err)
	}
	for b := int64(0); b < be-bs; b += cacheBlockSize {
		want := binary.BigEndian.Uint32(hdr[16+4*((bs+b)/cacheBlockSize):])
		if crc32.Checksum(buf[b:min(b+cacheBlockSize, be-bs)], crcTable) != want {
			return 0, fmt.Errorf("%w: block at %d: checksum mismatch", ErrCorrupt, bs+b)
		}
	}
	copy(dst, buf[lo-bs:hi-bs])
	return size, nil
}

// fetchRemote reads chunks first..last from the remote in one request.
func (c *CachedStore) fetchRemote(ctx context.Context, name string, size, first, last int64) ([]byte, error) {
	off := first * CacheChunkSize
	n := min((last+1)*CacheChunkSize, size) - off
	b, err := c.remote.GetRange(ctx, name, off, n)
	if err != nil {
		return nil, fmt.Errorf("cache chunk %s@%d: %w", name, off, err)
	}
	if int64(len(b)) != n {
		return nil, fmt.Errorf("cache chunk %s@%d: remote returned %d of %d bytes: %w", name, off, len(b), n, ErrCorrupt)
	}
	return b, nil
}

// complete hands the fetched chunks idxs (data, from the first) or err to
// their waiters, caches them, and only then ends the fetches, so a reader
// always finds a chunk either cached or in flight.
func (c *CachedStore) complete(name string, obj cacheObjID, size int64, idxs []int64, fetches map[int64]*cacheFetch, data []byte, err error) {
	for j, i := range idxs {
		f := fetches[i]
		f.err = err
		if err == nil {
			f.data = data[int64(j)*CacheChunkSize : min(int64(j+1)*CacheChunkSize, int64(len(data)))]
		}
		close(f.done)
	}
	for _, i := range idxs {
		if f := fetches[i]; f.err == nil {
			if err := c.store(cacheKey{obj, i}, size, f.data); err != nil {
				slog.Warn("layer cache: caching a chunk failed", "object", name, "chunk", i, "err", err)
			}
		}
	}
	c.mu.Lock()
	for _, i := range idxs {
		delete(c.inflight, cacheKey{obj, i})
	}
	c.mu.Unlock()
}

// store writes a chunk file, first evicting least recently used chunks to
// make room for it.
func (c *CachedStore) store(key cacheKey, size int64, payload []byte) error {
	hdr := make([]byte, cacheHeaderLen)
	copy(hdr, cacheMagic)
	binary.BigEndian.PutUint64(hdr[8:], uint64(size))
	for b := 0; b < len(payload); b += cacheBlockSize {
		crc := crc32.Checksum(payload[b:min(b+cacheBlockSize, len(payload))], crcTable)
		binary.BigEndian.PutUint32(hdr[16+4*(b/cacheBlockSize):], crc)
	}
	binary.BigEndian.PutUint32(hdr[cacheHeaderLen-4:], crc32.Checksum(hdr[:cacheHeaderLen-4], crcTable))
	n := int64(len(hdr) + len(payload))
	if n > c.limit {
		return nil
	}
	c.mu.Lock()
	c.used += n
	victims := c.evictLocked()
	c.mu.Unlock()
	removeFiles(victims)

	err := writeCacheFile(c.dir, c.path(key), hdr, payload)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.used -= n
		return fmt.Errorf("cache chunk %x@%d: %w", key.obj, key.idx*CacheChunkSize, err)
	}
	if el, ok := c.chunks[key]; ok { // replaced by the rename
		c.removeLocked(el)
	}
	c.chunks[key] = c.lru.PushFront(&cacheEntry{key: key, size: n, touched: time.Now()})
	return nil
}

func writeCacheFile(dir, path string, hdr, payload []byte) (err error) {
	f, err := os.CreateTemp(dir, dirStoreTempPrefix+"*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(hdr); err != nil {
		return err
	}
	if _, err = f.Write(payload); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// evictLocked drops least recently used chunks until the bytes used fit
// the limit, and returns their files for the caller to remove unlocked.
func (c *CachedStore) evictLocked() []string {
	var victims []string
	for c.used > c.limit && c.lru.Len() > 0 {
		e := c.lru.Back().Value.(*cacheEntry)
		c.removeLocked(c.lru.Back())
		c.evictions.Add(1)
		victims = append(victims, c.path(e.key))
	}
	return victims
}

func (c *CachedStore) removeLocked(el *list.Element) {
	e := c.lru.Remove(el).(*cacheEntry)
	delete(c.chunks, e.key)
	c.used -= e.size
}

func removeFiles(paths []string) {
	for _, p := range paths {
		os.Remove(p)
	}
}

func (c *CachedStore) path(key cacheKey) string {
	return filepath.Join(c.dir, cacheFileName(key))
}

func cacheFileName(key cacheKey) string {
	return hex.EncodeToString(key.obj[:]) + "-" + strconv.FormatInt(key.idx, 10)
}

func parseCacheFileName(s string) (cacheKey, bool) {
	h, i, _ := strings.Cut(s, "-")
	var key cacheKey
	idx, err := strconv.ParseInt(i, 10, 64)
	if n, herr := hex.Decode(key.obj[:], []byte(h)); err != nil || herr != nil || n != len(key.obj) || idx < 0 {
		return cacheKey{}, false
	}
	key.idx = idx
	return key, cacheFileName(key) == s // canonical spelling only
}

func cacheObjectID(name string) cacheObjID {
	sum := sha256.Sum256([]byte(name))
	return cacheObjID(sum[:16])
}

func cacheChunkLen(size, idx int64) int64 {
	return min(CacheChunkSize, size-idx*CacheChunkSize)
}

// crcTable is CRC-32C, as the layers use.
var crcTable = crc32.MakeTable(crc32.Castagnoli)
