package blockstore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/neonfs/neonfs/objstore"

	"github.com/VictoriaMetrics/fastcache"
	"github.com/klauspost/compress/s2"
)

func sortEntries(es []Entry) {
	slices.SortFunc(es, func(a, b Entry) int {
		if c := a.Key.Compare(b.Key); c != 0 {
			return c
		}
		return cmp.Compare(b.LSN, a.LSN)
	})
}

// testValue derives a value from key and LSN, so expected results can be
// recomputed.
func testPage(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// sparsePage is a page with a random header and tail and zeros between:
// it compresses well but not to nothing.
func sparsePage(seed uint64) []byte {
	b := make([]byte, BlockSize)
	copy(b, testPage(seed, 200))
	copy(b[BlockSize-600:], testPage(seed+1<<32, 600))
	return b
}

// testLayerEntries returns sorted entries of all kinds in LSNs (10, 1000]:
// several versions per key, zero blocks, tombstones, odd dirent names and
// one key whose record exceeds fastcache's 64 KiB entry limit.
func testLayerEntries() []Entry {
	var es []Entry
	add := func(k Key, lsn uint64, v Value) {
		es = append(es, Entry{Key: k, Version: Version{LSN: lsn, Value: v}})
	}
	names := []string{"", "a", "b", "postgresql.conf", "ünïcode", "with space", "x\x00y", strings.Repeat("n", 255), "zz"}
	for i, name := range names {
		k := DirentKey(0, 1, name)
		add(k, uint64(20+i), Value{Kind: ValData, Data: fmt.Appendf(nil, "ino=%d", 100+i)})
		if i%3 == 0 {
			add(k, uint64(500+i), Value{Kind: ValTombstone})
		}
		if i%3 == 1 {
			add(k, uint64(600+i), Value{Kind: ValData, Data: fmt.Appendf(nil, "ino=%d", 200+i)})
		}
	}
	for ino := uint64(1); ino <= 20; ino++ {
		k := InodeKey(0, ino)
		for v := uint64(0); v < ino%4+1; v++ {
			add(k, 11+ino*10+v, Value{Kind: ValData, Data: testPage(ino*1000+v, 40)})
		}
		if ino == 7 {
			add(k, 999, Value{Kind: ValTombstone})
		}
	}
	for blk := uint64(0); blk < 30; blk++ {
		k := BlockKey(0, 5, blk)
		switch blk % 5 {
		case 0:
			add(k, 100+blk, Value{Kind: ValZero})
		case 1:
			add(k, 100+blk, Value{Kind: ValZero})
			add(k, 300+blk, Value{Kind: ValData, Data: testPage(blk, BlockSize)})
		case 2:
			add(k, 100+blk, Value{Kind: ValData, Data: testPage(blk, BlockSize)})
			add(k, 400+blk, Value{Kind: ValTombstone})
		default:
			add(k, 100+blk, Value{Kind: ValData, Data: testPage(blk, BlockSize)})
		}
	}
	// A hot page: 12 versions of 8 KiB make a ~96 KiB record.
	for v := uint64(0); v < 12; v++ {
		add(BlockKey(0, 6, 0), 700+v, Value{Kind: ValData, Data: testPage(9000+v, BlockSize)})
	}
	// Pages like Postgres's: mostly free space, so stored compressed; one
	// of them hot.
	for blk := uint64(0); blk < 6; blk++ {
		add(BlockKey(0, 8, blk), 800+blk, Value{Kind: ValData, Data: sparsePage(blk)})
	}
	for v := uint64(0); v < 20; v++ {
		add(BlockKey(0, 9, 0), 850+v, Value{Kind: ValData, Data: sparsePage(100 + v)})
	}
	add(InodeKey(1, 1), 1000, Value{Kind: ValData, Data: []byte("other branch")})
	add(BlockKey(1, 1, math.MaxUint64), 11, Value{Kind: ValData, Data: []byte{}})
	sortEntries(es)
	return es
}

func putLayer(t testing.TB, st objstore.ObjectStore, name string, entries []Entry, minLSN, maxLSN uint64) []byte {
	t.Helper()
	b, err := EncodeLayer(entries, minLSN, maxLSN)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(context.Background(), name, b); err != nil {
		t.Fatal(err)
	}
	return b
}

func scanAll(ctx context.Context, l *Layer, from, to Key, maxLSN uint64) ([]Entry, error) {
	var got []Entry
	err := l.Scan(ctx, from, to, maxLSN, func(e Entry) error {
		got = append(got, e)
		return nil
	})
	return got, err
}

func sameEntry(a, b Entry) bool {
	return a.Key == b.Key && a.LSN == b.LSN && a.Value.Kind == b.Value.Kind && bytes.Equal(a.Value.Data, b.Value.Data)
}

func checkEntries(t *testing.T, got, want []Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	for i := range got {
		if !sameEntry(got[i], want[i]) {
			t.Fatalf("entry %d: got %v@%d %v, want %v@%d %v", i, got[i].Key, got[i].LSN, got[i].Value.Kind, want[i].Key, want[i].LSN, want[i].Value.Kind)
		}
	}
}

// newestAt is the reference for Get: the newest version of k at maxLSN.
func newestAt(es []Entry, k Key, maxLSN uint64) (Version, bool) {
	for _, e := range es {
		if e.Key == k && e.LSN <= maxLSN {
			return e.Version, true
		}
	}
	return Version{}, false
}

func filterEntries(es []Entry, from, to Key, maxLSN uint64) []Entry {
	var out []Entry
	for _, e := range es {
		if e.Key.Compare(from) >= 0 && e.Key.Compare(to) < 0 && e.LSN <= maxLSN {
			out = append(out, e)
		}
	}
	return out
}

func TestLayerRoundTrip(t *testing.T) {
	ctx := context.Background()
	want := testLayerEntries()
	stores := []struct {
		name string
		st   objstore.ObjectStore
	}{
		{"mem", newMemObjStore()},
	}
	ds, err := objstore.NewDirStore(filepath.Join(t.TempDir(), "objs"))
	if err != nil {
		t.Fatal(err)
	}
	stores = append(stores, struct {
		name string
		st   objstore.ObjectStore
	}{"dir", ds})
	for _, s := range stores {
		for _, cache := range []*fastcache.Cache{nil, fastcache.New(32 << 20)} {
			t.Run(fmt.Sprintf("%s/cache=%v", s.name, cache != nil), func(t *testing.T) {
				b := putLayer(t, s.st, "layers/10-1000", want, 10, 1000)
				l, err := OpenLayer(ctx, s.st, "layers/10-1000", cache)
				if err != nil {
					t.Fatal(err)
				}
				keys := 0
				for i := range want {
					if i == 0 || want[i].Key != want[i-1].Key {
						keys++
					}
				}
				if m := l.Meta(); !reflect.DeepEqual(m, LayerMeta{Name: "layers/10-1000", MinLSN: 10, MaxLSN: 1000, Size: int64(len(b)), Keys: keys}) {
					t.Fatalf("Meta = %+v", m)
				}
				// Twice: the second pass reads from the cache.
				for range 2 {
					got, err := scanAll(ctx, l, Key{}, layerMaxKey, math.MaxUint64)
					if err != nil {
						t.Fatal(err)
					}
					checkEntries(t, got, want)
					for _, e := range want {
						v, ok, err := l.Get(ctx, e.Key, math.MaxUint64)
						wv, _ := newestAt(want, e.Key, math.MaxUint64)
						if err != nil || !ok || !sameEntry(Entry{e.Key, v}, Entry{e.Key, wv}) {
							t.Fatalf("Get(%v) = %v, %v, %v", e.Key, v, ok, err)
						}
					}
				}
			})
		}
	}
}

func TestLayerGet(t *testing.T) {
	ctx := context.Background()
	es := testLayerEntries()
	st := newMemObjStore()
	putLayer(t, st, "l", es, 10, 1000)
	l, err := OpenLayer(ctx, st, "l", fastcache.New(32<<20))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		key     Key
		maxLSN  uint64
		wantLSN uint64 // 0: not found
		kind    ValueKind
	}{
		{"before first version", BlockKey(0, 5, 3), 102, 0, 0},
		{"at first version", BlockKey(0, 5, 3), 103, 103, ValData},
		{"zero block", BlockKey(0, 5, 0), 1000, 100, ValZero},
		{"zero then data, old", BlockKey(0, 5, 1), 300, 101, ValZero},
		{"zero then data, new", BlockKey(0, 5, 1), 301, 301, ValData},
		{"tombstone", BlockKey(0, 5, 2), 1000, 402, ValTombstone},
		{"before tombstone", BlockKey(0, 5, 2), 401, 102, ValData},
		{"dirent", DirentKey(0, 1, "a"), 100, 21, ValData},
		{"dirent newer", DirentKey(0, 1, "a"), 1000, 601, ValData},
		{"dirent deleted", DirentKey(0, 1, "postgresql.conf"), 1000, 503, ValTombstone},
		{"empty name", DirentKey(0, 1, ""), 20, 20, ValData},
		{"long name", DirentKey(0, 1, strings.Repeat("n", 255)), 1000, 607, ValData},
		{"long name old", DirentKey(0, 1, strings.Repeat("n", 255)), 606, 27, ValData},
		{"missing name", DirentKey(0, 1, "c"), 1000, 0, 0},
		{"missing parent", DirentKey(0, 2, "a"), 1000, 0, 0},
		{"inode", InodeKey(0, 3), 1000, 44, ValData},
		{"inode middle version", InodeKey(0, 3), 42, 42, ValData},
		{"inode tombstone", InodeKey(0, 7), 1000, 999, ValTombstone},
		{"missing inode", InodeKey(0, 21), 1000, 0, 0},
		{"hot page newest", BlockKey(0, 6, 0), 1000, 711, ValData},
		{"hot page middle", BlockKey(0, 6, 0), 705, 705, ValData},
		{"hot page before", BlockKey(0, 6, 0), 699, 0, 0},
		{"other branch", InodeKey(1, 1), 1000, 1000, ValData},
		{"empty data", BlockKey(1, 1, math.MaxUint64), 11, 11, ValData},
		{"missing branch", InodeKey(2, 1), 1000, 0, 0},
		{"maxLSN 0", InodeKey(0, 3), 0, 0, 0},
		{"maxLSN at layer min", InodeKey(0, 1), 10, 0, 0},
		{"non-canonical key", Key{Branch: 0, Kind: KindInode, Ino: 3, Block: 1}, 1000, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 2 { // uncached, then cached
				v, ok, err := l.Get(ctx, tt.key, tt.maxLSN)
				if err != nil {
					t.Fatal(err)
				}
				if ok != (tt.wantLSN != 0) || v.LSN != tt.wantLSN {
					t.Fatalf("Get = LSN %d, %v; want %d", v.LSN, ok, tt.wantLSN)
				}
				if !ok {
					continue
				}
				wv, _ := newestAt(es, tt.key, tt.maxLSN)
				if v.Value.Kind != tt.kind || !bytes.Equal(v.Value.Data, wv.Value.Data) {
					t.Fatalf("Get = %v %d bytes, want %v %d bytes", v.Value.Kind, len(v.Value.Data), tt.kind, len(wv.Value.Data))
				}
				if tt.kind != ValData && v.Value.Data != nil {
					t.Fatalf("%v value with data", tt.kind)
				}
				// Callers own the bytes: scribbling on them must not
				// change what the next Get (served by the cache) returns.
				for i := range v.Value.Data {
					v.Value.Data[i] ^= 0xff
				}
			}
		})
	}
}

