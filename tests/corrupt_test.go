package tests

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/objstore/s3/s3test"
)

// corruptStride divides the block size, so no marker line straddles two
// blocks. The random bytes between the lines keep blocks from compressing,
// so each line can be found verbatim in a layer object's block records.
const corruptStride = 1024

// corruptLine is the marker line at off in file name: unique in the
// volume, so a misdirected read shows up as wrong bytes, not as a lucky
// match.
func corruptLine(name string, off int) []byte {
	return fmt.Appendf(nil, "%-8s %022d\n", name, off)
}

func corruptContent(name string, size int) []byte {
	r := rand.New(rand.NewPCG(uint64(crc32.ChecksumIEEE([]byte(name))), 1))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	for off := 0; off < size; off += corruptStride {
		copy(b[off:], corruptLine(name, off))
	}
	return b
}

// corruptVolume is a stopped volume whose files all live in layer objects.
type corruptVolume struct {
	n       *neonfsTarget
	files   map[string][]byte
	objects string // directory holding layers/*.layer
}

// newCorruptVolume writes files on a fresh volume (on a local directory or
// on S3) and stops it cleanly, which flushes the memtable into layers, so
// that the next mount reads every block from a layer object.
func newCorruptVolume(t *testing.T, backend string) *corruptVolume {
	t.Helper()
	var initArgs []string
	v := &corruptVolume{files: map[string][]byte{}}
	if backend == "s3" {
		srv := s3test.NewServer(t)
		cfg := srv.Config()
		initArgs = []string{"--s3", "s3://" + cfg.Bucket + "/vol", "--s3-endpoint", cfg.Endpoint, "--s3-tls=false", "--s3-credentials", cfg.CredentialsFile}
		v.objects = filepath.Join(srv.Dir(), cfg.Bucket, "vol")
	}
	v.n = newNeonfsTargetWith(t, initArgs, []string{"--flush-mb", "4"})
	if v.objects == "" {
		v.objects = filepath.Join(v.n.data, "objects")
	}
	for _, name := range []string{"intact", "victim"} {
		v.files[name] = corruptContent(name, 3<<20)
		f, err := os.Create(filepath.Join(v.n.mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(v.files[name]); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	v.n.Stop(t)
	// The layer cache holds good copies of what this node wrote: read the
	// object store like a node that did not write it.
	os.RemoveAll(filepath.Join(v.n.data, "cache"))
	return v
}

// find returns the layer object holding the only copy of pattern, and
// where in it.
func (v *corruptVolume) find(t *testing.T, pattern []byte) (string, int) {
	t.Helper()
	objs, _ := filepath.Glob(filepath.Join(v.objects, "layers", "*.layer"))
	where, at := "", -1
	for _, o := range objs {
		b, err := os.ReadFile(o)
		if err != nil {
			t.Fatal(err)
		}
		if c := bytes.Count(b, pattern); c > 1 || c == 1 && where != "" {
			t.Fatalf("%q is stored more than once; cannot corrupt its only copy", pattern)
		} else if c == 1 {
			where, at = o, bytes.Index(b, pattern)
		}
	}
	if where == "" {
		t.Fatalf("%q is in none of the %d layer objects under %s", pattern, len(objs), v.objects)
	}
	return where, at
}

// check reads file name in block-sized preads: each must return the bytes
// written or EIO, never other bytes. It returns the offsets that got EIO.
func (v *corruptVolume) check(t *testing.T, name string) []int64 {
	t.Helper()
	f, err := os.Open(filepath.Join(v.n.mnt, name))
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer f.Close()
	want := v.files[name]
	var failed []int64
	buf := make([]byte, blockstore.BlockSize)
	for off := 0; off < len(want); off += len(buf) {
		k, err := f.ReadAt(buf, int64(off))
		switch {
		case errors.Is(err, syscall.EIO):
			failed = append(failed, int64(off))
		case err != nil && err != io.EOF:
			t.Fatalf("read %s at %d: %v, want the data or EIO", name, off, err)
		case !bytes.Equal(buf[:k], want[off:min(off+len(buf), len(want))]):
			t.Fatalf("read %s at %d: %d bytes that differ from those written", name, off, k)
		}
	}
	return failed
}

// logNames fails unless the daemon's log has a line naming the corrupt
// object, and no panic.
func (v *corruptVolume) logNames(t *testing.T, obj string) {
	t.Helper()
	log, _ := os.ReadFile(v.n.logPath)
	if bytes.Contains(log, []byte("panic")) {
		t.Fatalf("the daemon panicked:\n%s", tailFile(v.n.logPath, 4<<10))
	}
	name := "layers/" + filepath.Base(obj)
	for _, l := range strings.Split(string(log), "\n") {
		if strings.Contains(l, name) && strings.Contains(l, "corrupt") {
			t.Logf("log: %s", l)
			return
		}
	}
	t.Fatalf("no log line names the corrupt object %s:\n%s", name, tailFile(v.n.logPath, 4<<10))
}

// TestCorruptObject damages the layer object holding one block of a file:
// reads of that block get EIO and a log line naming the object, other
// blocks and files read correctly, the daemon keeps serving, and once the
// object is repaired everything reads back. A truncated object (its footer
// gone, so nothing in it can be trusted) is refused at mount, by name.
func TestCorruptObject(t *testing.T) {
	requireE2E(t)
	if targetKind() != "neonfs" {
		t.Skip("tests neonfs's layer objects")
	}
	const victimOff = 1<<20 + 5*corruptStride // inside block 128
	for _, backend := range []string{"dir", "s3"} {
		t.Run(backend+"/bitflip", func(t *testing.T) {
			v := newCorruptVolume(t, backend)
			obj, at := v.find(t, corruptLine("victim", victimOff))
			orig, _ := os.ReadFile(obj)
			bad := bytes.Clone(orig)
			bad[at+12] ^= 0x01 // a digit: the damage is one plausible byte
			if err := os.WriteFile(obj, bad, 0o600); err != nil {
				t.Fatal(err)
			}

			v.n.Restart(t)
			if failed := v.check(t, "intact"); len(failed) > 0 {
				t.Fatalf("intact file: EIO at %v", failed)
			}
			for range 2 { // the error is not cached as zeros or as a hole
				failed := v.check(t, "victim")
				t.Logf("victim: EIO at offsets %v", failed)
				hit := false
				for _, off := range failed {
					hit = hit || off == victimOff/blockstore.BlockSize*blockstore.BlockSize
					if off == 0 {
						t.Fatal("victim: EIO at offset 0, far from the damaged block")
					}
				}
				if !hit {
					t.Fatalf("victim: read of the damaged block did not get EIO (EIO at %v)", failed)
				}
			}
			v.logNames(t, obj)
			// The daemon still serves: a new file round-trips.
			v.files["after"] = corruptContent("after", 1<<20)
			if err := os.WriteFile(filepath.Join(v.n.mnt, "after"), v.files["after"], 0o644); err != nil {
				t.Fatal(err)
			}
			if failed := v.check(t, "after"); len(failed) > 0 {
				t.Fatalf("new file: EIO at %v", failed)
			}
			v.n.Stop(t)

			// Repaired, the object serves every byte again.
			if err := os.WriteFile(obj, orig, 0o600); err != nil {
				t.Fatal(err)
			}
			v.n.Restart(t)
			for name := range v.files {
				if failed := v.check(t, name); len(failed) > 0 {
					t.Fatalf("%s after repair: EIO at %v", name, failed)
				}
			}
			v.n.Stop(t)
		})

		t.Run(backend+"/truncated", func(t *testing.T) {
			v := newCorruptVolume(t, backend)
			obj, _ := v.find(t, corruptLine("victim", victimOff))
			st, err := os.Stat(obj)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(obj, st.Size()/2); err != nil {
				t.Fatal(err)
			}
			// Without its footer and index no block of the object can be
			// verified, and the namespace itself is loaded from layers, so
			// the mount fails and says which object is bad.
			code, out := runNeonfs(t, append([]string{"mount", "--data", v.n.data}, append(v.n.extra, v.n.mnt)...)...)
			if isMounted(v.n.mnt) {
				_ = forceUnmount(v.n.mnt)
			}
			name := "layers/" + filepath.Base(obj)
			if code == 0 || strings.Contains(out, "panic") || !strings.Contains(out, name) || !strings.Contains(out, "corrupt") {
				t.Fatalf("mount with %s truncated: exit %d, want a failure naming it\n%s", name, code, out)
			}
			t.Logf("mount refused: %s", strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]))
		})
	}
}
