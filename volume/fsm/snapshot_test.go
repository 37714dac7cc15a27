package fsm

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/objstore"
)

// Snapshots written before the header had a version (no magic) still
// restore.
func TestVersionZeroSnapshotRestores(t *testing.T) {
	store := blockstore.NewStore(objstore.NewMemStore(), 1<<20)
	f := New(store, time.Now(), 1)
	f.maxIno = 4242
	hdr, _, err := f.Header()
	if err != nil {
		t.Fatal(err)
	}
	// Version 0: no magic and no cluster state.
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, hdr[len(snapshotMagic):len(hdr)-clusterLen(f)], store.Capture()); err != nil {
		t.Fatal(err)
	}
	g := New(blockstore.NewStore(objstore.NewMemStore(), 1<<20), time.Now(), 1)
	if err := g.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatalf("restore a version 0 snapshot: %v", err)
	}
	if g.InoHighWater() != 4242 {
		t.Errorf("inode mark %d, want 4242", g.InoHighWater())
	}
}

// A snapshot header of a newer format is refused by name.
func TestNewerSnapshotRefused(t *testing.T) {
	f := New(blockstore.NewStore(objstore.NewMemStore(), 1<<20), time.Now(), 1)
	err := f.Restore(io.NopCloser(bytes.NewReader([]byte("NEONFSM7 rest"))))
	if err == nil || !strings.Contains(err.Error(), "FSM snapshot format 7 is unknown") {
		t.Errorf("restore of a format 7 snapshot: %v", err)
	}
}

// Version 1 headers (magic, no lease table) restore with no leases; the
// lease table survives a version 2 round trip.
func TestSnapshotLeases(t *testing.T) {
	store := blockstore.NewStore(objstore.NewMemStore(), 1<<20)
	f := New(store, time.Now(), 1)
	want := Lease{Node: "n1", Token: 7, Expires: 99}
	f.leases[1] = want
	f.nodes["n1"] = Formats{Entries: 3, Layers: 2, Snapshots: 2, Manifests: 1}
	f.inUse = Formats{Entries: 3}
	hdr, _, err := f.Header()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, hdr, store.Capture()); err != nil {
		t.Fatal(err)
	}
	g := New(blockstore.NewStore(objstore.NewMemStore(), 1<<20), time.Now(), 1)
	if err := g.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
	if got, ok := g.LeaseOf(1); !ok || got != want {
		t.Errorf("lease after restore: %+v %v, want %+v", got, ok, want)
	}
	if g.NodeTable()["n1"] != f.nodes["n1"] || g.InUse() != f.inUse {
		t.Errorf("formats after restore: %v %v", g.NodeTable(), g.InUse())
	}

	hdr, _, _ = f.Header()
	v1 := append([]byte("NEONFSM1"), hdr[len(snapshotMagic):len(hdr)-clusterLen(f)]...)
	buf.Reset()
	if err := WriteSnapshot(&buf, v1, store.Capture()); err != nil {
		t.Fatal(err)
	}
	g.leases[3] = want
	if err := g.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatalf("restore a version 1 snapshot: %v", err)
	}
	if len(g.Leases()) != 0 || len(g.NodeTable()) != 0 || g.InUse() != (Formats{}) {
		t.Errorf("cluster state after restoring a version 1 snapshot: %v %v %v", g.Leases(), g.NodeTable(), g.InUse())
	}
}

// clusterLen is the size of the cluster state at the end of f's header,
// its length prefix included.
func clusterLen(f *FSM) int {
	cs := f.marshalCluster()
	return len(cs) + len(binary.AppendUvarint(nil, uint64(len(cs))))
}