func TestLayerGetAllVersions(t *testing.T) {
	ctx := context.Background()
	es := testLayerEntries()
	st := newMemObjStore()
	putLayer(t, st, "l", es, 10, 1000)
	// With a cache, the newest version of each record gets cached on its
	// own after the first read; older points must still see older versions.
	for _, cache := range []*fastcache.Cache{nil, fastcache.New(32 << 20)} {
		l, err := OpenLayer(ctx, st, "l", cache)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			for _, e := range es {
				for _, maxLSN := range []uint64{math.MaxUint64, e.LSN - 1, e.LSN, e.LSN + 1} {
					v, ok, err := l.Get(ctx, e.Key, maxLSN)
					wv, wok := newestAt(es, e.Key, maxLSN)
					if err != nil || ok != wok || ok && !sameEntry(Entry{e.Key, v}, Entry{e.Key, wv}) {
						t.Fatalf("Get(%v, %d) = %d %v %v, want %d %v", e.Key, maxLSN, v.LSN, ok, err, wv.LSN, wok)
					}
				}
			}
		}
	}
}

// BenchmarkLayerGetHotKey reads the newest version of a key written 64
// times (a 512 KiB record), as a head read after a remount does.
func BenchmarkLayerGetHotKey(b *testing.B) {
	ctx := context.Background()
	var es []Entry
	for i := 63; i >= 0; i-- { // newest first, as layers hold them
		es = append(es, Entry{Key: BlockKey(0, 6, 0), Version: Version{LSN: uint64(100 + i), Value: Value{Kind: ValData, Data: bytes.Repeat([]byte{byte(i)}, 8192)}}})
	}
	st := newMemObjStore()
	putLayer(b, st, "l", es, 10, 1000)
	l, err := OpenLayer(ctx, st, "l", fastcache.New(64<<20))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if v, ok, err := l.Get(ctx, BlockKey(0, 6, 0), math.MaxUint64); err != nil || !ok || v.LSN != 163 {
			b.Fatalf("Get = %d %v %v", v.LSN, ok, err)
		}
	}
}

