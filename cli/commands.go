package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/neonfs/neonfs/fusefs"
	"github.com/neonfs/neonfs/volume"
	ucli "github.com/urfave/cli/v2"
)

func initCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "init",
		Usage:     "create an empty volume with a branch named main",
		ArgsUsage: " ",
		Flags:     []ucli.Flag{dataFlag},
		Action: func(c *ucli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			dir := c.String("data")
			if err := volume.Init(c.Context, dir); err != nil {
				return fmt.Errorf("init %s: %w", dir, err)
			}
			fmt.Printf("created volume %s with branch main\n", dir)
			return nil
		},
	}
}

func volumeFlags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.IntFlag{Name: "cache-mb", Value: 256, Usage: "block cache size in MiB"},
		&ucli.IntFlag{Name: "flush-mb", Value: 128, Usage: "memtable size in MiB that triggers a layer flush"},
		&ucli.IntFlag{Name: "reserve-mb", Value: 256, Usage: "free disk in MiB kept under the data dir; writes past it get ENOSPC"},
	}
}

func volumeOptions(c *ucli.Context) (volume.Options, error) {
	for _, f := range []string{"cache-mb", "flush-mb", "reserve-mb"} {
		if c.Int(f) <= 0 {
			return volume.Options{}, fmt.Errorf("--%s must be positive, got %d", f, c.Int(f))
		}
	}
	return volume.Options{
		CacheBytes:   c.Int("cache-mb") << 20,
		FlushBytes:   int64(c.Int("flush-mb")) << 20,
		ReserveBytes: int64(c.Int("reserve-mb")) << 20,
	}, nil
}

func mountCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "mount",
		Usage:     "serve a branch as a file system until SIGINT/SIGTERM",
		ArgsUsage: "MOUNTPOINT",
		Flags: append([]ucli.Flag{
			dataFlag,
			&ucli.StringFlag{Name: "branch", Value: "main", Usage: "branch to mount"},
			&ucli.BoolFlag{Name: "writeback-cache", Value: true, Usage: "let the kernel page cache absorb writes until fsync"},
			&ucli.BoolFlag{Name: "fuse-debug", Usage: "log every FUSE request"},
		}, volumeFlags()...),
		Action: runMount,
	}
}

func runMount(c *ucli.Context) error {
	if c.NArg() != 1 {
		return fmt.Errorf("mount: want exactly one MOUNTPOINT argument, got %d", c.NArg())
	}
	mnt, err := filepath.Abs(c.Args().First())
	if err != nil {
		return err
	}
	dir := c.String("data")
	opts, err := volumeOptions(c)
	if err != nil {
		return err
	}
	// Check the mountpoint before replaying the log: a bad path should fail fast.
	if fi, err := os.Stat(mnt); err != nil {
		return fmt.Errorf("mountpoint: %w", err)
	} else if !fi.IsDir() {
		return fmt.Errorf("mountpoint %s is not a directory", mnt)
	}
	if m, err := fusefs.IsMounted(mnt); err != nil {
		return err
	} else if m {
		return fmt.Errorf("mountpoint %s is already mounted (unmount it first)", mnt)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	vol, err := volume.Open(ctx, dir, opts)
	if err != nil {
		return fmt.Errorf("open volume: %w", err)
	}
	bfs, err := vol.Mount(ctx, c.String("branch"))
	if err != nil {
		return errors.Join(err, vol.Close())
	}
	srv, err := fusefs.Mount(bfs, mnt, fusefs.Options{WritebackCache: c.Bool("writeback-cache"), Debug: c.Bool("fuse-debug")})
	if err != nil {
		return errors.Join(err, vol.Unmount(bfs), vol.Close())
	}
	ctl, err := serveControl(dir, vol)
	if err != nil {
		slog.Warn("control socket unavailable", "err", err)
	}
	inodes, _ := bfs.Counts()
	slog.Info("mounted", "branch", bfs.Name(), "data", dir, "mountpoint", mnt, "inodes", inodes, "took", time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(os.Stderr, "neonfs: mounted branch %s of %s at %s\n", bfs.Name(), dir, mnt)

	unmounted := make(chan struct{})
	go func() { srv.Wait(); close(unmounted) }()
	select {
	case <-ctx.Done():
		slog.Info("signal received: unmounting", "mountpoint", mnt)
		unmount(srv, mnt, unmounted)
	case <-unmounted:
		slog.Info("unmounted externally", "mountpoint", mnt)
	}
	if ctl != nil {
		ctl.Close()
	}
	err = errors.Join(vol.Unmount(bfs), vol.Close())
	if err != nil {
		return fmt.Errorf("close volume: %w", err)
	}
	slog.Info("volume closed cleanly", "data", dir)
	return nil
}

// unmount retries while the mount is busy (a process still has files open),
// then detaches it lazily so the daemon can still close the volume cleanly.
func unmount(srv interface{ Unmount() error }, mnt string, done <-chan struct{}) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := srv.Unmount()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			slog.Warn("mount still busy: detaching lazily", "mountpoint", mnt, "err", err)
			syscall.Unmount(mnt, syscall.MNT_DETACH)
			break
		}
		slog.Warn("unmount failed, retrying", "mountpoint", mnt, "err", err)
		time.Sleep(500 * time.Millisecond)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		slog.Warn("FUSE server did not stop after unmount", "mountpoint", mnt)
	}
}

func statusCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "status",
		Usage:     "show branches, committed LSN, memtable, layers and object-store usage",
		ArgsUsage: " ",
		Flags:     []ucli.Flag{dataFlag, &ucli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *ucli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			st, err := fetchStatus(c.Context, c.String("data"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(st)
			return nil
		},
	}
}

// fetchStatus asks the running daemon, or opens the volume itself when no
// daemon holds it.
func fetchStatus(ctx context.Context, dir string) (volume.Status, error) {
	if st, err := controlStatus(ctx, dir); err == nil {
		return st, nil
	} else if !errors.Is(err, errNoDaemon) {
		return st, err
	}
	vol, err := volume.Open(ctx, dir, volume.Options{NoFlush: true})
	if err != nil {
		return volume.Status{}, fmt.Errorf("open volume: %w", err)
	}
	st, err := vol.Status(ctx)
	return st, errors.Join(err, vol.Close())
}

func printStatus(st volume.Status) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	mounted := map[string]bool{}
	for _, m := range st.Mounted {
		mounted[m] = true
	}
	fmt.Fprintf(w, "volume\t%s\n", st.Dir)
	for _, b := range st.Branches {
		state := ""
		if mounted[b.Name] {
			state = " (mounted)"
		}
		fmt.Fprintf(w, "branch\t%s%s\n", b.Name, state)
	}
	fmt.Fprintf(w, "committed LSN\t%d\n", st.CommittedLSN)
	fmt.Fprintf(w, "memtable\t%s (frozen %s, uncommitted %s)\n", human(st.MemtableBytes), human(st.FrozenBytes), human(st.PendingBytes))
	fmt.Fprintf(w, "layers\t%d (%s)\n", st.Layers, human(st.LayerBytes))
	fmt.Fprintf(w, "object store\t%d objects, %s\n", st.Objects, human(st.ObjectBytes))
	fmt.Fprintf(w, "raft log\t%s\n", human(st.LogBytes))
	if c := st.Commits; c.Entries > 0 {
		fmt.Fprintf(w, "commits\t%d entries, %s, %.2f ms avg, %d retries\n", c.Entries, human(int64(c.Bytes)), 1000*c.Seconds/float64(c.Entries), c.Retries)
	}
	if st.Commits.LastError != "" {
		fmt.Fprintf(w, "last commit error\t%s\n", st.Commits.LastError)
	}
	if st.DiskFull {
		fmt.Fprintf(w, "disk\tFULL: writes refused with ENOSPC\n")
	}
	if st.LastFlushError != "" {
		fmt.Fprintf(w, "last flush error\t%s\n", st.LastFlushError)
	}
	w.Flush()
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
