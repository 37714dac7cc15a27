package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/volume/fsm"
)

// A name over NAME_MAX is refused at every entry point with ENAMETOOLONG,
// before anything reaches the log, and the volume goes on working.
func TestLongNamesRefusedAtEveryEntryPoint(t *testing.T) {
	dir := testVolume(t)
	v, f := open(t, dir, Options{})
	defer func() { v.Close() }()
	file := writeFile(t, f, "f", "data")
	_, _, errno := f.Create(rootIno, "d", syscall.S_IFDIR|0o755, 0, 0, 0, "")
	must(t, errno)
	must(t, f.Sync())

	max := strings.Repeat("a", 255)
	long := strings.Repeat("a", 256)
	before := v.commit.CommitStats()
	lastBefore, _ := v.log.Stats()
	calls := []struct {
		name string
		call func() syscall.Errno
	}{
		{"create", func() syscall.Errno {
			_, _, e := f.Create(rootIno, long, syscall.S_IFREG|0o644, 0, 0, 0, "")
			return e
		}},
		{"mkdir", func() syscall.Errno {
			_, _, e := f.Create(rootIno, long, syscall.S_IFDIR|0o755, 0, 0, 0, "")
			return e
		}},
		{"mknod", func() syscall.Errno {
			_, _, e := f.Create(rootIno, long, syscall.S_IFIFO|0o644, 0, 0, 0, "")
			return e
		}},
		{"symlink", func() syscall.Errno {
			_, _, e := f.Create(rootIno, long, syscall.S_IFLNK|0o777, 0, 0, 0, "f")
			return e
		}},
		{"link", func() syscall.Errno { _, e := f.Link(file, rootIno, long); return e }},
		{"rename to", func() syscall.Errno { return f.Rename(rootIno, "f", rootIno, long, 0) }},
		{"rename from", func() syscall.Errno { return f.Rename(rootIno, long, rootIno, "g", 0) }},
		{"lookup", func() syscall.Errno { _, _, e := f.Lookup(rootIno, long); return e }},
		{"unlink", func() syscall.Errno { return f.Remove(rootIno, long, false) }},
		{"rmdir", func() syscall.Errno { return f.Remove(rootIno, long, true) }},
		{"1024-byte name", func() syscall.Errno {
			_, e := f.Link(file, rootIno, strings.Repeat("b", 1024))
			return e
		}},
		{"symlink target over PATH_MAX", func() syscall.Errno {
			_, _, e := f.Create(rootIno, "s", syscall.S_IFLNK|0o777, 0, 0, 0, strings.Repeat("t", MaxSymlinkLen+1))
			return e
		}},
	}
	for _, c := range calls {
		if errno := c.call(); errno != syscall.ENAMETOOLONG {
			t.Errorf("%s: errno %v, want ENAMETOOLONG", c.name, errno)
		}
	}
	must(t, f.Sync())
	if after := v.commit.CommitStats(); after.Entries != before.Entries {
		t.Errorf("refused calls committed %d log entries", after.Entries-before.Entries)
	}
	if last, _ := v.log.Stats(); last != lastBefore {
		t.Errorf("log grew from %d to %d entries", lastBefore, last)
	}
	ents, errno := f.Readdir(rootIno)
	must(t, errno)
	for _, e := range ents {
		if len(e.Name) > 255 {
			t.Errorf("readdir lists a %d-byte name", len(e.Name))
		}
	}

	// Exactly NAME_MAX works everywhere, and the volume keeps working.
	_, errno = f.Link(file, rootIno, max)
	must(t, errno)
	must(t, f.Rename(rootIno, max, rootIno, strings.Repeat("c", 255), 0))
	_, _, errno = f.Create(rootIno, "s", syscall.S_IFLNK|0o777, 0, 0, 0, strings.Repeat("t", MaxSymlinkLen))
	must(t, errno)
	writeFile(t, f, "after", "still works")
	must(t, f.Sync())
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v, f = open(t, dir, Options{})
	if got := fileContent(t, f, "after"); got != "still works" {
		t.Errorf("after reopen: %q", got)
	}
	if _, _, errno := f.Lookup(rootIno, strings.Repeat("c", 255)); errno != 0 {
		t.Errorf("255-byte name after reopen: %v", errno)
	}
}

