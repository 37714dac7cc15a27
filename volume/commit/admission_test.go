package commit

import (
	"context"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/objstore"
)

// Writers wait while the memtable is over MaxUnflushed, kick the flusher,
// and resume when a flush shrinks it: woken by the flush, not by polling.
func TestAdmissionWaitsForFlush(t *testing.T) {
	store := blockstore.NewStore(objstore.NewMemStore(), 1<<20)
	var kicks atomic.Int32
	a := NewAdmission(t.TempDir(), Limits{ReserveBytes: 1, MaxPending: 1 << 30, MaxUnflushed: 4 * bs}, store, func() { kicks.Add(1) })
	a.Attach(NewCommitter(func([]byte, func()) error { return nil }, 1<<20, time.Millisecond, a.Changed))
	defer a.commit.Close()
	a.CheckDisk()

	var puts []blockstore.Entry
	for b := range uint64(8) {
		puts = append(puts, blockstore.Entry{Key: blockstore.BlockKey(1, 2, b), Version: blockstore.Version{Value: blockstore.Value{Data: testPageData(b)}}})
	}
	store.Apply(1, puts)
	var through atomic.Bool
	go func() {
		if err := a.Wait(bs); err != nil {
			t.Error(err)
		}
		through.Store(true)
	}()
	waitFor(t, func() bool { return kicks.Load() > 0 })
	time.Sleep(20 * time.Millisecond)
	if through.Load() {
		t.Fatal("a writer got through while the memtable was over its bound")
	}
	store.Freeze(1)
	meta, ok, err := store.WriteLayer(context.Background(), 1)
	if err != nil || !ok {
		t.Fatalf("write layer: %v %v", ok, err)
	}
	store.AddLayer(meta)
	a.Changed() // what the flusher does after each flush
	waitFor(t, through.Load)
}

// A full disk refuses at once with ENOSPC; nothing waits.
func TestAdmissionNoSpace(t *testing.T) {
	store := blockstore.NewStore(objstore.NewMemStore(), 1<<20)
	a := NewAdmission(t.TempDir(), Limits{ReserveBytes: 1 << 62, MaxPending: 1 << 30}, store, func() {})
	a.Attach(NewCommitter(func([]byte, func()) error { return nil }, 1<<20, time.Millisecond, a.Changed))
	defer a.commit.Close()
	a.CheckDisk()
	if err := a.Wait(bs); Errno(err) != syscall.ENOSPC {
		t.Fatalf("Wait on a full disk: %v", err)
	}
}

func testPageData(seed uint64) []byte {
	p := make([]byte, bs)
	for i := range p {
		p[i] = byte(seed + uint64(i)*7)
	}
	return p
}
