package volume

import (
	"bytes"
	"context"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/neonfs/neonfs/raftwal/memlog"
)

// The volume runs on any Log: on the in-memory one, writes survive a
// flush (layers, a snapshot that truncates the log), more writes, a crash
// and a reopen that replays the snapshot and the entries after it.
func TestVolumeOnMemLog(t *testing.T) {
	ctx := context.Background()
	store := memlog.New()
	openLog := func(ctx context.Context, fsm raft.FSM) (Log, error) { return store.Open(ctx, fsm) }
	dir := filepath.Join(t.TempDir(), "vol")
	if err := InitWith(ctx, dir, InitOptions{OpenLog: openLog}); err != nil {
		t.Fatal(err)
	}
	v, f := open(t, dir, Options{OpenLog: openLog})
	ino, _, errno := f.Create(rootIno, "data", syscall.S_IFREG|0o600, 0, 0, 0, "")
	must(t, errno)
	first := bytes.Repeat([]byte("flushed "), 4*bs)
	_, errno = f.Write(ino, first, 0)
	must(t, errno)
	must(t, f.Fsync(ino, false))
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if last, _ := v.log.Stats(); last == 0 {
		t.Fatal("no entries in the log")
	}
	second := bytes.Repeat([]byte("logged! "), bs)
	_, errno = f.Write(ino, second, int64(len(first)))
	must(t, errno)
	must(t, f.Fsync(ino, false))
	abandon(v)

	v, f = open(t, dir, Options{OpenLog: openLog})
	defer v.Close()
	ino2, _, errno := f.Lookup(rootIno, "data")
	must(t, errno)
	if got := readAll(t, f, ino2); !bytes.Equal(got, append(bytes.Clone(first), second...)) {
		t.Fatalf("after a crash and reopen on the in-memory log: %d bytes, want %d", len(got), len(first)+len(second))
	}
}
