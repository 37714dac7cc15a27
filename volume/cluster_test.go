package volume

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestClusterLeases: three volumes, one per node, over TCP on loopback,
// sharing an object directory. A branch mounted on a follower takes the
// writer lease; its writes reach every node; no other node can mount it
// while the lease lives; unmounting releases it; a lease whose holder
// stopped renewing (an abandoned volume) is taken over once it expires,
// and the new holder sees every fsynced write; the old holder is fenced.
func TestClusterLeases(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: three Raft nodes")
	}
	ctx := context.Background()
	root := t.TempDir()
	objects := filepath.Join(root, "objects")
	var lostMu sync.Mutex
	var lost []string
	opts := Options{LeaseTTL: 2 * time.Second, OnLeaseLost: func(b string, err error) {
		lostMu.Lock()
		lost = append(lost, b)
		lostMu.Unlock()
	}}
	cfgs := make([]ClusterConfig, 3)
	dirs := make([]string, 3)
	for i := range cfgs {
		cfgs[i] = ClusterConfig{NodeID: "n" + string(rune('1'+i)), Bind: freePort(t)}
		dirs[i] = filepath.Join(root, cfgs[i].NodeID)
	}
	if err := InitWith(ctx, dirs[0], InitOptions{Cluster: &cfgs[0]}); err == nil {
		t.Fatal("a cluster with objects inside the data dir was accepted")
	}
	if err := InitWith(ctx, dirs[0], InitOptions{Cluster: &cfgs[0], Objects: objects}); err != nil {
		t.Fatal(err)
	}
	vols := make([]*Volume, 3)
	var err error
	if vols[0], err = Open(ctx, dirs[0], opts); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 3; i++ {
		if err := Join(ctx, dirs[i], cfgs[i], cfgs[0].Bind); err != nil {
			t.Fatal(err)
		}
		if vols[i], err = Open(ctx, dirs[i], opts); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, v := range vols {
			if v != nil {
				v.Close()
			}
		}
	}()
	if c, _ := ReadCluster(dirs[2]); c == nil || c.Join != "" {
		t.Fatalf("joined node's config: %+v", c)
	}
	st, err := vols[1].Cluster().Status(2 * time.Second)
	if err != nil || len(st) != 3 {
		t.Fatalf("status: %+v %v", st, err)
	}

	// A follower mounts main: it takes the lease and its writes commit
	// through the leader.
	f, err := vols[2].Mount(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	ino, _, errno := f.Create(rootIno, "ledger", syscall.S_IFREG|0o600, 0, 0, 0, "")
	must(t, errno)
	data := bytes.Repeat([]byte("acked "), 4*bs)
	_, errno = f.Write(ino, data, 0)
	must(t, errno)
	must(t, f.Fsync(ino, false))
	if _, err := vols[0].Mount(ctx, "main"); err == nil || !IsLeaseHeld(err) {
		t.Fatalf("a second node mounted a leased branch: %v", err)
	}
	if ls, _ := vols[0].Lease("main"); !ls.Held || ls.Node != "n3" || ls.Orphaned {
		t.Fatalf("lease seen from n1: %+v", ls)
	}
	time.Sleep(3 * time.Second) // past the TTL: renewals keep it
	if ls, _ := vols[1].Lease("main"); !ls.Held || ls.Node != "n3" || ls.Orphaned {
		t.Fatalf("lease after a TTL: %+v", ls)
	}
	if err := vols[2].Unmount(f); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "n1 to see the lease released", func() bool { ls, _ := vols[0].Lease("main"); return !ls.Held })

	// n2 mounts, writes, and then stops renewing without releasing (its
	// process "dies": the lease goroutine is stopped by hand).
	f, err = vols[1].Mount(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	ino, _, errno = f.Lookup(rootIno, "ledger")
	must(t, errno)
	if got := readAll(t, f, ino); !bytes.Equal(got, data) {
		t.Fatalf("n2 reads %d bytes, want n3's %d", len(got), len(data))
	}
	more := bytes.Repeat([]byte("again "), bs)
	_, errno = f.Write(ino, more, int64(len(data)))
	must(t, errno)
	must(t, f.Fsync(ino, false))
	close(f.lease.stop)
	<-f.lease.stopped
	waitUntil(t, "the lease to be orphaned", func() bool { ls, _ := vols[0].Lease("main"); return ls.Orphaned })
	g, err := vols[0].Mount(ctx, "main")
	if err != nil {
		t.Fatalf("take over an orphaned lease: %v", err)
	}
	ino, _, errno = g.Lookup(rootIno, "ledger")
	must(t, errno)
	if got := readAll(t, g, ino); !bytes.Equal(got, append(bytes.Clone(data), more...)) {
		t.Fatalf("the new writer reads %d bytes, want %d", len(got), len(data)+len(more))
	}
	// The old holder's next write is refused by the log (its token is
	// stale): its fsync fails, and nothing of it lands.
	_, errno = f.Write(ino, []byte("stale"), 0)
	if errno == 0 {
		errno = f.Fsync(ino, false)
	}
	if errno != syscall.EIO {
		t.Fatalf("stale writer's write+fsync: %v, want EIO", errno)
	}
	if got := readAll(t, g, ino); !bytes.Equal(got[:5], data[:5]) {
		t.Fatalf("a fenced write landed: %q", got[:5])
	}
	_, errno = g.Write(ino, []byte("fresh"), 0)
	must(t, errno)
	must(t, g.Fsync(ino, false))
	if err := vols[0].Unmount(g); err != nil {
		t.Fatal(err)
	}
	// The stale writer's mount was fenced when the log dropped its write.
	waitUntil(t, "the stale writer to be reported", func() bool {
		lostMu.Lock()
		defer lostMu.Unlock()
		return strings.Join(lost, ",") == "main"
	})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
