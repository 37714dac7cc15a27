package blockstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/neonfs/neonfs/objstore"
)

func page(b byte) []byte { return bytes.Repeat([]byte{b}, BlockSize) }

func put(k Key, v Value) Entry { return Entry{Key: k, Version: Version{Value: v}} }

func newTestStore(t *testing.T) *Store {
	t.Helper()
	ds, err := objstore.NewDirStore(filepath.Join(t.TempDir(), "objects"))
	if err != nil {
		t.Fatal(err)
	}
	return NewStore(ds, 1<<20)
}

// flushAll moves everything applied so far into a layer, as the volume
// does through the log.
func flushAll(t *testing.T, s *Store, lsn uint64) {
	t.Helper()
	s.Freeze(lsn)
	meta, ok, err := s.WriteLayer(context.Background(), lsn)
	if err != nil || !ok {
		t.Fatalf("write layer: ok=%v err=%v", ok, err)
	}
	s.AddLayer(meta)
}

func TestStoreVersions(t *testing.T) {
	main := []ReadPoint{{Branch: 1, MaxLSN: ^uint64(0)}}
	at := func(lsn uint64) []ReadPoint { return []ReadPoint{{Branch: 1, MaxLSN: lsn}} }
	k := BlockKey(1, 7, 3)

	for _, flushed := range []bool{false, true} {
		s := newTestStore(t)
		s.Apply(10, []Entry{put(k, BlockValue(page(1)))})
		s.Apply(20, []Entry{put(k, BlockValue(page(0)))}) // zero block: stored as a marker
		s.Apply(30, []Entry{put(k, Value{Kind: ValTombstone})})
		s.Apply(40, []Entry{put(k, BlockValue(page(4)))})
		if flushed {
			flushAll(t, s, 45)
			if a, f := s.MemBytes(); a+f != 0 {
				t.Fatalf("memtable holds %d bytes after flush", a+f)
			}
		}
		tests := []struct {
			name  string
			lin   []ReadPoint
			found bool
			kind  ValueKind
			fill  byte
		}{
			{"before first version", at(9), false, 0, 0},
			{"first version", at(10), true, ValData, 1},
			{"between versions", at(15), true, ValData, 1},
			{"zero marker", at(25), true, ValZero, 0},
			{"tombstone", at(30), true, ValTombstone, 0},
			{"latest", main, true, ValData, 4},
		}
		for _, tc := range tests {
			v, ok, err := s.Get(context.Background(), k, tc.lin)
			if err != nil {
				t.Fatalf("flushed=%v %s: %v", flushed, tc.name, err)
			}
			if ok != tc.found || (ok && v.Value.Kind != tc.kind) {
				t.Fatalf("flushed=%v %s: got ok=%v kind=%d, want ok=%v kind=%d", flushed, tc.name, ok, v.Value.Kind, tc.found, tc.kind)
			}
			if ok && tc.kind == ValData && !bytes.Equal(v.Value.Data, page(tc.fill)) {
				t.Fatalf("flushed=%v %s: wrong data", flushed, tc.name)
			}
			if tc.kind == ValZero && v.Value.Data != nil {
				t.Fatalf("zero marker carries %d bytes", len(v.Value.Data))
			}
		}
	}
}

