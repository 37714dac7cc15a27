// Command coldread is bench/coldread.sh's reader: it times single reads of
// BS bytes (8 KiB, a Postgres page) at random BS-aligned offsets of one
// file, each offset once, one read at a time, and prints the latency
// distribution. The file is opened with posix_fadvise(POSIX_FADV_RANDOM),
// so the kernel reads no more than each read asks for: on a file whose
// pages were just dropped every read is a page-cache miss, and what it
// costs is what one cold Postgres page read costs on that file system.
//
//	coldread [-n 2000] [-bs 8192] [-seed 1] [-first 100] FILE
//
// One line on stdout, key=value, times in µs:
//
//	reads=2000 blocks=32787 first_us=... median_us=... p90_us=... p99_us=... mean_us=... first100_median_us=...
//
// first_us is the very first read (on a fresh neonfs mount it includes
// opening the layers it touches); firstK_median_us is the median of the
// first -first reads, before any read-around a file system does has had
// a chance to cover later offsets. The same seed gives the same offsets,
// so two file systems holding the same file are read at the same places.
package main

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	n := flag.Int("n", 2000, "reads (at most one per block of the file)")
	bs := flag.Int("bs", 8192, "read size and alignment, bytes")
	seed := flag.Uint64("seed", 1, "seed of the offsets")
	first := flag.Int("first", 100, "also report the median of this many first reads")
	flag.Parse()
	if flag.NArg() != 1 || *n < 1 || *bs < 1 || *first < 1 {
		fmt.Fprintln(os.Stderr, "usage: coldread [-n reads] [-bs bytes] [-seed n] [-first k] FILE")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *n, *bs, *seed, *first); err != nil {
		fmt.Fprintln(os.Stderr, "coldread:", err)
		os.Exit(1)
	}
}

func run(path string, n, bs int, seed uint64, first int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	blocks := int(fi.Size() / int64(bs))
	if blocks == 0 {
		return fmt.Errorf("%s: %d bytes, shorter than one %d-byte block", path, fi.Size(), bs)
	}
	fd := int(f.Fd())
	if err := unix.Fadvise(fd, 0, 0, unix.FADV_RANDOM); err != nil {
		return fmt.Errorf("posix_fadvise(RANDOM): %w", err)
	}
	n = min(n, blocks)
	order := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)).Perm(blocks)[:n]
	buf := make([]byte, bs)
	lat := make([]float64, n)
	for i, b := range order {
		t0 := time.Now()
		got, err := unix.Pread(fd, buf, int64(b)*int64(bs))
		d := time.Since(t0)
		if err != nil {
			return fmt.Errorf("pread block %d: %w", b, err)
		}
		if got != bs {
			return errors.New("short read")
		}
		lat[i] = float64(d.Nanoseconds()) / 1e3
	}
	firstUs := lat[0]
	k := min(first, n)
	head := slices.Clone(lat[:k])
	slices.Sort(head)
	var sum float64
	for _, v := range lat {
		sum += v
	}
	slices.Sort(lat)
	fmt.Printf("reads=%d blocks=%d first_us=%.1f median_us=%.1f p90_us=%.1f p99_us=%.1f mean_us=%.1f first%d_median_us=%.1f\n",
		n, blocks, firstUs, pct(lat, 50), pct(lat, 90), pct(lat, 99), sum/float64(n), k, pct(head, 50))
	return nil
}

// pct is the p-th percentile of sorted s (nearest rank).
func pct(s []float64, p float64) float64 {
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}
