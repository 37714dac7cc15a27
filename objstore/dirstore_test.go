package objstore

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func newTestDirStore(t *testing.T) *DirStore {
	t.Helper()
	s, err := NewDirStore(filepath.Join(t.TempDir(), "objects"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDirStoreNew(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		dir     string
		wantErr bool
	}{
		{"existing", base, false},
		{"created", filepath.Join(base, "a", "b"), false},
		{"is a file", file, true},
		{"under a file", filepath.Join(file, "x"), true},
		{"empty", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewDirStore(tt.dir)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("NewDirStore(%q) succeeded", tt.dir)
				}
				if tt.dir != "" && !bytes.Contains([]byte(err.Error()), []byte(tt.dir)) {
					t.Errorf("error %q does not name %s", err, tt.dir)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(s.Dir())
			if err != nil || !fi.IsDir() {
				t.Fatalf("dir not created: %v", err)
			}
			if tt.name == "created" && fi.Mode().Perm() != 0o700 {
				t.Errorf("mode %v, want 0700", fi.Mode().Perm())
			}
		})
	}
}

func TestDirStorePutGet(t *testing.T) {
	ctx := context.Background()
	s := newTestDirStore(t)
	tests := []struct {
		name string
		data []byte
	}{
		{"plain", []byte("hello")},
		{"empty", nil},
		{"layers/0001-0002.layer", bytes.Repeat([]byte{7}, 100000)},
		{"a/b/c/d", []byte("deep")},
		{"with space and ünïcode", []byte("x")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Put(ctx, tt.name, tt.data); err != nil {
				t.Fatal(err)
			}
			got, err := s.Get(ctx, tt.name)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.data) {
				t.Fatalf("Get = %d bytes, want %d", len(got), len(tt.data))
			}
			size, err := s.Size(ctx, tt.name)
			if err != nil || size != int64(len(tt.data)) {
				t.Fatalf("Size = %d, %v; want %d", size, err, len(tt.data))
			}
			// Idempotent retry of the same Put.
			if err := s.Put(ctx, tt.name, tt.data); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestDirStoreGetRange(t *testing.T) {
	ctx := context.Background()
	s := newTestDirStore(t)
	data := []byte("0123456789")
	if err := s.Put(ctx, "obj", data); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		off, n  int64
		want    string
		corrupt bool
		fail    bool
	}{
		{"all", 0, 10, "0123456789", false, false},
		{"middle", 3, 4, "3456", false, false},
		{"tail", 7, 3, "789", false, false},
		{"empty at end", 10, 0, "", false, false},
		{"past end", 8, 3, "", true, false},
		{"offset past end", 11, 0, "", true, false},
		{"huge length", 0, 1 << 62, "", true, false},
		{"negative offset", -1, 2, "", false, true},
		{"negative length", 0, -2, "", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.GetRange(ctx, "obj", tt.off, tt.n)
			switch {
			case tt.corrupt:
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("err = %v, want ErrCorrupt", err)
				}
			case tt.fail:
				if err == nil {
					t.Fatal("no error")
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != tt.want {
					t.Fatalf("got %q, want %q", got, tt.want)
				}
			}
		})
	}
}

func TestDirStoreNotFound(t *testing.T) {
	ctx := context.Background()
	s := newTestDirStore(t)
	if err := s.Put(ctx, "dir/obj", []byte("x")); err != nil {
		t.Fatal(err)
	}
	ops := []struct {
		name string
		op   func(name string) error
	}{
		{"Get", func(n string) error { _, err := s.Get(ctx, n); return err }},
		{"GetRange", func(n string) error { _, err := s.GetRange(ctx, n, 0, 1); return err }},
		{"Size", func(n string) error { _, err := s.Size(ctx, n); return err }},
		{"Delete", func(n string) error { return s.Delete(ctx, n) }},
	}
	names := []string{
		"missing",
		"dir",         // a directory is not an object
		"dir/obj/sub", // a prefix is an object, not a directory
		"nodir/obj",
	}
	for _, op := range ops {
		for _, name := range names {
			t.Run(op.name+"/"+name, func(t *testing.T) {
				err := op.op(name)
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("err = %v, want ErrNotFound", err)
				}
				if !bytes.Contains([]byte(err.Error()), []byte(name)) {
					t.Errorf("error %q does not name the object", err)
				}
			})
		}
	}
}

func TestDirStoreInvalidNames(t *testing.T) {
	ctx := context.Background()
	s := newTestDirStore(t)
	for _, name := range []string{"", "/abs", "a//b", "a/", "..", "../x", "a/../b", ".", "./a", ".hidden", "a/.tmp-1", "nul\x00", `back\slash`} {
		t.Run(name, func(t *testing.T) {
			if err := s.Put(ctx, name, []byte("x")); err == nil {
				t.Errorf("Put(%q) succeeded", name)
			}
			if _, err := s.Get(ctx, name); err == nil {
				t.Errorf("Get(%q) succeeded", name)
			}
			if err := s.Delete(ctx, name); err == nil {
				t.Errorf("Delete(%q) succeeded", name)
			}
		})
	}
	// Nothing escaped the directory.
	if ents, err := os.ReadDir(filepath.Dir(s.Dir())); err != nil || len(ents) != 1 {
		t.Fatalf("parent of store holds %v, %v", ents, err)
	}
}