func TestStoreLineage(t *testing.T) {
	s := newTestStore(t)
	k := BlockKey(0, 5, 0)
	s.Apply(10, []Entry{put(BlockKey(1, 5, 0), BlockValue(page(1)))})
	s.Apply(20, []Entry{put(BlockKey(1, 5, 0), BlockValue(page(2)))})
	flushAll(t, s, 25) // the parent's history lives in a layer, the child's in the memtable
	s.Apply(30, []Entry{put(BlockKey(2, 5, 1), BlockValue(page(9)))})
	s.Apply(40, []Entry{put(BlockKey(1, 5, 0), BlockValue(page(3)))})

	// branch 2 forked from 1 at LSN 15: it sees 1's state at 15 plus its own.
	child := []ReadPoint{{Branch: 2, MaxLSN: ^uint64(0)}, {Branch: 1, MaxLSN: 15}}
	v, ok, err := s.Get(context.Background(), k, child)
	if err != nil || !ok || !bytes.Equal(v.Value.Data, page(1)) {
		t.Fatalf("child read of parent block: ok=%v err=%v", ok, err)
	}
	k1 := BlockKey(0, 5, 1)
	if v, ok, _ := s.Get(context.Background(), k1, child); !ok || !bytes.Equal(v.Value.Data, page(9)) {
		t.Fatal("child does not see its own write")
	}
	parent := []ReadPoint{{Branch: 1, MaxLSN: ^uint64(0)}}
	if _, ok, _ := s.Get(context.Background(), k1, parent); ok {
		t.Fatal("parent sees the child's write")
	}
	if v, _, _ := s.Get(context.Background(), k, parent); !bytes.Equal(v.Value.Data, page(3)) {
		t.Fatal("parent lost its latest write")
	}
}

