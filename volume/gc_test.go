package volume

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func layerFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "objects", "layers", "*.layer"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestGCKeepsWhatReadersNeed rewrites a volume's layers with a retention
// window that has closed: superseded versions go, except those a branch's
// fork point still reads; a deleted branch's data goes; replaced and
// orphaned objects are deleted; the store stays restorable.
func TestGCKeepsWhatReadersNeed(t *testing.T) {
	ctx := context.Background()
	dir := testVolume(t)
	v, main := open(t, dir, Options{})
	big := func(tag string, i int) string { return fmt.Sprintf("%s-%d-%0*d", tag, i, 64<<10, i) }
	for i := range 6 {
		writeFile(t, main, "f", big("main", i))
		if i == 2 {
			if _, err := v.CreateBranch(ctx, "keep", "main", ""); err != nil {
				t.Fatal(err)
			}
		}
		if err := v.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.CreateBranch(ctx, "gone", "main", ""); err != nil {
		t.Fatal(err)
	}
	gone, err := v.Mount(ctx, "gone")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, gone, "g", big("gone", 0))
	if err := v.Unmount(gone); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.DeleteBranch(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(dir, "objects", "layers", "00000000000000000001-00000000000000000002-g1.layer")
	if err := os.WriteFile(orphan, []byte("left by a crash"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := v.store.BranchBytes()
	layersBefore := len(v.store.Layers())

	v.retention = time.Nanosecond // the window has closed: only pins protect
	var steps []string
	res, err := v.GC(ctx, func(f string, a ...any) { steps = append(steps, fmt.Sprintf(f, a...)) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc: %+v; progress %q", res, steps)
	if res.Merges == 0 || res.DroppedBytes == 0 || res.LayersAfter != 1 || len(steps) == 0 {
		t.Fatalf("gc result %+v, progress %q", res, steps)
	}
	if got, want := fileContent(t, main, "f"), big("main", 5); got != want {
		t.Fatalf("main/f after gc: %.20q", got)
	}
	keep, err := v.Mount(ctx, "keep")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fileContent(t, keep, "f"), big("main", 2); got != want {
		t.Fatalf("keep/f (the fork point's version) after gc: %.20q", got)
	}
	after := v.store.BranchBytes()
	if after[3] != 0 || before[3] == 0 {
		t.Fatalf("deleted branch's bytes: %d before gc, %d after", before[3], after[3])
	}
	if after[1] >= before[1] {
		t.Fatalf("main's bytes did not shrink: %d -> %d", before[1], after[1])
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("orphan survived gc: %v", err)
	}
	if files := layerFiles(t, dir); len(files) != len(v.store.Layers())+res.PendingDeletes {
		t.Fatalf("%d layer objects for %d layers (%d pending deletes; %d layers before)", len(files), len(v.store.Layers()), res.PendingDeletes, layersBefore)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if files := layerFiles(t, dir); len(files) != 1 {
		t.Fatalf("after close: layer objects %v, want only the merged one", files)
	}
	// The published manifest names only what is left.
	rdir, _ := restore(t, filepath.Join(dir, "objects"))
	r, rmain := open(t, rdir, Options{})
	defer r.Close()
	if got, want := fileContent(t, rmain, "f"), big("main", 5); got != want {
		t.Fatalf("restored after gc: %.20q", got)
	}
}

// TestCompactionBoundsLayers: the flusher's size-tiered merges keep the
// layer count, and so the layers a read consults, small.
func TestCompactionBoundsLayers(t *testing.T) {
	ctx := context.Background()
	dir := testVolume(t)
	v, main := open(t, dir, Options{})
	defer v.Close()
	for i := range 20 {
		writeFile(t, main, fmt.Sprintf("f%d", i%5), fmt.Sprintf("%d-%0*d", i, 32<<10, i))
		v.flushMu.Lock()
		err := v.flushLocked(ctx)
		if err == nil {
			_, err = v.compactLocked(ctx, false, nil)
		}
		v.flushMu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(v.store.Layers()); n > 8 {
		t.Fatalf("%d layers after 20 flushes with compaction", n)
	}
	for i := 15; i < 20; i++ {
		if got, want := fileContent(t, main, fmt.Sprintf("f%d", i%5)), fmt.Sprintf("%d-%0*d", i, 32<<10, i); got != want {
			t.Fatalf("f%d after compaction: %.20q", i%5, got)
		}
	}
	t.Logf("20 flushes -> %d layers, read depth %d", len(v.store.Layers()), v.readDepth())
}

// newestSnapshotBytes is the size of the newest Raft snapshot's state.
func newestSnapshotBytes(t *testing.T, dir string) int64 {
	t.Helper()
	metas, err := filepath.Glob(filepath.Join(dir, "raft", "snapshots", "snapshots", "*", "state.bin"))
	if err != nil || len(metas) == 0 {
		t.Fatalf("no raft snapshot under %s: %v", dir, err)
	}
	var newest string
	var newestIdx uint64
	for _, m := range metas {
		// term-index-millis
		parts := strings.Split(filepath.Base(filepath.Dir(m)), "-")
		if len(parts) != 3 {
			t.Fatalf("snapshot dir %s: not term-index-millis", m)
		}
		idx, err := strconv.ParseUint(parts[1], 10, 64)
		if err != nil {
			t.Fatalf("snapshot dir %s: %v", m, err)
		}
		if idx >= newestIdx {
			newest, newestIdx = m, idx
		}
	}
	fi, err := os.Stat(newest)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestSnapshotAfterMergeFlushesFirst: the snapshot that lets merged layers
// go does not carry a large memtable (it grew while the merges ran): that
// goes to a layer first. A small one is snapshotted as is.
func TestSnapshotAfterMergeFlushesFirst(t *testing.T) {
	ctx := context.Background()
	dir := testVolume(t)
	const flushBytes = 8 << 20
	v, main := open(t, dir, Options{FlushBytes: flushBytes})
	waitMem := func(atLeast int64) {
		t.Helper()
		waitUntil(t, fmt.Sprintf("a memtable of %d bytes", atLeast), func() bool {
			active, frozen := v.store.MemBytes()
			return active+frozen >= atLeast
		})
	}
	snapshotAfterMerge := func() (layersAdded int, snapBytes int64) {
		t.Helper()
		v.flushMu.Lock()
		defer v.flushMu.Unlock()
		before := len(v.store.Layers())
		if err := v.snapshotAfterMerge(ctx); err != nil {
			t.Fatal(err)
		}
		return len(v.store.Layers()) - before, newestSnapshotBytes(t, dir)
	}

	// A quarter of FlushBytes and more, under FlushBytes so the flusher
	// leaves it alone: flushed, then a small snapshot.
	bigContent := strings.Repeat("0123456789abcdef", (flushBytes/4+(512<<10))/16)
	writeFile(t, main, "big", bigContent)
	waitMem(int64(len(bigContent)))
	added, snap := snapshotAfterMerge()
	if added != 1 {
		t.Fatalf("a %d-byte memtable: %d layers added, want 1 (flushed before the snapshot)", len(bigContent), added)
	}
	if snap > 256<<10 {
		t.Fatalf("snapshot after the flush holds %d bytes, want the memtable left out", snap)
	}

	// A small memtable stays, and the snapshot carries it.
	small := strings.Repeat("x", 300<<10)
	writeFile(t, main, "small", small)
	waitMem(int64(len(small)))
	added, snap = snapshotAfterMerge()
	if added != 0 {
		t.Fatalf("a %d-byte memtable: %d layers added, want none", len(small), added)
	}
	if snap < int64(len(small)) {
		t.Fatalf("snapshot holds %d bytes, want the %d-byte memtable in it", snap, len(small))
	}

	// Both survive a crash: the layer through the log, the small file
	// through the snapshot.
	abandon(v)
	v, main = open(t, dir, Options{FlushBytes: flushBytes})
	defer v.Close()
	if got := fileContent(t, main, "big"); got != bigContent {
		t.Fatalf("big after reopening: %.20q (%d bytes)", got, len(got))
	}
	if got := fileContent(t, main, "small"); got != small {
		t.Fatalf("small after reopening: %.20q (%d bytes)", got, len(got))
	}
}
