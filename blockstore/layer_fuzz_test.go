package blockstore

import (
	"bytes"
	"context"
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/neonfs/neonfs/objstore"
)

// memObjStore is objstore.MemStore counting ranged reads, for tests of
// how many reads a scan costs.
type memObjStore struct {
	*objstore.MemStore
	mu       sync.Mutex
	getRange int
}

func newMemObjStore() *memObjStore { return &memObjStore{MemStore: objstore.NewMemStore()} }

func (m *memObjStore) ReadRange(ctx context.Context, name string, off, n int64, buf []byte) ([]byte, error) {
	m.mu.Lock()
	m.getRange++
	m.mu.Unlock()
	return m.MemStore.ReadRange(ctx, name, off, n, buf)
}

func (m *memObjStore) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	return m.ReadRange(ctx, name, off, n, nil)
}

// layerMaxKey sorts after every valid key.
var layerMaxKey = Key{Branch: math.MaxUint32, Kind: math.MaxUint8, Ino: math.MaxUint64, Block: math.MaxUint64}

func FuzzOpenLayer(f *testing.F) {
	for _, entries := range [][]Entry{nil, testLayerEntries()[:5], testLayerEntries()} {
		b, err := EncodeLayer(entries, 10, 1000)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte(layerMagic))
	f.Add(make([]byte, layerFooterLen))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkFuzzedLayer(t, data)
		// Random bytes almost never pass the checksums, so also try them
		// with valid checksums to exercise the structural checks.
		fixed := bytes.Clone(data)
		fixLayerCRCs(fixed)
		checkFuzzedLayer(t, fixed)
	})
}

// checkFuzzedLayer opens data as a layer and reads all of it: it must not
// panic, and whatever reads back without error must be exactly what the
// encoder writes for the entries as stored (compressed or not).
func checkFuzzedLayer(t *testing.T, data []byte) {
	ctx := context.Background()
	st := newMemObjStore()
	st.Put(ctx, "l", data)
	l, err := OpenLayer(ctx, st, "l", nil)
	if err != nil {
		return
	}
	meta := l.Meta()
	var got []Entry
	err = l.Scan(ctx, Key{}, layerMaxKey, math.MaxUint64, func(e Entry) error {
		if e.LSN <= meta.MinLSN || e.LSN > meta.MaxLSN {
			t.Fatalf("entry %v@%d outside (%d, %d]", e.Key, e.LSN, meta.MinLSN, meta.MaxLSN)
		}
		got = append(got, e)
		return nil
	})
	if err != nil {
		return
	}
	// Versions as stored (compressed values kept so), read the way a
	// merge reads them.
	var stored []Entry
	c := &mergeCursor{l: l, i: -1}
	for {
		ok, err := c.next(ctx)
		if err != nil {
			t.Fatalf("raw scan after a clean scan: %v", err)
		}
		if !ok {
			break
		}
		for _, v := range c.vs {
			stored = append(stored, Entry{Key: c.e.key.key(), Version: v})
		}
	}
	// A layer that reads back without error must be exactly what the
	// encoder writes for its entries as stored: the only unchecked footer
	// fields are the entry count, which nothing reads back, and the format
	// version (1 or 2).
	re, err := appendLayer(nil, stored, meta.MinLSN, meta.MaxLSN, nil, false)
	if err != nil {
		t.Fatalf("re-encoding scanned entries: %v", err)
	}
	if len(re) != len(data) {
		t.Fatalf("re-encoded %d bytes, object has %d", len(re), len(data))
	}
	F := len(data) - layerFooterLen
	for _, field := range [][2]int{{F + 8, F + 12}, {F + 32, F + 40}, {len(data) - 4, len(data)}} {
		copy(re[field[0]:field[1]], data[field[0]:field[1]])
	}
	if !bytes.Equal(re, data) {
		t.Fatalf("re-encoded layer differs from the object")
	}
	for i, e := range got {
		v, ok, err := l.Get(ctx, e.Key, e.LSN)
		if err != nil || !ok || v.LSN != e.LSN || v.Value.Kind != e.Value.Kind || !bytes.Equal(v.Value.Data, e.Value.Data) {
			t.Fatalf("Get(%v, %d) = %v, %v, %v; scan had %v", e.Key, e.LSN, v, ok, err, e)
		}
		v, ok, err = l.Get(ctx, e.Key, e.LSN-1)
		older := i+1 < len(got) && got[i+1].Key.Compare(e.Key) == 0
		if err != nil || ok != older || older && v.LSN != got[i+1].LSN {
			t.Fatalf("Get(%v, %d) = %v, %v, %v", e.Key, e.LSN-1, v, ok, err)
		}
	}
}

func FuzzDecodeKey(f *testing.F) {
	for _, k := range []Key{
		InodeKey(1, 2),
		BlockKey(0, 7, math.MaxUint64),
		DirentKey(3, 1, "name"),
		DirentKey(3, 1, ""),
		DirentKey(math.MaxUint32, math.MaxUint64, strings.Repeat("x", 255)),
	} {
		f.Add(AppendKey(nil, k))
		f.Add(append(AppendKey(nil, k), 1, 2, 3))
	}
	f.Add([]byte{})
	f.Add(make([]byte, 12))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, rest, err := DecodeKey(b)
		if err != nil {
			if _, _, ok := parseRawKey(b); ok {
				t.Fatalf("parseRawKey(%x) accepts what DecodeKey rejects: %v", b, err)
			}
			return
		}
		if len(rest) > len(b) || !bytes.Equal(rest, b[len(b)-len(rest):]) {
			t.Fatalf("rest is not a suffix of the input")
		}
		enc := AppendKey(nil, k)
		if !bytes.Equal(enc, b[:len(b)-len(rest)]) {
			t.Fatalf("AppendKey(DecodeKey(%x)) = %x", b[:len(b)-len(rest)], enc)
		}
		r, n, ok := parseRawKey(b)
		if !ok || n != len(enc) || r.key() != k || r.compareKey(k) != 0 {
			t.Fatalf("parseRawKey(%x) = %+v, %d, %v; DecodeKey gave %v", b, r, n, ok, k)
		}
	})
}
