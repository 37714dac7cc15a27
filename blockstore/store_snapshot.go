package blockstore

// The store in a Raft snapshot: Capture freezes it, Write encodes it,
// ReadSnapshot restores it.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"

	"github.com/neonfs/neonfs/objstore"
)

// Capture is the store's state at one applied LSN, for a Raft snapshot.
type Capture struct {
	segs    []*segment
	layers  []*layerRef
	applied uint64
}

// Capture freezes the active segment locally and captures the state, so
// the snapshot can be written while applies go on, against immutable data.
// Call it where no Apply runs concurrently (raft's FSM.Snapshot).
func (s *Store) Capture() *Capture {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.freezeLocked(s.applied)
	return &Capture{segs: s.segs[:len(s.segs)-1], layers: s.layers, applied: s.applied}
}

// LayerCapture captures only the layer list, as of applied: the state an
// object store alone can restore (a remote manifest). The caller vouches
// that the layers hold everything up to applied.
func (s *Store) LayerCapture(applied uint64) *Capture {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return &Capture{layers: s.layers, applied: applied}
}

// Write writes the captured layer list and every memtable version.
func (c *Capture) Write(w io.Writer) error {
	segs, layers, applied := c.segs, c.layers, c.applied

	crc := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	bw := bufio.NewWriterSize(io.MultiWriter(w, crc), 1<<20)
	var b []byte
	b = append(b, snapshotMagic...)
	b = binary.AppendUvarint(b, applied)
	b = binary.AppendUvarint(b, uint64(len(layers)))
	for _, l := range layers {
		b = binary.AppendUvarint(b, uint64(len(l.meta.Name)))
		b = append(b, l.meta.Name...)
		b = binary.AppendUvarint(b, l.meta.MinLSN)
		b = binary.AppendUvarint(b, l.meta.MaxLSN)
		b = binary.AppendUvarint(b, uint64(l.meta.Size))
		b = binary.AppendUvarint(b, uint64(l.meta.Keys))
		b = binary.AppendUvarint(b, uint64(len(l.meta.BranchBytes)))
		for br, n := range l.meta.BranchBytes {
			b = binary.AppendUvarint(b, uint64(br))
			b = binary.AppendUvarint(b, uint64(n))
		}
	}
	b = binary.AppendUvarint(b, uint64(len(segs)))
	if _, err := bw.Write(b); err != nil {
		return err
	}
	for _, sg := range segs {
		es := sg.entries()
		b = b[:0]
		b = binary.AppendUvarint(b, sg.minLSN)
		b = binary.AppendUvarint(b, sg.maxLSN)
		b = binary.AppendUvarint(b, uint64(len(es)))
		for _, e := range es {
			b = AppendKey(b, e.Key)
			b = binary.AppendUvarint(b, e.LSN)
			b = append(b, byte(e.Value.Kind))
			b = binary.AppendUvarint(b, uint64(len(e.Value.Data)))
			b = append(b, e.Value.Data...)
			if len(b) > 1<<20 {
				if _, err := bw.Write(b); err != nil {
					return err
				}
				b = b[:0]
			}
		}
		if _, err := bw.Write(b); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	_, err := w.Write(binary.BigEndian.AppendUint32(nil, crc.Sum32()))
	return err
}

// ReadSnapshot replaces the store's state with a snapshot written by
// WriteSnapshot.
func (s *Store) ReadSnapshot(r io.Reader) error {
	crc := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	br := bufio.NewReaderSize(r, 1<<20)
	tr := &teeByteReader{r: br, h: crc}
	fail := func(what string, err error) error {
		return fmt.Errorf("read snapshot %s: %w", what, err)
	}
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(tr, magic); err != nil || string(magic) != snapshotMagic {
		return fail("header", objstore.ErrCorrupt)
	}
	applied, err := binary.ReadUvarint(tr)
	if err != nil {
		return fail("applied", err)
	}
	nl, err := binary.ReadUvarint(tr)
	if err != nil {
		return fail("layer count", err)
	}
	var layers []*layerRef
	for range nl {
		name, err := readBytes(tr, 4096)
		if err != nil {
			return fail("layer name", err)
		}
		var f [4]uint64
		for i := range f {
			if f[i], err = binary.ReadUvarint(tr); err != nil {
				return fail("layer meta", err)
			}
		}
		meta := LayerMeta{Name: string(name), MinLSN: f[0], MaxLSN: f[1], Size: int64(f[2]), Keys: int(f[3])}
		nb, err := binary.ReadUvarint(tr)
		if err != nil || nb > 1<<32 {
			return fail("layer branch count", err)
		}
		if nb > 0 {
			meta.BranchBytes = make(map[uint32]int64, min(nb, 1024))
		}
		for range nb {
			br, err1 := binary.ReadUvarint(tr)
			n, err2 := binary.ReadUvarint(tr)
			if err := errors.Join(err1, err2); err != nil || br > math.MaxUint32 {
				return fail("layer branch bytes", err)
			}
			meta.BranchBytes[uint32(br)] = int64(n)
		}
		layers = append(layers, &layerRef{meta: meta})
	}
	ns, err := binary.ReadUvarint(tr)
	if err != nil {
		return fail("segment count", err)
	}
	var segs []*segment
	for range ns {
		minLSN, err1 := binary.ReadUvarint(tr)
		maxLSN, err2 := binary.ReadUvarint(tr)
		n, err3 := binary.ReadUvarint(tr)
		if err := errors.Join(err1, err2, err3); err != nil {
			return fail("segment header", err)
		}
		sg := newSegment(minLSN)
		sg.maxLSN, sg.frozen = maxLSN, true
		for range n {
			k, err := readKey(tr)
			if err != nil {
				return fail("key", err)
			}
			lsn, err := binary.ReadUvarint(tr)
			if err != nil {
				return fail("lsn", err)
			}
			kind, err := tr.ReadByte()
			if err != nil {
				return fail("value kind", err)
			}
			data, err := readBytes(tr, 1<<24)
			if err != nil {
				return fail("value", err)
			}
			if len(data) == 0 {
				data = nil
			}
			// entries are LSN-descending per key; put wants ascending.
			vs := sg.keys[k]
			sg.keys[k] = append([]Version{{LSN: lsn, Value: Value{Kind: ValueKind(kind), Data: data}}}, vs...)
			sg.bytes += int64(len(data)) + 32
		}
		segs = append(segs, sg)
	}
	sum := crc.Sum32()
	var tail [4]byte
	if _, err := io.ReadFull(br, tail[:]); err != nil || binary.BigEndian.Uint32(tail[:]) != sum {
		return fail("checksum", objstore.ErrCorrupt)
	}
	segs = append(segs, newSegment(applied))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.segs, s.layers, s.applied = segs, layers, applied
	return nil
}

type teeByteReader struct {
	r *bufio.Reader
	h io.Writer
}

func (t *teeByteReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.h.Write(p[:n])
	return n, err
}

func (t *teeByteReader) ReadByte() (byte, error) {
	c, err := t.r.ReadByte()
	if err == nil {
		t.h.Write([]byte{c})
	}
	return c, err
}

func readBytes(r *teeByteReader, limit uint64) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, fmt.Errorf("length %d over %d: %w", n, limit, objstore.ErrCorrupt)
	}
	b := make([]byte, n)
	_, err = io.ReadFull(r, b)
	return b, err
}

func readKey(r *teeByteReader) (Key, error) {
	hdr := make([]byte, 13, 13+256)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return Key{}, err
	}
	switch Kind(hdr[4]) {
	case KindBlock:
		var blk [8]byte
		if _, err := io.ReadFull(r, blk[:]); err != nil {
			return Key{}, err
		}
		hdr = append(hdr, blk[:]...)
	case KindDirent:
		n, err := r.ReadByte()
		if err != nil {
			return Key{}, err
		}
		name := make([]byte, n)
		if _, err := io.ReadFull(r, name); err != nil {
			return Key{}, err
		}
		hdr = append(append(hdr, n), name...)
	}
	k, _, err := DecodeKey(hdr)
	return k, err
}