func TestLayerScan(t *testing.T) {
	ctx := context.Background()
	es := testLayerEntries()
	st := newMemObjStore()
	putLayer(t, st, "l", es, 10, 1000)
	tests := []struct {
		name     string
		from, to Key
		maxLSN   uint64
	}{
		{"all", Key{}, layerMaxKey, math.MaxUint64},
		{"all at 300", Key{}, layerMaxKey, 300},
		{"nothing visible", Key{}, layerMaxKey, 10},
		{"dirents of 1", DirentKey(0, 1, ""), InodeKey(0, 0), 1000},
		{"dirents from b", DirentKey(0, 1, "b"), DirentKey(0, 2, ""), 1000},
		{"dirents between names", DirentKey(0, 1, "aa"), DirentKey(0, 1, "x"), 1000},
		{"inodes", InodeKey(0, 0), BlockKey(0, 0, 0), 1000},
		{"inodes 3 to 7", InodeKey(0, 3), InodeKey(0, 7), 1000},
		{"blocks of 5", BlockKey(0, 5, 0), BlockKey(0, 6, 0), math.MaxUint64},
		{"blocks of 5 at 200", BlockKey(0, 5, 0), BlockKey(0, 6, 0), 200},
		{"blocks 10-20", BlockKey(0, 5, 10), BlockKey(0, 5, 20), 1000},
		{"single key", BlockKey(0, 6, 0), BlockKey(0, 6, 1), 705},
		{"branch 1", Key{Branch: 1}, Key{Branch: 2}, 1000},
		{"empty range", InodeKey(0, 5), InodeKey(0, 5), 1000},
		{"reversed range", InodeKey(0, 7), InodeKey(0, 3), 1000},
		{"past the end", Key{Branch: 5}, layerMaxKey, 1000},
		{"gap", InodeKey(0, 100), BlockKey(0, 4, 0), 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, cache := range []*fastcache.Cache{nil, fastcache.New(32 << 20)} {
				l, err := OpenLayer(ctx, st, "l", cache)
				if err != nil {
					t.Fatal(err)
				}
				want := filterEntries(es, tt.from, tt.to, tt.maxLSN)
				for range 2 {
					got, err := scanAll(ctx, l, tt.from, tt.to, tt.maxLSN)
					if err != nil {
						t.Fatal(err)
					}
					checkEntries(t, got, want)
				}
			}
		})
	}
}

