package volume

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func restore(t *testing.T, objects string) (string, RestoreResult) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "restored")
	res, err := Restore(context.Background(), dir, RestoreOptions{Objects: objects})
	if err != nil {
		t.Fatal(err)
	}
	return dir, res
}

func TestRestoreFromObjectStore(t *testing.T) {
	ctx := context.Background()
	dir := testVolume(t)
	v, main := open(t, dir, Options{})
	writeFile(t, main, "a", "main-1")
	if _, err := v.CreateBranch(ctx, "dev", "main", ""); err != nil {
		t.Fatal(err)
	}
	dev, err := v.Mount(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dev, "b", "dev-1")
	writeFile(t, main, "a", "main-2")
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}

	rdir, res := restore(t, filepath.Join(dir, "objects"))
	if res.Layers == 0 || len(res.Branches) != 2 {
		t.Fatalf("restore result %+v: want layers and two branches", res)
	}
	r, rmain := open(t, rdir, Options{})
	rdev, err := r.Mount(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		f          *BranchFS
		name, want string
	}{{rmain, "a", "main-2"}, {rmain, "b", "<missing>"}, {rdev, "a", "main-1"}, {rdev, "b", "dev-1"}} {
		if got := fileContent(t, c.f, c.name); got != c.want {
			t.Errorf("restored %s/%s = %q, want %q", c.f.Name(), c.name, got, c.want)
		}
	}
	// The restored log goes on after the manifest's LSN, across a reopen.
	writeFile(t, rmain, "c", "after-restore")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r, rmain = open(t, rdir, Options{})
	if got := fileContent(t, rmain, "c"); got != "after-restore" {
		t.Errorf("after reopen: c = %q", got)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreFencesOldWriter: once a restored copy claims the store, the
// original volume's later flushes are not published, so a second restore
// sees the copy's state.
func TestRestoreFencesOldWriter(t *testing.T) {
	dir := testVolume(t)
	objects := filepath.Join(dir, "objects")
	v, main := open(t, dir, Options{})
	writeFile(t, main, "a", "old-1")
	if err := v.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}

	rdir, _ := restore(t, objects)
	r, rmain := open(t, rdir, Options{})
	writeFile(t, rmain, "a", "copy-1")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	writeFile(t, main, "a", "old-2")
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if v.fencedBy.Load() <= v.gen {
		t.Fatalf("old writer (generation %d) not fenced", v.gen)
	}
	r2, _ := restore(t, objects)
	r, rmain = open(t, r2, Options{})
	defer r.Close()
	if got := fileContent(t, rmain, "a"); got != "copy-1" {
		t.Fatalf("second restore: a = %q, want the copy's %q", got, "copy-1")
	}
}

func TestRestoreBadStore(t *testing.T) {
	ctx := context.Background()
	empty := t.TempDir()
	if _, err := Restore(ctx, filepath.Join(t.TempDir(), "r"), RestoreOptions{Objects: empty}); err == nil || !strings.Contains(err.Error(), "holds no manifest") {
		t.Fatalf("empty store: err = %v", err)
	}

	dir := testVolume(t)
	v, main := open(t, dir, Options{})
	writeFile(t, main, "a", "x")
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	objects := filepath.Join(dir, "objects")
	manifests, _ := filepath.Glob(filepath.Join(objects, "manifests", "*.manifest"))
	layers, _ := filepath.Glob(filepath.Join(objects, "layers", "*.layer"))
	if len(manifests) != 1 || len(layers) == 0 {
		t.Fatalf("manifests %v, layers %v: want one manifest and some layers", manifests, layers)
	}

	// A missing layer is named.
	hidden := layers[0] + ".hidden"
	os.Rename(layers[0], hidden)
	_, err := Restore(ctx, filepath.Join(t.TempDir(), "r"), RestoreOptions{Objects: objects})
	if err == nil || !strings.Contains(err.Error(), filepath.Base(layers[0])) {
		t.Fatalf("missing layer: err = %v, want it named", err)
	}
	os.Rename(hidden, layers[0])

	// A corrupted manifest is refused, by name.
	b, _ := os.ReadFile(manifests[0])
	b[len(b)/2] ^= 0xff
	os.WriteFile(manifests[0], b, 0o600)
	_, err = Restore(ctx, filepath.Join(t.TempDir(), "r"), RestoreOptions{Objects: objects})
	if err == nil || !strings.Contains(err.Error(), filepath.Base(manifests[0])) || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("corrupt manifest: err = %v", err)
	}
}
