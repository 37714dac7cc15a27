// Package objstoretest is the ObjectStore conformance suite: every
// implementation (a directory, the layer-chunk cache, S3) passes the same
// checks, so the volume above cannot tell them apart. It imports only
// objstore.
package objstoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/neonfs/neonfs/objstore"
)

// Run checks the ObjectStore contract every implementation must
// keep, so the volume above cannot tell a directory from S3. s must be
// empty. Each subtest works under its own top-level name, so they can share
// one store.
func Run(t *testing.T, s objstore.ObjectStore) {
	ctx := context.Background()
	mustPut := func(t *testing.T, name string, data []byte) {
		t.Helper()
		if err := s.Put(ctx, name, data); err != nil {
			t.Fatalf("Put(%s): %v", name, err)
		}
	}

	t.Run("PutGet", func(t *testing.T) {
		for _, n := range []int{0, 1, 8191, 1<<20 + 3} {
			name := fmt.Sprintf("putget/obj-%d", n)
			data := RandomBytes(n)
			mustPut(t, name, data)
			got, err := s.Get(ctx, name)
			if err != nil {
				t.Fatalf("Get(%s): %v", name, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("Get(%s): %d bytes differ from the %d put", name, len(got), n)
			}
			size, err := s.Size(ctx, name)
			if err != nil || size != int64(n) {
				t.Fatalf("Size(%s) = %d, %v; want %d", name, size, err, n)
			}
			// Callers own returned slices: scribbling on one must not
			// change what the next Get returns.
			for i := range got {
				got[i] ^= 0xff
			}
			again, err := s.Get(ctx, name)
			if err != nil || !bytes.Equal(again, data) {
				t.Fatalf("Get(%s) after modifying an earlier result: %v, equal=%v", name, err, bytes.Equal(again, data))
			}
		}
		// Objects are immutable, but a retried upload puts the same bytes
		// again, and that must succeed.
		mustPut(t, "putget/obj-1", MustGet(t, s, "putget/obj-1"))
	})

	t.Run("GetRange", func(t *testing.T) {
		data := RandomBytes(10000)
		mustPut(t, "range/obj", data)
		tests := []struct {
			name    string
			off, n  int64
			corrupt bool // wants ErrCorrupt
			fail    bool // wants some other error
		}{
			{name: "all", off: 0, n: 10000},
			{name: "head", off: 0, n: 1},
			{name: "middle", off: 1234, n: 4321},
			{name: "tail", off: 9999, n: 1},
			{name: "empty", off: 500, n: 0},
			{name: "empty at end", off: 10000, n: 0},
			{name: "past end", off: 9000, n: 1001, corrupt: true},
			{name: "all plus one", off: 0, n: 10001, corrupt: true},
			{name: "starts at end", off: 10000, n: 1, corrupt: true},
			{name: "starts beyond end", off: 20000, n: 10, corrupt: true},
			{name: "empty beyond end", off: 10001, n: 0, corrupt: true},
			{name: "huge length", off: 0, n: 1 << 50, corrupt: true},
			{name: "overflowing range", off: 1 << 62, n: 1 << 62, corrupt: true},
			{name: "negative offset", off: -1, n: 1, fail: true},
			{name: "negative length", off: 0, n: -1, fail: true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := s.GetRange(ctx, "range/obj", tt.off, tt.n)
				switch {
				case tt.corrupt:
					if !errors.Is(err, objstore.ErrCorrupt) {
						t.Fatalf("err = %v, want ErrCorrupt", err)
					}
					if !strings.Contains(err.Error(), "range/obj") {
						t.Errorf("error %q does not name the object", err)
					}
				case tt.fail:
					if err == nil {
						t.Fatal("no error")
					}
				default:
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, data[tt.off:tt.off+tt.n]) {
						t.Fatalf("got %d bytes, not the %d at %d", len(got), tt.n, tt.off)
					}
				}
			})
		}
	})

	t.Run("NotFound", func(t *testing.T) {
		mustPut(t, "nf/dir/obj", []byte("x"))
		ops := []struct {
			name string
			op   func(name string) error
		}{
			{"Get", func(n string) error { _, err := s.Get(ctx, n); return err }},
			{"GetRange", func(n string) error { _, err := s.GetRange(ctx, n, 0, 1); return err }},
			{"GetRange0", func(n string) error { _, err := s.GetRange(ctx, n, 0, 0); return err }},
			{"Size", func(n string) error { _, err := s.Size(ctx, n); return err }},
			{"Delete", func(n string) error { return s.Delete(ctx, n) }},
		}
		for _, op := range ops {
			for _, name := range []string{"nf/missing", "nf/dir", "nf/nodir/obj"} {
				t.Run(op.name+"/"+name, func(t *testing.T) {
					err := op.op(name)
					if !errors.Is(err, objstore.ErrNotFound) {
						t.Fatalf("err = %v, want ErrNotFound", err)
					}
					if !strings.Contains(err.Error(), name) {
						t.Errorf("error %q does not name the object", err)
					}
				})
			}
		}
	})

	t.Run("InvalidNames", func(t *testing.T) {
		for _, name := range []string{"", "/abs", "a//b", "a/", "..", "../x", "a/../b", ".", "./a", ".hidden", "a/.tmp-1", "nul\x00", `back\slash`} {
			if err := s.Put(ctx, name, []byte("x")); err == nil {
				t.Errorf("Put(%q) succeeded", name)
			}
			if _, err := s.Get(ctx, name); err == nil {
				t.Errorf("Get(%q) succeeded", name)
			}
			if _, err := s.GetRange(ctx, name, 0, 1); err == nil {
				t.Errorf("GetRange(%q) succeeded", name)
			}
			if _, err := s.Size(ctx, name); err == nil {
				t.Errorf("Size(%q) succeeded", name)
			}
			if err := s.Delete(ctx, name); err == nil {
				t.Errorf("Delete(%q) succeeded", name)
			}
		}
	})

	t.Run("List", func(t *testing.T) {
		objs := map[string]int{
			"list/a":             1,
			"list/a-b":           2,
			"list/ab":            3,
			"list/b/x":           4,
			"list/b/y/z":         5,
			"list/layers/0001":   6,
			"list/layers/0002":   7,
			"list/layers/1000":   8,
			"list/layersextra/q": 9,
		}
		for name, n := range objs {
			mustPut(t, name, make([]byte, n))
		}
		tests := []struct {
			prefix string
			want   []string
		}{
			{"list/", []string{"list/a", "list/a-b", "list/ab", "list/b/x", "list/b/y/z", "list/layers/0001", "list/layers/0002", "list/layers/1000", "list/layersextra/q"}},
			{"list/a", []string{"list/a", "list/a-b", "list/ab"}},
			{"list/b/", []string{"list/b/x", "list/b/y/z"}},
			{"list/b/y", []string{"list/b/y/z"}},
			{"list/layers/", []string{"list/layers/0001", "list/layers/0002", "list/layers/1000"}},
			{"list/layers/000", []string{"list/layers/0001", "list/layers/0002"}},
			{"list/layers", []string{"list/layers/0001", "list/layers/0002", "list/layers/1000", "list/layersextra/q"}},
			{"list/layers/2", nil},
			{"list/missing/", nil},
			{"list/a/", nil},
			{"list/../", nil},
			{"list/.tmp", nil},
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
		// The whole store: every name sorted, this subtest's among them.
		all, err := s.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.IsSortedFunc(all, func(a, b objstore.ObjectInfo) int { return strings.Compare(a.Name, b.Name) }) {
			t.Fatalf("List(\"\") not sorted: %v", all)
		}
		n := 0
		for _, o := range all {
			if strings.HasPrefix(o.Name, "list/") {
				n++
			}
		}
		if n != len(objs) {
			t.Fatalf("List(\"\") holds %d of the %d list/ objects", n, len(objs))
		}
	})

	t.Run("Delete", func(t *testing.T) {
		mustPut(t, "del/a/b", []byte("x"))
		mustPut(t, "del/keep", []byte("y"))
		if err := s.Delete(ctx, "del/a/b"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, "del/a/b"); !errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("Get after Delete: %v", err)
		}
		if err := s.Delete(ctx, "del/a/b"); !errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("second Delete: %v", err)
		}
		got, err := s.List(ctx, "del/")
		if err != nil || len(got) != 1 || got[0].Name != "del/keep" {
			t.Fatalf("List after Delete = %v, %v; want only del/keep", got, err)
		}
		// The emptied directory (in stores that have them) takes new objects.
		mustPut(t, "del/a/c", []byte("z"))
	})

	t.Run("Concurrent", func(t *testing.T) {
		shared := RandomBytes(64 << 10)
		mustPut(t, "conc/shared", shared)
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 16 {
			wg.Add(2)
			go func() {
				defer wg.Done()
				name := fmt.Sprintf("conc/obj-%02d", i)
				data := RandomBytes(rand.IntN(100 << 10))
				if err := s.Put(ctx, name, data); err != nil {
					errs <- err
					return
				}
				got, err := s.Get(ctx, name)
				if err != nil {
					errs <- err
				} else if !bytes.Equal(got, data) {
					errs <- fmt.Errorf("%s: read back different bytes", name)
				}
			}()
			go func() {
				defer wg.Done()
				for range 4 {
					off := rand.Int64N(int64(len(shared)))
					n := rand.Int64N(int64(len(shared)) - off)
					got, err := s.GetRange(ctx, "conc/shared", off, n)
					if err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(got, shared[off:off+n]) {
						errs <- fmt.Errorf("GetRange(%d, %d): wrong bytes", off, n)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		got, err := s.List(ctx, "conc/obj-")
		if err != nil || len(got) != 16 {
			t.Fatalf("List after concurrent puts: %d objects, %v", len(got), err)
		}
	})

	t.Run("Streamed", func(t *testing.T) {
		data := RandomBytes(3<<20 + 17)
		f, err := s.CreateTemp(ctx, "streamed/obj")
		if err != nil {
			t.Fatal(err)
		}
		for b := data; len(b) > 0; {
			n := min(len(b), 1<<20)
			if _, err := f.Write(b[:n]); err != nil {
				t.Fatal(err)
			}
			b = b[n:]
		}
		if err := s.PutFile(ctx, "streamed/obj", f); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(f.Name()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("PutFile left its file %s: %v", f.Name(), err)
		}
		if got := MustGet(t, s, "streamed/obj"); !bytes.Equal(got, data) {
			t.Fatalf("streamed object: got %d bytes, want the %d written", len(got), len(data))
		}
		// ReadRange fills the caller's buffer when it is big enough.
		buf := make([]byte, 0, 1<<20)
		got, err := s.ReadRange(ctx, "streamed/obj", 100, 4096, buf)
		if err != nil || !bytes.Equal(got, data[100:4196]) {
			t.Fatalf("ReadRange: %d bytes, %v", len(got), err)
		}
		if &got[0] != &buf[:1][0] {
			t.Errorf("ReadRange did not use the caller's buffer")
		}
		if _, err := s.ReadRange(ctx, "streamed/obj", int64(len(data))-10, 11, buf); !errors.Is(err, objstore.ErrCorrupt) {
			t.Errorf("ReadRange past the end: %v, want ErrCorrupt", err)
		}
	})

	t.Run("Canceled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.Put(cctx, "canceled/x", []byte("x")); !errors.Is(err, context.Canceled) {
			t.Fatalf("Put: %v", err)
		}
		if _, err := s.Get(cctx, "putget/obj-1"); !errors.Is(err, context.Canceled) {
			t.Fatalf("Get: %v", err)
		}
		if _, err := s.GetRange(cctx, "putget/obj-1", 0, 1); !errors.Is(err, context.Canceled) {
			t.Fatalf("GetRange: %v", err)
		}
		if _, err := s.List(cctx, ""); !errors.Is(err, context.Canceled) {
			t.Fatalf("List: %v", err)
		}
	})
}

func MustGet(t *testing.T, s objstore.ObjectStore, name string) []byte {
	t.Helper()
	b, err := s.Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func RandomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}
