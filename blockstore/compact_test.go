package blockstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/neonfs/neonfs/objstore"
)

func TestRetainKeep(t *testing.T) {
	vs := func(lsns ...uint64) []Version {
		out := make([]Version, len(lsns))
		for i, l := range lsns {
			out[i] = Version{LSN: l}
		}
		return out
	}
	lsns := func(v []Version) []uint64 {
		var out []uint64
		for _, x := range v {
			out = append(out, x.LSN)
		}
		return out
	}
	live := map[uint32]bool{1: true}
	for _, tc := range []struct {
		name string
		r    Retain
		in   []Version
		want []uint64
	}{
		{"all inside the window", Retain{Horizon: 5, Live: live}, vs(30, 20, 10), []uint64{30, 20, 10}},
		{"all before the window", Retain{Horizon: 100, Live: live}, vs(30, 20, 10), []uint64{30}},
		// 20 is readable at [20,30): the horizon 25 lands in it.
		{"window starts inside a span", Retain{Horizon: 25, Live: live}, vs(30, 20, 10), []uint64{30, 20}},
		{"horizon on a version", Retain{Horizon: 20, Live: live}, vs(30, 20, 10), []uint64{30, 20}},
		{"pin keeps its version", Retain{Horizon: 100, Live: live, Pins: map[uint32][]uint64{1: {15}}}, vs(30, 20, 10), []uint64{30, 10}},
		{"pin on a version's LSN", Retain{Horizon: 100, Live: live, Pins: map[uint32][]uint64{1: {20}}}, vs(30, 20, 10), []uint64{30, 20}},
		{"pin of another branch", Retain{Horizon: 100, Live: live, Pins: map[uint32][]uint64{2: {15}}}, vs(30, 20, 10), []uint64{30}},
		{"pin before every version", Retain{Horizon: 100, Live: live, Pins: map[uint32][]uint64{1: {5}}}, vs(30, 20, 10), []uint64{30}},
		{"deleted branch", Retain{Horizon: 0, Live: map[uint32]bool{}}, vs(30, 20, 10), nil},
		{"single version", Retain{Horizon: 100, Live: live}, vs(30), []uint64{30}},
	} {
		if got := lsns(tc.r.keep(1, tc.in)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: kept %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestPlanMerge(t *testing.T) {
	ls := func(sizes ...int64) []LayerMeta {
		out := make([]LayerMeta, len(sizes))
		for i, s := range sizes {
			out[i] = LayerMeta{Name: fmt.Sprint(i), Size: s}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		in   []LayerMeta
		want []string
	}{
		{"too few", ls(10, 10, 10), nil},
		{"four similar", ls(10, 10, 10, 10), []string{"0", "1", "2", "3"}},
		{"newest run wins", ls(1000, 10, 10, 10, 10), []string{"1", "2", "3", "4"}},
		{"big ones are not dragged in", ls(1000, 1000, 1000, 10, 10, 10, 10), []string{"3", "4", "5", "6"}},
		{"tiers stay apart", ls(1000, 1000, 1000, 10, 10, 10), nil},
		{"over the cap", ls(600, 600, 600, 600), nil},
	} {
		if got := PlanMerge(tc.in, 4, 2000); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: planned %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := PlanFullMerge(ls(600, 600, 600, 100), 1300); !reflect.DeepEqual(got, [][]string{{"0", "1"}, {"2", "3"}}) {
		t.Errorf("full merge plan %v", got)
	}
}

// TestMergeLayers merges layers and checks every protected read point
// reads what it read before, and that dropped versions are gone.
func TestMergeLayers(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	k := BlockKey(1, 7, 0)
	other := BlockKey(1, 8, 0)
	dead := BlockKey(2, 7, 0)
	lsn := uint64(0)
	for layer := range 4 {
		for i := range 5 {
			lsn += 10
			fill := byte(layer*5 + i + 1)
			s.Apply(lsn, []Entry{put(k, BlockValue(page(fill))), put(dead, BlockValue(page(fill)))})
		}
		if layer == 1 {
			s.Apply(lsn+1, []Entry{put(other, BlockValue(page(99)))})
			lsn++
		}
		flushAll(t, s, lsn)
	}
	names := make([]string, 0, 4)
	for _, l := range s.Layers() {
		names = append(names, l.Name)
	}
	read := func(b uint32, key Key, at uint64) byte {
		v, ok, err := s.Get(ctx, key, []ReadPoint{{Branch: b, MaxLSN: at}})
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return 0
		}
		return v.Value.Data[0]
	}
	// Keep what LSN 155 and later can see, and the pin at 35.
	r := &Retain{Horizon: 155, Live: map[uint32]bool{1: true}, Pins: map[uint32][]uint64{1: {35}}}
	points := []uint64{35, 155, 160, 175, 200, ^uint64(0)}
	before := map[uint64]byte{}
	for _, p := range points {
		before[p] = read(1, k, p)
	}
	meta, st, err := s.MergeLayers(ctx, names, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReplaceLayers(names, meta); err != nil {
		t.Fatal(err)
	}
	if err := s.ReplaceLayers(names, meta); err != nil {
		t.Fatalf("replayed replace: %v", err)
	}
	if n := len(s.Layers()); n != 1 {
		t.Fatalf("%d layers after merge", n)
	}
	for _, p := range points {
		if got := read(1, k, p); got != before[p] {
			t.Errorf("read at %d: %d, was %d", p, got, before[p])
		}
	}
	if got := read(1, other, ^uint64(0)); got != 99 {
		t.Errorf("single-version key: %d", got)
	}
	if got := read(2, dead, ^uint64(0)); got != 0 {
		t.Errorf("deleted branch's data survived the merge: %d", got)
	}
	// 20 versions of k: kept are the pinned one (30), those readable at or
	// after 155 (150..200): 7 of k + 1 of other.
	if st.Versions != 8 || st.DroppedBytes == 0 || st.OutputBytes >= st.InputBytes {
		t.Errorf("stats %+v", st)
	}
	if err := s.ReplaceLayers([]string{"layers/nope"}, LayerMeta{Name: "x"}); err == nil {
		t.Errorf("replace of unknown layers succeeded")
	}
	if !bytes.Contains([]byte(meta.Name), []byte("-m")) {
		t.Errorf("merged layer name %s", meta.Name)
	}
}

// TestMergeStreams merges layers into a DirStore and a MemStore (both
// take the merged layer streamed through CreateTemp and PutFile) and
// checks the result is byte for byte the layer encoding all versions at
// once: the k-way merge interleaves versions correctly, and records copied
// as stored equal encoded ones. One key's record is bigger than the merge's
// read-ahead, and the layers span several read-aheads.
func TestMergeStreams(t *testing.T) {
	ctx := context.Background()
	var all []Entry
	layers := make([][]Entry, 4)
	lsn := uint64(0)
	for li := range layers {
		for blk := range uint64(4000) {
			if blk%4 != uint64(li) && blk%5 != 0 {
				continue // most keys are in one layer: copied as stored
			}
			lsn++
			v := Value{Kind: ValData, Data: sparsePage(lsn)}
			switch {
			case blk%50 == 7:
				v = Value{Kind: ValZero}
			case blk%50 == 8:
				v = Value{Kind: ValTombstone}
			case blk%3 == 1:
				v.Data = testPage(lsn, BlockSize)
			}
			layers[li] = append(layers[li], Entry{Key: BlockKey(0, 5, blk), Version: Version{LSN: lsn, Value: v}})
		}
		// A hot key with many incompressible versions: a record bigger
		// than the read-ahead in the first layer.
		for range 40 + 560*min(1, 1-li) {
			lsn++
			layers[li] = append(layers[li], Entry{Key: BlockKey(0, 6, 0), Version: Version{LSN: lsn, Value: Value{Kind: ValData, Data: testPage(lsn, BlockSize)}}})
		}
		lsn++
		layers[li] = append(layers[li], Entry{Key: DirentKey(0, 1, fmt.Sprintf("file%d", li)), Version: Version{LSN: lsn, Value: Value{Kind: ValData, Data: []byte{byte(li)}}}})
		all = append(all, layers[li]...)
	}
	sortEntries := func(es []Entry) {
		slices.SortStableFunc(es, func(a, b Entry) int {
			if c := a.Key.Compare(b.Key); c != 0 {
				return c
			}
			return cmp.Compare(b.LSN, a.LSN)
		})
	}
	sortEntries(all)
	want, err := EncodeLayer(all, 0, lsn)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "objects")
	ds, err := objstore.NewDirStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		objects objstore.ObjectStore
	}{{"file", ds}, {"memory", newMemObjStore()}} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore(tc.objects, 1<<20)
			var names []string
			lo := uint64(0)
			for li, es := range layers {
				sortEntries(es)
				name := fmt.Sprintf("layers/in%d", li)
				hi := es[0].LSN
				for _, e := range es {
					hi = max(hi, e.LSN)
				}
				b := putLayer(t, tc.objects, name, es, lo, hi)
				s.AddLayer(LayerMeta{Name: name, MinLSN: lo, MaxLSN: hi, Size: int64(len(b))})
				names = append(names, name)
				lo = hi
			}
			meta, st, err := s.MergeLayers(ctx, names, &Retain{Live: map[uint32]bool{0: true}})
			if err != nil {
				t.Fatal(err)
			}
			got, err := tc.objects.Get(ctx, meta.Name)
			if err != nil {
				t.Fatal(err)
			}
			if in0 := s.Layers()[0].Size; in0 < 2*mergeReadAhead {
				t.Fatalf("test layer too small: %d bytes", in0)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("merged layer differs from encoding all versions at once (%d vs %d bytes)", len(got), len(want))
			}
			if st.Versions != int64(len(all)) || st.OutputBytes != int64(len(want)) || meta.Size != int64(len(want)) || st.DroppedBytes != 0 {
				t.Errorf("stats %+v, meta size %d; want %d versions, %d bytes", st, meta.Size, len(all), len(want))
			}
		})
	}
	// The file path leaves no temporary files behind.
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
			t.Errorf("temporary file left: %s", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// downStore is an object store that can go away: its reads fail while
// down is set. reads counts the read calls, failed or not.
type downStore struct {
	objstore.ObjectStore
	down  atomic.Bool
	reads atomic.Int64
}

var errDown = errors.New("object store unreachable")

func (d *downStore) fail() error {
	d.reads.Add(1)
	if d.down.Load() {
		return errDown
	}
	return nil
}

func (d *downStore) Get(ctx context.Context, name string) ([]byte, error) {
	if err := d.fail(); err != nil {
		return nil, err
	}
	return d.ObjectStore.Get(ctx, name)
}

func (d *downStore) Size(ctx context.Context, name string) (int64, error) {
	if err := d.fail(); err != nil {
		return 0, err
	}
	return d.ObjectStore.Size(ctx, name)
}

func (d *downStore) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	if err := d.fail(); err != nil {
		return nil, err
	}
	return d.ObjectStore.GetRange(ctx, name, off, n)
}

func (d *downStore) ReadRange(ctx context.Context, name string, off, n int64, buf []byte) ([]byte, error) {
	if err := d.fail(); err != nil {
		return nil, err
	}
	return d.ObjectStore.ReadRange(ctx, name, off, n, buf)
}

// A layer opened with OpenNow right after it is recorded answers reads
// from its index while the object store is away: a key it does not hold
// needs no object, so reads of other data do not wait for the store.
// Unopened, the same read fails; a failed OpenNow is not remembered.
func TestOpenNowAnswersDuringAnOutage(t *testing.T) {
	for _, opened := range []bool{true, false} {
		ds := &downStore{ObjectStore: objstore.NewMemStore()}
		s := NewStore(ds, 1<<20)
		s.Apply(10, []Entry{put(BlockKey(1, 5, 0), BlockValue(page(1)))})
		s.Freeze(10)
		meta, ok, err := s.WriteLayer(context.Background(), 10)
		if err != nil || !ok {
			t.Fatalf("write layer: ok=%v err=%v", ok, err)
		}
		s.AddLayer(meta)
		if opened {
			ds.down.Store(true)
			if err := s.OpenNow(context.Background(), meta.Name); err == nil {
				t.Fatal("OpenNow with the store away succeeded")
			}
			ds.down.Store(false)
			if err := s.OpenNow(context.Background(), meta.Name); err != nil {
				t.Fatalf("OpenNow after a failed one: %v", err)
			}
		}
		ds.down.Store(true)
		_, found, err := s.Get(context.Background(), BlockKey(1, 6, 0), []ReadPoint{{Branch: 1, MaxLSN: ^uint64(0)}})
		if opened && (err != nil || found) {
			t.Errorf("opened layer, store away: a key it lacks: found=%v err=%v, want not found", found, err)
		}
		if !opened && err == nil {
			t.Errorf("unopened layer, store away: a read succeeded; the test no longer shows anything")
		}
	}
}