func TestLayerScanStops(t *testing.T) {
	ctx := context.Background()
	st := newMemObjStore()
	putLayer(t, st, "l", testLayerEntries(), 10, 1000)
	l, err := OpenLayer(ctx, st, "l", nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	n := 0
	err = l.Scan(ctx, Key{}, layerMaxKey, 1000, func(Entry) error {
		n++
		if n == 3 {
			return stop
		}
		return nil
	})
	if err != stop || n != 3 {
		t.Fatalf("Scan = %v after %d entries", err, n)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := l.Scan(cctx, Key{}, layerMaxKey, 1000, func(Entry) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled Scan = %v", err)
	}
}

// A scan of many small records must not cost a ranged read per key.
func TestLayerScanReadAhead(t *testing.T) {
	ctx := context.Background()
	var es []Entry
	for i := range 5000 {
		es = append(es, Entry{Key: DirentKey(0, 1, fmt.Sprintf("file%05d", i)), Version: Version{LSN: 2, Value: Value{Data: []byte("0123456789")}}})
	}
	st := newMemObjStore()
	putLayer(t, st, "l", es, 1, 2)
	cache := fastcache.New(32 << 20)
	l, err := OpenLayer(ctx, st, "l", cache)
	if err != nil {
		t.Fatal(err)
	}
	st.getRange = 0
	got, err := scanAll(ctx, l, Key{}, layerMaxKey, 2)
	if err != nil {
		t.Fatal(err)
	}
	checkEntries(t, got, es)
	if st.getRange > 2 {
		t.Fatalf("scan of %d small records used %d ranged reads", len(es), st.getRange)
	}
	st.getRange = 0
	if got, err = scanAll(ctx, l, Key{}, layerMaxKey, 2); err != nil {
		t.Fatal(err)
	}
	checkEntries(t, got, es)
	if st.getRange != 0 {
		t.Fatalf("cached scan used %d ranged reads", st.getRange)
	}
}

func TestLayerEmpty(t *testing.T) {
	ctx := context.Background()
	st := newMemObjStore()
	for _, r := range [][2]uint64{{5, 10}, {7, 7}, {0, 0}} {
		putLayer(t, st, "l", nil, r[0], r[1])
		l, err := OpenLayer(ctx, st, "l", nil)
		if err != nil {
			t.Fatal(err)
		}
		if m := l.Meta(); m.Keys != 0 || m.MinLSN != r[0] || m.MaxLSN != r[1] || m.Size != layerFooterLen {
			t.Fatalf("Meta = %+v", m)
		}
		if _, ok, err := l.Get(ctx, InodeKey(0, 1), math.MaxUint64); ok || err != nil {
			t.Fatalf("Get = %v, %v", ok, err)
		}
		if got, err := scanAll(ctx, l, Key{}, layerMaxKey, math.MaxUint64); len(got) != 0 || err != nil {
			t.Fatalf("Scan = %v, %v", got, err)
		}
	}
}

func TestEncodeLayerErrors(t *testing.T) {
	e := func(k Key, lsn uint64, v Value) Entry { return Entry{Key: k, Version: Version{LSN: lsn, Value: v}} }
	data := Value{Kind: ValData, Data: []byte("x")}
	tests := []struct {
		name           string
		entries        []Entry
		minLSN, maxLSN uint64
	}{
		{"keys descending", []Entry{e(InodeKey(0, 2), 5, data), e(InodeKey(0, 1), 5, data)}, 0, 10},
		{"kinds descending", []Entry{e(BlockKey(0, 1, 0), 5, data), e(InodeKey(0, 1), 5, data)}, 0, 10},
		{"names descending", []Entry{e(DirentKey(0, 1, "b"), 5, data), e(DirentKey(0, 1, "a"), 5, data)}, 0, 10},
		{"LSNs ascending", []Entry{e(InodeKey(0, 1), 4, data), e(InodeKey(0, 1), 5, data)}, 0, 10},
		{"duplicate version", []Entry{e(InodeKey(0, 1), 5, data), e(InodeKey(0, 1), 5, data)}, 0, 10},
		{"LSN at min", []Entry{e(InodeKey(0, 1), 3, data)}, 3, 10},
		{"LSN above max", []Entry{e(InodeKey(0, 1), 11, data)}, 3, 10},
		{"min above max", nil, 11, 10},
		{"invalid value kind", []Entry{e(InodeKey(0, 1), 5, Value{Kind: 3})}, 0, 10},
		{"zero with data", []Entry{e(BlockKey(0, 1, 0), 5, Value{Kind: ValZero, Data: []byte{0}})}, 0, 10},
		{"tombstone with data", []Entry{e(BlockKey(0, 1, 0), 5, Value{Kind: ValTombstone, Data: []byte{1}})}, 0, 10},
		{"invalid key kind", []Entry{e(Key{Kind: 9}, 5, data)}, 0, 10},
		{"zero key kind", []Entry{e(Key{}, 5, data)}, 0, 10},
		{"name too long", []Entry{e(DirentKey(0, 1, strings.Repeat("x", 256)), 5, data)}, 0, 10},
		{"inode with block", []Entry{e(Key{Kind: KindInode, Ino: 1, Block: 2}, 5, data)}, 0, 10},
		{"inode with name", []Entry{e(Key{Kind: KindInode, Ino: 1, Name: "x"}, 5, data)}, 0, 10},
		{"block with name", []Entry{e(Key{Kind: KindBlock, Ino: 1, Name: "x"}, 5, data)}, 0, 10},
		{"dirent with block", []Entry{e(Key{Kind: KindDirent, Ino: 1, Block: 1, Name: "x"}, 5, data)}, 0, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if b, err := EncodeLayer(tt.entries, tt.minLSN, tt.maxLSN); err == nil {
				t.Fatalf("EncodeLayer succeeded with %d bytes", len(b))
			}
		})
	}
}

func TestLayerNotFound(t *testing.T) {
	_, err := OpenLayer(context.Background(), newMemObjStore(), "missing", nil)
	if !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("err = %v, want objstore.ErrNotFound", err)
	}
	ds, err := objstore.NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLayer(context.Background(), ds, "layers/missing", nil); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("err = %v, want objstore.ErrNotFound", err)
	}
}

