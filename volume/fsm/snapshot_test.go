package fsm

import (
	"bytes"
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
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, hdr[len(snapshotMagic):], store.Capture()); err != nil {
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