func TestDirStoreDelete(t *testing.T) {
	ctx := context.Background()
	s := newTestDirStore(t)
	if err := s.Put(ctx, "a/b", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "a/b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "a/b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete: %v", err)
	}
	if err := s.Delete(ctx, "a/b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete: %v", err)
	}
	// The emptied directory can take new objects.
	if err := s.Put(ctx, "a/c", []byte("y")); err != nil {
		t.Fatal(err)
	}
}

func TestDirStoreList(t *testing.T) {
	ctx := context.Background()
	s := newTestDirStore(t)
	objs := map[string]int{
		"a":             1,
		"a-b":           2,
		"ab":            3,
		"b/x":           4,
		"b/y/z":         5,
		"layers/0001":   6,
		"layers/0002":   7,
		"layers/1000":   8,
		"layersextra/q": 9,
	}
	for name, n := range objs {
		if err := s.Put(ctx, name, make([]byte, n)); err != nil {
			t.Fatal(err)
		}
	}
	// Leftovers of crashed Puts must never be listed.
	for _, tmp := range []string{".tmp-123", "layers/.tmp-456", "b/y/.tmp-789"} {
		if err := os.WriteFile(filepath.Join(s.Dir(), filepath.FromSlash(tmp)), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a", "a-b", "ab", "b/x", "b/y/z", "layers/0001", "layers/0002", "layers/1000", "layersextra/q"}},
		{"a", []string{"a", "a-b", "ab"}},
		{"b/", []string{"b/x", "b/y/z"}},
		{"b/y", []string{"b/y/z"}},
		{"layers/", []string{"layers/0001", "layers/0002", "layers/1000"}},
		{"layers/000", []string{"layers/0001", "layers/0002"}},
		{"layers", []string{"layers/0001", "layers/0002", "layers/1000", "layersextra/q"}},
		{"layers/2", nil},
		{"missing/", nil},
		{"a/", nil}, // "a" is an object, not a directory
		{"../", nil},
		{".tmp", nil},
		{"layers/.tmp", nil},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			got, err := s.List(ctx, tt.prefix)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, o := range got {
				names = append(names, o.Name)
				if o.Size != int64(objs[o.Name]) {
					t.Errorf("%s: size %d, want %d", o.Name, o.Size, objs[o.Name])
				}
			}
			if !slices.Equal(names, tt.want) {
				t.Fatalf("List(%q) = %q, want %q", tt.prefix, names, tt.want)
			}
		})
	}
}

func TestDirStoreNoTempLeftovers(t *testing.T) {
	ctx := context.Background()
	s := newTestDirStore(t)
	for _, name := range []string{"x", "d/y", "d/e/z"} {
		if err := s.Put(ctx, name, []byte(name)); err != nil {
			t.Fatal(err)
		}
	}
	err := filepath.WalkDir(s.Dir(), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if len(d.Name()) > 0 && d.Name()[0] == '.' {
			t.Errorf("leftover temp file %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDirStoreCanceled(t *testing.T) {
	s := newTestDirStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Put(ctx, "x", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put: %v", err)
	}
	if _, err := s.Get(ctx, "x"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get: %v", err)
	}
}

// TestDirStoreStaging: an object written through CreateTemp and PutFile
// reads back like a Put one; the temporary files of interrupted uploads
// are removed once stale, and only then.
func TestDirStoreStaging(t *testing.T) {
	ctx := context.Background()
	s, err := NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.CreateTemp(ctx, "layers/a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("staged")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutFile(ctx, "layers/a", f); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Get(ctx, "layers/a"); err != nil || string(b) != "staged" {
		t.Fatalf("get = %q, %v", b, err)
	}
	if _, err := s.CreateTemp(ctx, "../escape"); err == nil {
		t.Errorf("CreateTemp accepted a name outside the store")
	}
	stale, err := s.CreateTemp(ctx, "layers/b")
	if err != nil {
		t.Fatal(err)
	}
	stale.Write(make([]byte, 100))
	stale.Close()
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale.Name(), old, old); err != nil {
		t.Fatal(err)
	}
	fresh, err := s.CreateTemp(ctx, "layers/c")
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	n, bytes, err := s.RemoveStaleTemps(time.Hour)
	if err != nil || n != 1 || bytes != 100 {
		t.Fatalf("RemoveStaleTemps = %d, %d, %v; want 1 file of 100 bytes", n, bytes, err)
	}
	if _, err := os.Stat(stale.Name()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale temporary file still there: %v", err)
	}
	if _, err := os.Stat(fresh.Name()); err != nil {
		t.Errorf("fresh temporary file removed: %v", err)
	}
	if objs, err := s.List(ctx, ""); err != nil || len(objs) != 1 {
		t.Errorf("objects after cleanup: %v, %v", objs, err)
	}
}

// TestDirStorePrefetch: prefetching an object queues its reads and leaves
// it readable; a missing object is an error naming it.
func TestDirStorePrefetch(t *testing.T) {
	s, err := NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := bytes.Repeat([]byte("layer"), 100000)
	if err := s.Put(ctx, "layers/a", data); err != nil {
		t.Fatal(err)
	}
	var p Prefetcher = s
	if err := p.Prefetch("layers/a"); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetRange(ctx, "layers/a", 5, 10)
	if err != nil || !bytes.Equal(got, data[5:15]) {
		t.Fatalf("read after prefetch: %q, %v", got, err)
	}
	if err := p.Prefetch("layers/missing"); err == nil || !strings.Contains(err.Error(), "layers/missing") {
		t.Fatalf("prefetch of a missing object: %v, want an error naming it", err)
	}
}