// readAllLayer opens name and reads everything through Scan and Get,
// checking that whatever it returns before an error is correct. It returns
// the first error.
func readAllLayer(t *testing.T, st objstore.ObjectStore, name string, want []Entry, cache *fastcache.Cache) error {
	t.Helper()
	ctx := context.Background()
	l, err := OpenLayer(ctx, st, name, cache)
	if err != nil {
		return err
	}
	var firstErr error
	i := 0
	err = l.Scan(ctx, Key{}, layerMaxKey, math.MaxUint64, func(e Entry) error {
		if i >= len(want) || !sameEntry(e, want[i]) {
			t.Fatalf("Scan returned wrong entry %d: %v@%d", i, e.Key, e.LSN)
		}
		i++
		return nil
	})
	if err != nil {
		firstErr = err
	} else if i != len(want) {
		t.Fatalf("Scan returned %d of %d entries without error", i, len(want))
	}
	for _, e := range want {
		v, ok, err := l.Get(ctx, e.Key, e.LSN)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if !ok || !sameEntry(Entry{e.Key, v}, e) {
			t.Fatalf("Get(%v, %d) returned wrong data: %d %v", e.Key, e.LSN, v.LSN, ok)
		}
	}
	return firstErr
}

func TestLayerCorruptByte(t *testing.T) {
	// Small enough to flip every byte, with every kind of record.
	var es []Entry
	for _, e := range testLayerEntries() {
		if len(e.Value.Data) > 100 {
			e.Value.Data = e.Value.Data[:100]
		}
		es = append(es, e)
	}
	b, err := EncodeLayer(es, 10, 1000)
	if err != nil {
		t.Fatal(err)
	}
	st := newMemObjStore()
	if err := readAllLayer(t, stStore(st, "l", b), "l", es, nil); err != nil {
		t.Fatalf("pristine layer: %v", err)
	}
	for _, mask := range []byte{0x01, 0x80, 0xff} {
		t.Run(fmt.Sprintf("xor%02x", mask), func(t *testing.T) {
			for pos := range b {
				c := bytes.Clone(b)
				c[pos] ^= mask
				err := readAllLayer(t, stStore(st, "l", c), "l", es, nil)
				if !errors.Is(err, objstore.ErrCorrupt) {
					t.Fatalf("byte %d of %d xor %#x: err = %v, want objstore.ErrCorrupt", pos, len(b), mask, err)
				}
			}
		})
	}
}

