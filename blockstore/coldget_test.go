package blockstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/neonfs/neonfs/objstore"
)

// TestColdGetProfile is a profiling tool, not a check: it times the parts
// of cold block reads on a real layer set (a volume's objects directory,
// its daemon stopped): opening each layer, the index search across the
// layers, the ranged read (DirStore, read-around included), the record
// check and the decompression, for NEONFS_COLD_READS (2000) random blocks
// of one file, each once; then whole Store.Gets with a fresh block cache,
// as a restarted daemon does, and again with it warm. Root only (it drops
// the page cache); skipped unless NEONFS_COLD_OBJECTS names the directory
// and NEONFS_COLD_INO the file's inode (stat -c %i through the mount).
//
//	NEONFS_COLD_OBJECTS=/var/tmp/x/vol/objects NEONFS_COLD_INO=1234 \
//		go test ./blockstore -run TestColdGetProfile -v
func TestColdGetProfile(t *testing.T) {
	dir, inoS := os.Getenv("NEONFS_COLD_OBJECTS"), os.Getenv("NEONFS_COLD_INO")
	if dir == "" || inoS == "" {
		t.Skip("NEONFS_COLD_OBJECTS and NEONFS_COLD_INO not set")
	}
	ino, err := strconv.ParseUint(inoS, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(os.Getenv("NEONFS_COLD_READS"))
	if n == 0 {
		n = 2000
	}
	ctx := context.Background()
	ds, err := objstore.NewDirStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := ds.List(ctx, "layers/")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range infos {
		if strings.HasSuffix(o.Name, ".layer") {
			names = append(names, o.Name)
		}
	}
	slices.Sort(names) // oldest first: names start with the min LSN
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Fatalf("drop caches: %v", err)
	}
	var layers []*Layer
	for _, name := range names {
		t0 := time.Now()
		l, err := OpenLayer(ctx, ds, name, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("open %s: %d keys, index %d KiB: %v", name, l.meta.Keys, len(l.index)>>10, time.Since(t0))
		layers = append(layers, l)
	}
	// The branch holding the file: the one whose block 0 exists.
	var branch uint32
	for b := uint32(0); b < 8; b++ {
		for _, l := range layers {
			if _, ok, _ := l.Get(ctx, BlockKey(b, ino, 0), ^uint64(0)); ok {
				branch = b
			}
		}
	}
	var blocks uint64
	for _, l := range layers {
		l.Keys(BlockKey(branch, ino, 0), BlockKey(branch, ino+1, 0), 0, ^uint64(0), func(k Key) error {
			if k.Kind == KindBlock {
				blocks = max(blocks, k.Block+1)
			}
			return nil
		})
	}
	t.Logf("branch %d ino %d: %d blocks", branch, ino, blocks)
	var search, fetch, check, inflate, total []time.Duration
	var recBytes, found, inLayers int
	var versions [10]int
	perm := rand.New(rand.NewPCG(1, 2)).Perm(int(blocks))[:min(n, int(blocks))]
	for _, b := range perm {
		key := BlockKey(branch, ino, uint64(b))
		t0 := time.Now()
		var ts time.Duration
		for i := len(layers) - 1; i >= 0; i-- {
			l := layers[i]
			s0 := time.Now()
			j := l.search(key)
			if j == len(l.pos) {
				ts += time.Since(s0)
				continue
			}
			e := l.entry(j)
			ts += time.Since(s0)
			if e.key.compareKey(key) != 0 {
				continue
			}
			inLayers += len(layers) - i
			f0 := time.Now()
			rec, err := l.fetch(ctx, e.off, uint64(e.n), nil)
			if err != nil {
				t.Fatal(err)
			}
			f1 := time.Now()
			vs, err := l.decodeRecord(&e, rec)
			if err != nil {
				t.Fatal(err)
			}
			f2 := time.Now()
			if _, err := l.inflate(&e, vs[0], true); err != nil {
				t.Fatal(err)
			}
			f3 := time.Now()
			fetch, check, inflate = append(fetch, f1.Sub(f0)), append(check, f2.Sub(f1)), append(inflate, f3.Sub(f2))
			versions[min(len(vs), 9)]++
			recBytes += int(e.n)
			found++
			break
		}
		search = append(search, ts)
		total = append(total, time.Since(t0))
	}
	med := func(d []time.Duration) string {
		if len(d) == 0 {
			return "-"
		}
		s := slices.Clone(d)
		slices.Sort(s)
		return fmt.Sprintf("median %v p90 %v", s[len(s)/2], s[len(s)*9/10])
	}
	t.Logf("%d reads, %d found, mean record %d bytes, mean layers looked at until found %.2f", len(perm), found, recBytes/max(found, 1), float64(inLayers)/float64(max(found, 1)))
	t.Logf("records by versions (1..8, 9+): %v", versions[1:])
	t.Logf("index search (all layers): %s", med(search))
	t.Logf("ranged read (pread):       %s", med(fetch))
	t.Logf("record check (crc, parse): %s", med(check))
	t.Logf("decompress (s2):           %s", med(inflate))
	t.Logf("total:                     %s", med(total))

	// The same through a Store with a fresh block cache, as a daemon
	// after a restart reads: other blocks, page cache dropped again.
	st := NewStore(ds, 256<<20)
	for _, l := range layers {
		st.AddLayer(l.Meta())
	}
	lineage := []ReadPoint{{Branch: branch, MaxLSN: ^uint64(0)}}
	if _, _, err := st.Get(ctx, BlockKey(branch, ino, 0), lineage); err != nil { // opens the layers
		t.Fatal(err)
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Fatal(err)
	}
	total = total[:0]
	perm = rand.New(rand.NewPCG(3, 4)).Perm(int(blocks))[:min(n, int(blocks))]
	for _, b := range perm {
		t0 := time.Now()
		if _, _, err := st.Get(ctx, BlockKey(branch, ino, uint64(b)), lineage); err != nil {
			t.Fatal(err)
		}
		total = append(total, time.Since(t0))
	}
	hits, misses := st.CacheStats()
	t.Logf("Store.Get, fresh block cache: %s (cache hits %d, misses %d)", med(total), hits, misses)
	total = total[:0]
	for _, b := range perm {
		t0 := time.Now()
		if _, _, err := st.Get(ctx, BlockKey(branch, ino, uint64(b)), lineage); err != nil {
			t.Fatal(err)
		}
		total = append(total, time.Since(t0))
	}
	t.Logf("Store.Get again (block cache warm): %s", med(total))
}