// Sizes past ext4's limit get EFBIG; a write crossing it is cut short; a
// sparse file of terabytes truncates without a put per block.
func TestFileSizeLimits(t *testing.T) {
	dir := testVolume(t)
	v, f := open(t, dir, Options{})
	defer v.Close()
	ino := writeFile(t, f, "f", "")
	huge := uint64(999999999999999999)
	if _, errno := f.SetAttr(ino, AttrChange{Size: &huge}); errno != syscall.EFBIG {
		t.Errorf("truncate to 10^18: %v, want EFBIG", errno)
	}
	if _, errno := f.Write(ino, []byte("x"), MaxFileSize); errno != syscall.EFBIG {
		t.Errorf("write at the limit: %v, want EFBIG", errno)
	}
	if n, errno := f.Write(ino, []byte("xyz"), MaxFileSize-1); errno != 0 || n != 1 {
		t.Errorf("write across the limit: %d, %v; want 1 byte written", n, errno)
	}
	if errno := f.Allocate(ino, MaxFileSize, 1, 0); errno != syscall.EFBIG {
		t.Errorf("fallocate past the limit: %v, want EFBIG", errno)
	}
	v.settle() // the write above returned durable; count from after its apply
	before := v.commit.CommitStats().Puts
	zero := uint64(10)
	if _, errno := f.SetAttr(ino, AttrChange{Size: &zero}); errno != 0 {
		t.Fatal(errno)
	}
	must(t, f.Sync())
	if puts := v.commit.CommitStats().Puts - before; puts > 4 {
		t.Errorf("truncating a sparse 16 TiB file took %d puts", puts)
	}
	if got := readAll(t, f, ino); len(got) != 10 {
		t.Errorf("size after truncate: %d", len(got))
	}
	// A long cut over written blocks deletes them all, wherever they are.
	page := make([]byte, blockstore.BlockSize)
	for i := range page {
		page[i] = 7
	}
	for b := range 3000 {
		if _, errno := f.Write(ino, page, int64(b)*blockstore.BlockSize); errno != 0 {
			t.Fatal(errno)
		}
		switch b {
		case 1000:
			must(t, f.Sync())
			if err := v.Flush(context.Background()); err != nil { // some in a layer
				t.Fatal(err)
			}
		case 2000:
			must(t, f.Sync()) // some in the memtable, some pending
		}
	}
	one := uint64(1)
	if _, errno := f.SetAttr(ino, AttrChange{Size: &one}); errno != 0 {
		t.Fatal(errno)
	}
	grow := uint64(3000 * blockstore.BlockSize)
	if _, errno := f.SetAttr(ino, AttrChange{Size: &grow}); errno != 0 {
		t.Fatal(errno)
	}
	got := readAll(t, f, ino)
	if got[0] != 7 {
		t.Errorf("byte 0 = %d, want 7", got[0])
	}
	for i, c := range got[1:] {
		if c != 0 {
			t.Fatalf("byte %d = %d after shrink and grow, want 0", i+1, c)
		}
	}
}