func stStore(st *memObjStore, name string, b []byte) *memObjStore {
	st.Put(context.Background(), name, b)
	return st
}

func TestLayerCorruptRecordError(t *testing.T) {
	ctx := context.Background()
	es := testLayerEntries()
	b, err := EncodeLayer(es, 10, 1000)
	if err != nil {
		t.Fatal(err)
	}
	st := newMemObjStore()
	l0, err := OpenLayer(ctx, stStore(st, "layers/x", b), "layers/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Corrupt the data of the inode-3 record after opening.
	e := l0.entry(l0.search(InodeKey(0, 3)))
	c := bytes.Clone(b)
	c[e.off+20] ^= 1
	st.Put(ctx, "layers/x", c)
	_, _, err = l0.Get(ctx, InodeKey(0, 3), 1000)
	if !errors.Is(err, objstore.ErrCorrupt) {
		t.Fatalf("err = %v, want objstore.ErrCorrupt", err)
	}
	if want := fmt.Sprintf("layer layers/x: record at %d", e.off); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not contain %q", err, want)
	}
	// Other records are still readable.
	if _, ok, err := l0.Get(ctx, InodeKey(0, 4), 1000); !ok || err != nil {
		t.Fatalf("Get of an intact record: %v %v", ok, err)
	}
}

// A cache entry is only served for the layer it was read from.
func TestLayerCacheIsolation(t *testing.T) {
	ctx := context.Background()
	cache := fastcache.New(32 << 20)
	k := InodeKey(0, 1)
	mk := func(data string) []Entry {
		return []Entry{{Key: k, Version: Version{LSN: 5, Value: Value{Data: []byte(data)}}}}
	}
	stA, stB := newMemObjStore(), newMemObjStore()
	putLayer(t, stA, "l", mk("aaaa"), 0, 10)
	putLayer(t, stB, "l", mk("bbbb"), 0, 10)
	putLayer(t, stA, "m", mk("aaaa"), 0, 10)
	for _, c := range []struct {
		st   objstore.ObjectStore
		name string
		want string
	}{{stA, "l", "aaaa"}, {stB, "l", "bbbb"}, {stA, "m", "aaaa"}, {stA, "l", "aaaa"}, {stB, "l", "bbbb"}} {
		l, err := OpenLayer(ctx, c.st, c.name, cache)
		if err != nil {
			t.Fatal(err)
		}
		v, ok, err := l.Get(ctx, k, 10)
		if err != nil || !ok || string(v.Value.Data) != c.want {
			t.Fatalf("Get = %q %v %v, want %q", v.Value.Data, ok, err, c.want)
		}
	}
}

func TestLayerTruncated(t *testing.T) {
	es := testLayerEntries()
	b, err := EncodeLayer(es, 10, 1000)
	if err != nil {
		t.Fatal(err)
	}
	st := newMemObjStore()
	cuts := []int{0, 1, layerFooterLen - 1, layerFooterLen, len(b) / 2, len(b) - layerFooterLen, len(b) - 1}
	for _, n := range cuts {
		for _, keep := range []string{"head", "tail"} {
			t.Run(fmt.Sprintf("%s-%d", keep, n), func(t *testing.T) {
				c := b[:n]
				if keep == "tail" {
					c = b[len(b)-n:]
				}
				err := readAllLayer(t, stStore(st, "l", c), "l", es, nil)
				if !errors.Is(err, objstore.ErrCorrupt) {
					t.Fatalf("err = %v, want objstore.ErrCorrupt", err)
				}
			})
		}
	}
	// Extra bytes in front shift everything: also corrupt.
	err = readAllLayer(t, stStore(st, "l", append([]byte{0}, b...)), "l", es, nil)
	if !errors.Is(err, objstore.ErrCorrupt) {
		t.Fatalf("prefixed: err = %v, want objstore.ErrCorrupt", err)
	}
}

