package blockstore

import (
	"bytes"
	"context"
	"math"
	"testing"

	"github.com/VictoriaMetrics/fastcache"
)

// Only a big record gets its newest version cached on its own: a page
// written twice is read from its cached record.
func TestLayerHeadCachedForBigRecordsOnly(t *testing.T) {
	ctx := context.Background()
	var es []Entry
	for b, versions := range []int{1, 2, layerHeadMinVersions, layerHeadMinVersions + 1} {
		for i := versions - 1; i >= 0; i-- { // newest first
			page := bytes.Repeat([]byte{byte(b), byte(i)}, BlockSize/2)
			es = append(es, Entry{Key: BlockKey(0, 9, uint64(b)), Version: Version{LSN: uint64(100 + i), Value: BlockValue(page)}})
		}
	}
	st := newMemObjStore()
	putLayer(t, st, "l", es, 10, 1000)
	l, err := OpenLayer(ctx, st, "l", fastcache.New(32<<20))
	if err != nil {
		t.Fatal(err)
	}
	for b, wantHead := range []bool{false, false, false, true} {
		k := BlockKey(0, 9, uint64(b))
		for range 2 {
			if _, ok, err := l.Get(ctx, k, math.MaxUint64); !ok || err != nil {
				t.Fatalf("Get(%v): %v %v", k, ok, err)
			}
		}
		e := l.entry(l.search(k))
		if _, got := l.headCached(&e, math.MaxUint64); got != wantHead {
			t.Errorf("block %d: head cached %v, want %v", b, got, wantHead)
		}
	}
}