func TestStoreScanLatest(t *testing.T) {
	s := newTestStore(t)
	d := func(name string, data string) Entry {
		return put(DirentKey(1, 1, name), Value{Data: []byte(data)})
	}
	s.Apply(1, []Entry{d("a", "1"), d("b", "1"), d("c", "1")})
	flushAll(t, s, 2)
	s.Apply(3, []Entry{d("b", "2"), put(DirentKey(1, 1, "c"), Value{Kind: ValTombstone})})
	s.Apply(4, []Entry{put(DirentKey(2, 1, "d"), Value{Data: []byte("x")}), put(DirentKey(2, 1, "a"), Value{Kind: ValTombstone})})
	var got []string
	lin := []ReadPoint{{Branch: 2, MaxLSN: ^uint64(0)}, {Branch: 1, MaxLSN: 3}}
	err := s.ScanLatest(context.Background(), lin, Key{Kind: KindDirent}, Key{Kind: KindInode}, func(e Entry) error {
		got = append(got, e.Key.Name+"="+string(e.Value.Data))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "[b=2 d=x]"
	if g := fmtList(got); g != want {
		t.Fatalf("scan = %s, want %s", g, want)
	}
}

func fmtList(s []string) string {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, x := range s {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(x)
	}
	b.WriteByte(']')
	return b.String()
}

func TestStoreSnapshotRoundTrip(t *testing.T) {
	s := newTestStore(t)
	s.Apply(1, []Entry{put(BlockKey(1, 2, 0), BlockValue(page(1))), put(InodeKey(1, 2), Value{Data: []byte("attr")})})
	flushAll(t, s, 2)
	s.Apply(3, []Entry{put(BlockKey(1, 2, 0), BlockValue(page(2)))})
	s.Apply(4, []Entry{put(DirentKey(1, 1, "f"), Value{Data: []byte("2")}), put(BlockKey(1, 2, 1), Value{Kind: ValZero})})

	var buf bytes.Buffer
	if err := s.Capture().Write(&buf); err != nil {
		t.Fatal(err)
	}
	r := NewStore(s.Objects(), 1<<20)
	if err := r.ReadSnapshot(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	if r.Applied() != 4 || len(r.Layers()) != 1 {
		t.Fatalf("restored applied=%d layers=%d", r.Applied(), len(r.Layers()))
	}
	lin := []ReadPoint{{Branch: 1, MaxLSN: ^uint64(0)}}
	for _, tc := range []struct {
		k    Key
		lsn  uint64
		want Value
	}{
		{BlockKey(1, 2, 0), 2, BlockValue(page(1))},
		{BlockKey(1, 2, 0), 99, BlockValue(page(2))},
		{BlockKey(1, 2, 1), 99, Value{Kind: ValZero}},
		{DirentKey(1, 1, "f"), 99, Value{Data: []byte("2")}},
		{InodeKey(1, 2), 99, Value{Data: []byte("attr")}},
	} {
		lin[0].MaxLSN = tc.lsn
		v, ok, err := r.Get(context.Background(), tc.k, lin)
		if err != nil || !ok || v.Value.Kind != tc.want.Kind || !bytes.Equal(v.Value.Data, tc.want.Data) {
			t.Fatalf("%s@%d after restore: ok=%v err=%v kind=%d", tc.k, tc.lsn, ok, err, v.Value.Kind)
		}
	}
	// A restored store keeps flushing: its memtable becomes the next layer.
	flushAll(t, r, 5)

	bad := bytes.Clone(buf.Bytes())
	bad[len(bad)/2] ^= 0xff
	if err := NewStore(s.Objects(), 1<<20).ReadSnapshot(bytes.NewReader(bad)); err == nil {
		t.Fatal("corrupted snapshot restored without error")
	}
}

func TestStoreCorruptLayer(t *testing.T) {
	s := newTestStore(t)
	k := BlockKey(1, 2, 0)
	s.Apply(1, []Entry{put(k, BlockValue(page(7)))})
	flushAll(t, s, 2)
	meta := s.Layers()[0]
	path := filepath.Join(s.Objects().(*objstore.DirStore).Dir(), meta.Name)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[10] ^= 0x55 // inside the block's record
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := NewStore(s.Objects(), 1<<20) // empty cache
	fresh.AddLayer(meta)
	_, _, err = fresh.Get(context.Background(), k, []ReadPoint{{Branch: 1, MaxLSN: 10}})
	if !errors.Is(err, objstore.ErrCorrupt) {
		t.Fatalf("read of corrupted layer: err=%v, want objstore.ErrCorrupt", err)
	}

	os.Remove(path)
	ds, _ := objstore.NewDirStore(s.Objects().(*objstore.DirStore).Dir()) // no cached handle
	missing := NewStore(ds, 1<<20)
	missing.AddLayer(meta)
	_, _, err = missing.Get(context.Background(), k, []ReadPoint{{Branch: 1, MaxLSN: 10}})
	if !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("read of missing layer: err=%v, want objstore.ErrNotFound", err)
	}
}

// A layer that could not be opened while its object store was unreachable
// is read once the store is back: the failure is remembered for
// openRetryAfter only, and within it reads are answered without asking the
// store again.
func TestStoreLayerOpenRetries(t *testing.T) {
	old := openRetryAfter
	t.Cleanup(func() { openRetryAfter = old })
	openRetryAfter = time.Hour

	s := newTestStore(t)
	k := BlockKey(1, 2, 0)
	s.Apply(1, []Entry{put(k, BlockValue(page(7)))})
	flushAll(t, s, 2)
	ds := &downStore{ObjectStore: s.Objects()}
	ds.down.Store(true)
	fresh := NewStore(ds, 1<<20)
	fresh.AddLayer(s.Layers()[0])
	main := []ReadPoint{{Branch: 1, MaxLSN: 10}}

	ctx := context.Background()
	if _, _, err := fresh.Get(ctx, k, main); !errors.Is(err, errDown) {
		t.Fatalf("read with the store down: err=%v, want %v", err, errDown)
	}
	before := ds.reads.Load()
	if _, _, err := fresh.Get(ctx, k, main); !errors.Is(err, errDown) {
		t.Fatalf("second read with the store down: err=%v, want %v", err, errDown)
	}
	if n := ds.reads.Load() - before; n != 0 {
		t.Fatalf("a read within openRetryAfter of a failed open asked the store %d times", n)
	}

	ds.down.Store(false)
	openRetryAfter = 0
	v, ok, err := fresh.Get(ctx, k, main)
	if err != nil || !ok || !bytes.Equal(v.Value.Data, page(7)) {
		t.Fatalf("read after the store came back: ok=%v err=%v", ok, err)
	}

	// A cancelled open is not remembered at all.
	cancelled := NewStore(ds, 1<<20)
	cancelled.AddLayer(s.Layers()[0])
	openRetryAfter = time.Hour
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	cancelled.Get(cctx, k, main) // fails or not, depending on where the store notices
	if v, ok, err := cancelled.Get(ctx, k, main); err != nil || !ok || !bytes.Equal(v.Value.Data, page(7)) {
		t.Fatalf("read after a cancelled one: ok=%v err=%v", ok, err)
	}
}