// fixLayerCRCs recomputes every checksum of a (mutated) layer, so that only
// the structural checks behind them can catch the mutation.
func fixLayerCRCs(b []byte) {
	if len(b) < layerFooterLen {
		return
	}
	f := b[len(b)-layerFooterLen:]
	indexOff := binary.BigEndian.Uint64(f[48:])
	if indexOff > uint64(len(b)-layerFooterLen) {
		indexOff = uint64(len(b) - layerFooterLen)
	}
	idx := b[indexOff : len(b)-layerFooterLen]
	for p := 0; p < len(idx); {
		_, kl, ok := parseRawKey(idx[p:])
		if !ok || len(idx)-p-kl < layerIndexTailLen {
			break
		}
		t := idx[p+kl:]
		off := binary.BigEndian.Uint64(t)
		n := uint64(binary.BigEndian.Uint32(t[8:]))
		if n >= 4 && n <= indexOff && off <= indexOff-n {
			crc := crc32.Update(crc32.Update(0, layerCRCTable, idx[p:p+kl]), layerCRCTable, b[off:off+n-4])
			binary.BigEndian.PutUint32(b[off+n-4:], crc)
			binary.BigEndian.PutUint32(t[20:], crc)
		}
		p += kl + layerIndexTailLen
	}
	binary.BigEndian.PutUint32(f[12:], crc32.Checksum(idx, layerCRCTable))
	binary.BigEndian.PutUint32(f[64:], crc32.Checksum(f[:64], layerCRCTable))
}

// Mutations that keep every checksum valid must still be caught by the
// structural checks: they guard against encoder bugs and against trusting
// a checksum collision.
func TestLayerStructuralChecks(t *testing.T) {
	ctx := context.Background()
	d := func(k Key, lsn uint64, v Value) Entry { return Entry{Key: k, Version: Version{LSN: lsn, Value: v}} }
	es := []Entry{
		d(DirentKey(0, 1, "a"), 5, Value{Data: []byte("x")}),
		d(DirentKey(0, 1, "b"), 6, Value{Data: []byte("yy")}),
		d(InodeKey(0, 1), 7, Value{Data: []byte("attr")}),
		d(InodeKey(0, 1), 4, Value{Data: []byte("old")}),
		d(BlockKey(0, 1, 0), 8, Value{Kind: ValZero}),
		d(BlockKey(0, 1, 1), 9, Value{Kind: ValTombstone}),
	}
	b, err := EncodeLayer(es, 2, 10)
	if err != nil {
		t.Fatal(err)
	}
	st := newMemObjStore()
	l, err := OpenLayer(ctx, stStore(st, "l", b), "l", nil)
	if err != nil {
		t.Fatal(err)
	}
	F := len(b) - layerFooterLen
	rec := func(i int) int { return int(l.entry(i).off) } // record i's offset
	ver := func(i int) int { return rec(i) + 4 }          // its first version
	idx := int(l.dataLen)
	ient := func(i int) int { return idx + int(l.pos[i]) } // index entry i
	itail := func(i int) int { return ient(i) + len(l.entry(i).rawKey) }
	put64 := func(at int, v uint64) func([]byte) { return func(b []byte) { binary.BigEndian.PutUint64(b[at:], v) } }
	put32 := func(at int, v uint32) func([]byte) { return func(b []byte) { binary.BigEndian.PutUint32(b[at:], v) } }
	tests := []struct {
		name   string
		mutate func([]byte)
	}{
		{"format version", put32(F+8, 3)},
		{"MinLSN above MaxLSN", put64(F+16, 11)},
		{"MinLSN excludes a version", put64(F+16, 4)},
		{"MaxLSN excludes a version", put64(F+24, 8)},
		{"entries below keys", put64(F+32, 3)},
		{"entries beyond data", put64(F+32, 1000)},
		{"one key too many", put64(F+40, 6)},
		{"one key too few", put64(F+40, 4)},
		{"index offset early", func(b []byte) { put64(F+48, uint64(idx-1))(b); put64(F+56, uint64(F-idx+1))(b) }},
		{"index offset late", func(b []byte) { put64(F+48, uint64(idx+1))(b); put64(F+56, uint64(F-idx-1))(b) }},
		{"index length short", put64(F+56, uint64(F-idx-1))},
		{"index key kind", func(b []byte) { b[ient(1)+4] = 9 }},
		{"index keys out of order", func(b []byte) { b[ient(1)+14] = 'a' }},
		{"index record offset", put64(itail(1), uint64(rec(1)+1))},
		{"index record length", put32(itail(1)+8, uint32(rec(2)-rec(1)+1))},
		{"index min LSN out of range", put64(itail(0)+12, 11)},
		// (A raised min LSN makes Get skip the record, so only a checksum
		// guards that; a lowered one is caught on read.)
		{"index min LSN mismatch", put64(itail(2)+12, 3)},
		{"record count zero", put32(rec(0), 0)},
		{"record count high", put32(rec(2), 3)},
		{"record count low", put32(rec(2), 1)},
		{"version LSN above max", put64(ver(0), 11)},
		{"version LSNs ascending", put64(ver(2), 3)},
		{"value kind invalid", func(b []byte) { b[ver(0)+8] = 7 }},
		{"zero value with data", func(b []byte) { b[ver(0)+8] = byte(ValZero) }},
		{"tombstone with data", func(b []byte) { b[ver(1)+8] = byte(ValTombstone) }},
		{"value length overrun", put32(ver(1)+9, 1000)},
		{"value length short", put32(ver(1)+9, 1)},
		{"compressed value that does not decode", func(b []byte) { b[ver(0)+8] = byte(valS2) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := bytes.Clone(b)
			tt.mutate(c)
			fixLayerCRCs(c)
			if bytes.Equal(c, b) {
				t.Fatal("mutation changed nothing")
			}
			err := readAllLayer(t, stStore(st, "l", c), "l", es, nil)
			if !errors.Is(err, objstore.ErrCorrupt) {
				t.Fatalf("err = %v, want objstore.ErrCorrupt", err)
			}
			t.Log(err)
		})
	}
}

