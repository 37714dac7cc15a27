package fsm

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/neonfs/neonfs/blockstore"
)

func TestPutsRoundTrip(t *testing.T) {
	random := make([]byte, blockstore.BlockSize)
	for i := range random {
		random[i] = byte(rand.Uint32())
	}
	sparse := make([]byte, blockstore.BlockSize)
	copy(sparse, random[:300])
	tests := []struct {
		name  string
		value blockstore.Value
		as    entryType // how it is stored
	}{
		{"sparse page", blockstore.Value{Kind: blockstore.ValData, Data: sparse}, entryPutsS2},
		{"random page", blockstore.Value{Kind: blockstore.ValData, Data: random}, entryPuts},
		{"small value", blockstore.Value{Kind: blockstore.ValData, Data: []byte("attr")}, entryPuts},
		{"empty value", blockstore.Value{Kind: blockstore.ValData}, entryPuts},
		{"zero block", blockstore.Value{Kind: blockstore.ValZero}, entryPuts},
		{"tombstone", blockstore.Value{Kind: blockstore.ValTombstone}, entryPuts},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := blockstore.BlockKey(1, 2, 3)
			b := mustEncodePuts(t, 42, map[blockstore.Key]blockstore.Value{k: tt.value}, 0)
			if entryType(b[1]) != tt.as {
				t.Errorf("stored as entry type %d (%d bytes), want %d", b[1], len(b), tt.as)
			}
			r, err := decodeRecord(b)
			if err != nil {
				t.Fatal(err)
			}
			if r.Type != entryPuts || r.Time != 42 || len(r.Puts) != 1 {
				t.Fatalf("decoded %+v", r)
			}
			got := r.Puts[0]
			if got.Key != k || got.Value.Kind != tt.value.Kind || !bytes.Equal(got.Value.Data, tt.value.Data) {
				t.Fatalf("decoded %v kind %d (%d bytes), want kind %d (%d bytes)", got.Key, got.Value.Kind, len(got.Value.Data), tt.value.Kind, len(tt.value.Data))
			}
		})
	}
}

func TestCompressedPutsDamaged(t *testing.T) {
	sparse := make([]byte, blockstore.BlockSize)
	copy(sparse, "header")
	good := mustEncodePuts(t, 7, map[blockstore.Key]blockstore.Value{
		blockstore.BlockKey(1, 2, 3): {Kind: blockstore.ValData, Data: sparse}}, 0)
	if entryType(good[1]) != entryPutsS2 {
		t.Fatalf("a sparse page is stored as entry type %d, want compressed", good[1])
	}
	hdr := len(appendHeader(nil, entryPutsS2, 7))
	huge := append(appendHeader(nil, entryPutsS2, 7), 0xff, 0xff, 0xff, 0xff, 0x0f) // claims 4 GiB
	tests := []struct {
		name string
		b    []byte
	}{
		{"truncated", good[:len(good)-5]},
		{"no body", good[:hdr]},
		{"claims 4 GiB", huge},
		{"body flipped", append(slices.Clone(good[:hdr+3]), bytes.Repeat([]byte{0xee}, len(good)-hdr-3)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := decodeRecord(tt.b); !errors.Is(err, errBadEntry) {
				t.Fatalf("decodeRecord = %v, want errBadEntry", err)
			}
		})
	}
}

// Bodies over maxEntryBody are stored raw, so the decoder's bound never
// refuses an entry the encoder wrote.
func TestHugePutsStayUncompressed(t *testing.T) {
	defer func(old int) { maxEntryBody = old }(maxEntryBody)
	maxEntryBody = 3 * blockstore.BlockSize
	puts := map[blockstore.Key]blockstore.Value{}
	for b := range uint64(4) {
		puts[blockstore.BlockKey(1, 2, b)] = blockstore.Value{Kind: blockstore.ValData, Data: make([]byte, blockstore.BlockSize)}
	}
	e := mustEncodePuts(t, 1, puts, 0)
	if entryType(e[1]) != entryPuts {
		t.Fatalf("a body over maxEntryBody is stored as entry type %d, want raw", e[1])
	}
	if r, err := decodeRecord(e); err != nil || len(r.Puts) != len(puts) {
		t.Fatalf("decodeRecord = %d puts, %v", len(r.Puts), err)
	}
}

