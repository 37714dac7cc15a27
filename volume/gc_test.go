package volume

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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