// TestLayerCompressedValues: values that compress are stored compressed
// and read back exactly, by Get, Scan and a merge that copies them as they
// are; a compressed value is only valid in a format 2 layer.
func TestLayerCompressedValues(t *testing.T) {
	ctx := context.Background()
	var es []Entry
	raw := 0
	for blk := uint64(0); blk < 40; blk++ {
		v := Value{Kind: ValData, Data: sparsePage(blk)}
		if blk%4 == 0 {
			v.Data = testPage(blk, BlockSize) // incompressible: stored as is
		}
		es = append(es, Entry{Key: BlockKey(0, 3, blk), Version: Version{LSN: 11 + blk, Value: v}})
		raw += len(v.Data)
	}
	st := newMemObjStore()
	b := putLayer(t, st, "l", es, 10, 100)
	if len(b) > raw/2 {
		t.Fatalf("layer of %d bytes for %d bytes of values: values not compressed", len(b), raw)
	}
	if err := readAllLayer(t, st, "l", es, fastcache.New(32<<20)); err != nil {
		t.Fatal(err)
	}

	// A merge copies compressed values through; they read back the same.
	s := NewStore(st, 1<<20)
	s.AddLayer(LayerMeta{Name: "l", MinLSN: 10, MaxLSN: 100})
	more := []Entry{{Key: BlockKey(0, 3, 0), Version: Version{LSN: 150, Value: Value{Kind: ValData, Data: sparsePage(999)}}}}
	putLayer(t, st, "m", more, 100, 200)
	s.AddLayer(LayerMeta{Name: "m", MinLSN: 100, MaxLSN: 200})
	meta, _, err := s.MergeLayers(ctx, []string{"l", "m"}, &Retain{Horizon: 0, Live: map[uint32]bool{0: true}})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]Entry{more[0]}, es...)
	if err := readAllLayer(t, st, meta.Name, want, nil); err != nil {
		t.Fatal(err)
	}
	// Branch sizes count values uncompressed, like the memtable does.
	var logical int64
	for _, e := range want {
		logical += int64(e.Value.Size()) + versionOverhead
	}
	if meta.Keys != len(es) {
		t.Errorf("merged layer: %d keys, want %d", meta.Keys, len(es))
	}
	if got := meta.BranchBytes[0]; got != logical {
		t.Errorf("merged layer: branch bytes %d, want %d (uncompressed)", got, logical)
	}

	// A tiny value is stored as is; planted with the compressed kind it
	// decodes in format 2 and is refused in format 1.
	hello := []byte("hello hello hello hello")
	one := []Entry{{Key: BlockKey(0, 4, 0), Version: Version{LSN: 20, Value: Value{Kind: ValData, Data: s2.Encode(nil, hello)}}}}
	b, err = EncodeLayer(one, 10, 100)
	if err != nil {
		t.Fatal(err)
	}
	b[4+8] = byte(valS2) // record 0, version 0, kind
	fixLayerCRCs(b)
	one[0].Value.Data = hello
	if err := readAllLayer(t, stStore(st, "p", b), "p", one, nil); err != nil {
		t.Fatalf("planted compressed value: %v", err)
	}
	binary.BigEndian.PutUint32(b[len(b)-layerFooterLen+8:], 1)
	fixLayerCRCs(b)
	if _, _, err := readLayerGet(ctx, stStore(st, "p", b), "p", one[0].Key); !errors.Is(err, objstore.ErrCorrupt) {
		t.Fatalf("compressed value in a format 1 layer: err = %v, want objstore.ErrCorrupt", err)
	}
}

func readLayerGet(ctx context.Context, st objstore.ObjectStore, name string, k Key) (Version, bool, error) {
	l, err := OpenLayer(ctx, st, name, nil)
	if err != nil {
		return Version{}, false, err
	}
	return l.Get(ctx, k, math.MaxUint64)
}