// FuzzDecodeRecord: any bytes decode to an error or to a record that
// encodes back to an entry decoding to the same puts; never a panic.
func FuzzDecodeRecord(f *testing.F) {
	sparse := make([]byte, blockstore.BlockSize)
	copy(sparse, "header")
	f.Add(mustEncodePuts(f, 1, map[blockstore.Key]blockstore.Value{
		blockstore.BlockKey(1, 2, 3):        {Kind: blockstore.ValData, Data: sparse},
		blockstore.InodeKey(1, 2):           {Kind: blockstore.ValData, Data: []byte("attr")},
		blockstore.DirentKey(1, 1, "x"):     {Kind: blockstore.ValTombstone},
		blockstore.BlockKey(1, 2, 4):        {Kind: blockstore.ValZero},
		blockstore.DirentKey(1, 1, "ünï"):   {Kind: blockstore.ValData, Data: []byte{1, 2}},
		blockstore.BlockKey(2, 9, 1<<40):    {Kind: blockstore.ValData, Data: bytes.Repeat([]byte{7}, 600)},
		blockstore.InodeKey(3, 1<<62):       {Kind: blockstore.ValData},
		blockstore.DirentKey(1, 7, "12345"): {Kind: blockstore.ValData, Data: []byte("ino")},
	}, 0))
	f.Add(mustEncodePuts(f, 2, map[blockstore.Key]blockstore.Value{
		blockstore.BlockKey(1, 2, 3): {Kind: blockstore.ValData, Data: sparse},
	}, 0)) // compressed
	f.Add(EncodeFreeze(5))
	j, _ := encodeJSON(entryLayer, 6, blockstore.LayerMeta{Name: "layers/x", MinLSN: 1, MaxLSN: 2})
	f.Add(j)
	fenced, _ := EncodeFencedPuts(7, Fence{Node: "n1", Seq: 9, Tokens: map[uint32]uint64{1: 3, 2: 8}},
		map[blockstore.Key]blockstore.Value{blockstore.BlockKey(1, 2, 3): {Kind: blockstore.ValData, Data: sparse}}, 0)
	f.Add(fenced)
	lease, _ := EncodeLease(8, LeaseOp{Op: LeaseRenew, Branch: 1, Node: "n2", TTL: 4e9, Token: 3})
	f.Add(lease)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecord(data)
		if err != nil || r.Type != entryPuts {
			return
		}
		puts := make(map[blockstore.Key]blockstore.Value, len(r.Puts))
		for _, p := range r.Puts {
			puts[p.Key] = p.Value
		}
		b, err := EncodePuts(r.Time, puts, 0)
		if err != nil {
			t.Fatalf("decoded puts do not encode: %v", err)
		}
		again, err := decodeRecord(b)
		if err != nil {
			t.Fatalf("re-encoded puts do not decode: %v", err)
		}
		if len(again.Puts) != len(puts) {
			t.Fatalf("re-encoded %d puts, decoded %d", len(puts), len(again.Puts))
		}
		for _, p := range again.Puts {
			want := puts[p.Key]
			if p.Value.Kind != want.Kind || !bytes.Equal(p.Value.Data, want.Data) {
				t.Fatalf("put %v changed in a round trip", p.Key)
			}
		}
	})
}

func mustEncodePuts(t testing.TB, now int64, puts map[blockstore.Key]blockstore.Value, hint int) []byte {
	t.Helper()
	b, err := EncodePuts(now, puts, hint)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzEncodePuts builds batches from the fuzzer's bytes (names of 0-1024
// bytes, every key kind and value kind, valid or not, bodies large enough
// to be compressed or not) and checks the encoder's promise: it refuses
// exactly the batches holding a put CheckPut refuses, and every batch it
// accepts decodes to the same batch.
func FuzzEncodePuts(f *testing.F) {
	f.Add([]byte{3, 1, 2, 3, 0, 0, 0, 1, 0x20, 0})
	f.Add([]byte{1, 1, 2, 0, 0xff, 0x00, 'a', 2, 0, 0})              // 255-byte name
	f.Add([]byte{1, 1, 2, 0, 0x00, 0x01, 'a', 0, 0, 0})              // 256-byte name
	f.Add([]byte{1, 1, 2, 0, 0x00, 0x04, 'a', 0, 0, 0})              // 1024-byte name
	f.Add([]byte{2, 1, 2, 0, 0, 0, 0, 0, 0x40, 0x1f, 2, 1, 2, 0, 0}) // compressible page, two puts
	f.Add([]byte{2, 1, 2, 5, 0, 0, 0, 1, 0x10, 0, 4, 1, 1, 1, 1, 1}) // bad kinds
	f.Fuzz(func(t *testing.T, data []byte) {
		puts := map[blockstore.Key]blockstore.Value{}
		valid := true
		next := func() byte {
			if len(data) == 0 {
				return 0
			}
			c := data[0]
			data = data[1:]
			return c
		}
		for len(data) > 0 && len(puts) < 64 {
			k := blockstore.Key{Kind: blockstore.Kind(next() % 5), Branch: uint32(next()), Ino: uint64(next()) << 40}
			k.Block = uint64(next())
			nameLen := (int(next()) | int(next())<<8) % 1025
			k.Name = string(bytes.Repeat([]byte{next()}, nameLen))
			v := blockstore.Value{Kind: blockstore.ValueKind(next() % 4)}
			dataLen := (int(next()) | int(next())<<8) % (3 * blockstore.BlockSize)
			if dataLen > 0 {
				v.Data = make([]byte, dataLen)
				v.Data[0] = next() // the rest zeros: compresses
			}
			if _, dup := puts[k]; dup {
				continue
			}
			puts[k] = v
			if CheckPut(blockstore.Entry{Key: k, Version: blockstore.Version{Value: v}}) != nil {
				valid = false
			}
		}
		b, err := EncodePuts(9, puts, 0)
		if !valid {
			if err == nil {
				t.Fatal("EncodePuts accepted a batch with an unrepresentable put")
			}
			return
		}
		if err != nil {
			t.Fatalf("EncodePuts refused a valid batch: %v", err)
		}
		r, err := decodeRecord(b)
		if err != nil {
			t.Fatalf("an encoded batch does not decode (entry type %d): %v", b[1], err)
		}
		if r.Type != entryPuts || r.Time != 9 || len(r.Puts) != len(puts) {
			t.Fatalf("decoded type %d time %d with %d puts, want %d", r.Type, r.Time, len(r.Puts), len(puts))
		}
		for _, p := range r.Puts {
			want, ok := puts[p.Key]
			if !ok || p.Value.Kind != want.Kind || !bytes.Equal(p.Value.Data, want.Data) {
				t.Fatalf("put %v changed in a round trip", p.Key)
			}
		}
	})
}