// A committed entry that cannot be applied stops the volume: the writer
// sees it, every open refuses with the LSN and the cause, nothing after
// it is applied, and inspection (status) says why.
func TestUndecodableEntryStopsVolume(t *testing.T) {
	for _, tc := range []struct {
		name  string
		entry []byte
		cause string
	}{
		// Format 1, type 99, time 0, a body.
		{"unknown type", []byte{1, 99, 0, 'f', 'u', 't', 'u', 'r', 'e'}, "entry type 99 is unknown"},
		{"unknown format", []byte{7, 1, 0, 0}, "entry format 7 is unknown"},
		// Format 1, puts, time 0, one put whose key is cut short.
		{"damaged puts", []byte{1, 1, 0, 1, 0, 0, 0, 1, 1}, "malformed log entry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testVolume(t)
			v, f := open(t, dir, Options{})
			writeFile(t, f, "before", "kept")
			must(t, f.Sync())
			bad, resp, err := v.log.Apply(tc.entry)
			if err != nil {
				t.Fatal(err)
			}
			var h *fsm.HaltError
			if e, _ := resp.(error); !errors.As(e, &h) || h.LSN != bad {
				t.Fatalf("response %v, want a fsm.HaltError at LSN %d", resp, bad)
			}
			// Writes after it fail and are not applied.
			after := blockstore.InodeKey(1, 999)
			data, err := fsm.EncodePuts(now(), map[blockstore.Key]blockstore.Value{after: {Data: encodeAttr(Attr{Mode: syscall.S_IFREG})}}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, resp, _ := v.log.Apply(data); resp == nil {
				t.Error("an entry after the halt applied")
			}
			ino, _, errno := f.Create(rootIno, "later", syscall.S_IFREG|0o644, 0, 0, 0, "")
			if errno == 0 {
				errno = f.Fsync(ino, false)
			}
			if errno != syscall.EIO {
				t.Errorf("a write after the halt: %v, want EIO", errno)
			}
			if st, _ := v.Status(context.Background()); !strings.Contains(st.Stopped, itoa(bad)) {
				t.Errorf("status stopped = %q, want LSN %d", st.Stopped, bad)
			}
			abandon(v)

			for range 2 { // every replay stops at the same entry
				_, err = Open(context.Background(), dir, Options{ReserveBytes: 1})
				if err == nil || !strings.Contains(err.Error(), "log entry "+itoa(bad)) || !strings.Contains(err.Error(), tc.cause) {
					t.Fatalf("open: %v; want an error naming LSN %d and %q", err, bad, tc.cause)
				}
			}
			iv, err := Open(context.Background(), dir, Options{NoFlush: true})
			if err != nil {
				t.Fatalf("inspection open: %v", err)
			}
			defer iv.Close()
			st, err := iv.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(st.Stopped, "log entry "+itoa(bad)) || !strings.Contains(st.Stopped, tc.cause) {
				t.Errorf("status stopped = %q", st.Stopped)
			}
			if _, ok, err := iv.store.Get(context.Background(), after, []blockstore.ReadPoint{{Branch: 1, MaxLSN: math.MaxUint64}}); err != nil || ok {
				t.Errorf("the entry after the halt was applied on replay (found %v, err %v)", ok, err)
			}
			rf, err := iv.Mount(context.Background(), "main")
			if err != nil {
				t.Fatal(err)
			}
			if got := fileContent(t, rf, "before"); got != "kept" {
				t.Errorf("data before the halt: %q", got)
			}
		})
	}
}

// A volume recording a format newer than this binary's is refused on open,
// naming the format; an older record is raised to this binary's.
func TestFormatRecord(t *testing.T) {
	dir := testVolume(t)
	b, err := os.ReadFile(filepath.Join(dir, formatsFile))
	if err != nil {
		t.Fatalf("no format record after init: %v", err)
	}
	var rec Formats
	if err := json.Unmarshal(b, &rec); err != nil || rec != written {
		t.Fatalf("record %s (%v), want %+v", b, err, written)
	}
	newer := written
	newer.Entries = written.Entries + 1
	newer.Snapshots = written.Snapshots + 5
	j, _ := json.Marshal(newer)
	if err := os.WriteFile(filepath.Join(dir, formatsFile), j, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(context.Background(), dir, Options{ReserveBytes: 1})
	for _, want := range []string{"newer neonfs", fmt.Sprintf("log entries format %d", newer.Entries), fmt.Sprintf("FSM snapshots format %d", newer.Snapshots)} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("open: %v; want an error containing %q", err, want)
		}
	}
	// A record from before formats.json existed: raised, and the volume opens.
	os.Remove(filepath.Join(dir, formatsFile))
	v, _ := open(t, dir, Options{})
	v.Close()
	b, _ = os.ReadFile(filepath.Join(dir, formatsFile))
	if err := json.Unmarshal(b, &rec); err != nil || rec != written {
		t.Fatalf("record after reopen %s (%v), want %+v", b, err, written)
	}
}

// A manifest of a newer format is refused by name.
func TestNewerManifestRefused(t *testing.T) {
	m := encodeManifest(Manifest{Gen: 1, Seq: 1, LSN: 1})
	m[len(manifestMagic)-1] = '3'
	if _, err := decodeManifest("manifests/x", m); err == nil || !strings.Contains(err.Error(), "format 3 is unknown") {
		t.Errorf("decode of a format 3 manifest: %v", err)
	}
}
