package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/neonfs/neonfs/daemon"
	"github.com/neonfs/neonfs/objstore/s3"
	"github.com/neonfs/neonfs/volume"
)

func initCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "init",
		Usage:     "create an empty volume with a branch named main",
		ArgsUsage: " ",
		Flags: append([]ucli.Flag{
			// No default: creating a volume somewhere implicit would surprise.
			&ucli.StringFlag{Name: "data", Usage: "volume data directory to create", Required: true, EnvVars: []string{"NEONFS_DATA"}},
			&ucli.StringFlag{Name: "s3", Usage: "keep objects in S3 at s3://bucket/prefix instead of DATA/objects"},
			&ucli.DurationFlag{Name: "retention", Value: volume.DefaultRetention, Usage: "how far back branches and time-travel mounts may reach; GC keeps that much history"},
			&ucli.StringFlag{Name: "objects", Usage: "object directory (default DATA/objects); a cluster's must be one every node reaches"},
		}, append(s3Flags(), nodeFlags()...)...),
		Action: func(c *ucli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			dir := c.String("data")
			var o volume.InitOptions
			var err error
			if o.S3, err = s3Config(c, c.String("s3"), "--s3"); err != nil {
				return err
			}
			if o.Retention = c.Duration("retention"); o.Retention <= 0 {
				return fmt.Errorf("--retention must be positive, got %s", o.Retention)
			}
			o.Objects = c.String("objects")
			if o.Cluster, err = clusterConfig(c, false); err != nil {
				return err
			}
			if err := volume.InitWith(c.Context, dir, o); err != nil {
				return fmt.Errorf("init %s: %w", dir, err)
			}
			if o.Cluster != nil {
				fmt.Printf("created volume %s with branch main, the first node (%s) of a cluster at %s\n", dir, o.Cluster.NodeID, o.Cluster.Bind)
				return nil
			}
			fmt.Printf("created volume %s with branch main\n", dir)
			return nil
		},
	}
}

func s3Flags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.StringFlag{Name: "s3-endpoint", Usage: "S3 endpoint host:port"},
		&ucli.StringFlag{Name: "s3-region", Usage: "S3 region (default: ask the server)"},
		&ucli.BoolFlag{Name: "s3-tls", Value: true, Usage: "use TLS to reach the endpoint"},
		&ucli.StringFlag{Name: "s3-credentials", Usage: "file (mode 0600) with access_key_id= and secret_access_key= lines; default: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the environment"},
	}
}

// s3Config builds the S3 settings for url (s3://bucket/prefix) from the
// s3-* flags; with url empty it returns nil and refuses stray s3-* flags.
func s3Config(c *ucli.Context, url, flag string) (*s3.Config, error) {
	if url == "" {
		for _, f := range []string{"s3-endpoint", "s3-region", "s3-credentials"} {
			if c.IsSet(f) {
				return nil, fmt.Errorf("--%s needs %s s3://bucket/prefix", f, flag)
			}
		}
		return nil, nil
	}
	bucket, prefix, err := s3.ParseURL(url)
	if err != nil {
		return nil, err
	}
	if c.String("s3-endpoint") == "" {
		return nil, fmt.Errorf("%s s3://... needs --s3-endpoint host:port", flag)
	}
	cred := c.String("s3-credentials")
	if cred != "" {
		if cred, err = filepath.Abs(cred); err != nil {
			return nil, err
		}
	}
	return &s3.Config{Endpoint: c.String("s3-endpoint"), Bucket: bucket, Prefix: prefix,
		Region: c.String("s3-region"), Secure: c.Bool("s3-tls"), CredentialsFile: cred}, nil
}

func restoreCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "restore",
		Usage:     "rebuild a volume from its object store alone (after losing the data dir)",
		ArgsUsage: " ",
		Description: "Reads the newest manifest in the object store and creates a volume in --data\n" +
			"holding everything flushed there: every branch, up to the manifest's LSN. What the\n" +
			"lost log held beyond it is gone. The restored volume takes the store over: the\n" +
			"volume that wrote it, if it still runs, stops publishing manifests and deleting objects.",
		Flags: append([]ucli.Flag{
			&ucli.StringFlag{Name: "data", Usage: "volume data directory to create", Required: true, EnvVars: []string{"NEONFS_DATA"}},
			&ucli.StringFlag{Name: "from", Usage: "s3://bucket/prefix, or a local object directory", Required: true},
			&ucli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		}, s3Flags()...),
		Action: func(c *ucli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			dir, from := c.String("data"), c.String("from")
			o := volume.RestoreOptions{Progress: func(format string, args ...any) {
				fmt.Fprintf(os.Stderr, "restore: "+format+"\n", args...)
			}}
			var err error
			if strings.HasPrefix(from, "s3://") {
				o.S3, err = s3Config(c, from, "--from")
			} else {
				o.Objects = from
				_, err = s3Config(c, "", "--from")
			}
			if err != nil {
				return err
			}
			res, err := volume.Restore(c.Context, dir, o)
			if err != nil {
				return fmt.Errorf("restore %s from %s: %w", dir, from, err)
			}
			if c.Bool("json") {
				return json.NewEncoder(os.Stdout).Encode(res)
			}
			fmt.Printf("restored volume %s from %s: LSN %d, %d layers (%d bytes), %d branches\n",
				dir, res.Manifest, res.LSN, res.Layers, res.Bytes, len(res.Branches))
			return nil
		},
	}
}

func volumeFlags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.IntFlag{Name: "cache-mb", Value: 256, Usage: "block cache size in MiB"},
		&ucli.IntFlag{Name: "flush-mb", Value: 128, Usage: "memtable size in MiB that triggers a layer flush"},
		&ucli.IntFlag{Name: "reserve-mb", Value: 256, Usage: "free disk in MiB kept under the data dir; writes past it get ENOSPC"},
		&ucli.IntFlag{Name: "layer-cache-mb", Value: 4096, Usage: "on-disk cache of object-store layer chunks in MiB, under DATA/cache (S3 volumes)"},
		&ucli.IntFlag{Name: "prewarm-mb", Usage: "page cache in MiB a mount may fill with its branch's layers, read ahead as it mounts (local object store; newest layers first): a woken branch answers its first reads from memory. Default an eighth of RAM; 0 turns it off"},
		&ucli.IntFlag{Name: "max-unflushed-mb", Value: 2048, Usage: "data in MiB the log may hold beyond the object store (while it is slow or away) before writes wait"},
		&ucli.BoolFlag{Name: "lead-writes", Value: true, Usage: "cluster nodes: move Raft leadership to this node when it takes a branch's writer lease; --lead-writes=false forwards its commits to the leader instead (bench/cluster.sh: 1.2-1.7x slower)"},
		&ucli.DurationFlag{Name: "lease-ttl", Value: volume.DefaultLeaseTTL, Usage: "cluster nodes: a branch writer's lease TTL (renewed every TTL/2; a dead writer's branch is taken over after it)"},
	}
}

// fuseFlags tune the FUSE connection of every mount the daemon makes.
func fuseFlags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.BoolFlag{Name: "wal-direct-io", Value: false, Usage: "Postgres WAL segments (files in pg_wal) bypass the page cache, and a write through an O_DSYNC handle returns once committed: with wal_sync_method=open_datasync a commit is one FUSE round trip. Off by default: under Postgres's fdatasync (what endpoints run) every WAL write then costs a round trip, which slows bulk loads by a third and TPC-B a little"},
		&ucli.IntFlag{Name: "max-background", Value: 0, Usage: "the kernel's limit of background FUSE requests in flight (writeback, readahead); 0 keeps the kernel's 12"},
	}
}

func fuseTuning(c *ucli.Context) (daemon.FUSETuning, error) {
	if mb := c.Int("max-background"); mb < 0 || mb > 65535 {
		return daemon.FUSETuning{}, fmt.Errorf("--max-background %d: want 0 (the kernel's default) to 65535", mb)
	}
	return daemon.FUSETuning{WALDirectIO: c.Bool("wal-direct-io"), MaxBackground: c.Int("max-background")}, nil
}

func volumeOptions(c *ucli.Context) (volume.Options, error) {
	for _, f := range []string{"cache-mb", "flush-mb", "reserve-mb", "max-unflushed-mb", "layer-cache-mb"} {
		if c.Int(f) <= 0 {
			return volume.Options{}, fmt.Errorf("--%s must be positive, got %d", f, c.Int(f))
		}
	}
	if c.Duration("lease-ttl") < 2*volume.ClockMargin+time.Second {
		return volume.Options{}, fmt.Errorf("--lease-ttl %s is too short: give at least %s", c.Duration("lease-ttl"), 2*volume.ClockMargin+time.Second)
	}
	prewarm := int64(0) // the default
	if c.IsSet("prewarm-mb") {
		switch mb := c.Int("prewarm-mb"); {
		case mb < 0:
			return volume.Options{}, fmt.Errorf("--prewarm-mb %d: want 0 (off) or more", mb)
		case mb == 0:
			prewarm = -1
		default:
			prewarm = int64(mb) << 20
		}
	}
	return volume.Options{
		PrewarmBytes:    prewarm,
		LeaseTTL:        c.Duration("lease-ttl"),
		LeadWrites:      c.Bool("lead-writes"),
		CacheBytes:      c.Int("cache-mb") << 20,
		FlushBytes:      int64(c.Int("flush-mb")) << 20,
		ReserveBytes:    int64(c.Int("reserve-mb")) << 20,
		MaxUnflushed:    int64(c.Int("max-unflushed-mb")) << 20,
		LayerCacheBytes: int64(c.Int("layer-cache-mb")) << 20,
	}, nil
}

func mountCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "mount",
		Usage: "serve a branch as a file system (until SIGINT/SIGTERM, or hand it to the running daemon)",
		Description: "The first mount of a volume runs in the foreground as its daemon. While it runs,\n" +
			"further mounts (other branches, or --at for a read-only view of the past) are\n" +
			"served by that daemon and this command returns at once.",
		ArgsUsage: "MOUNTPOINT",
		Flags: append([]ucli.Flag{
			dataFlag,
			&ucli.StringFlag{Name: "branch", Value: "main", Usage: "branch to mount"},
			&ucli.StringFlag{Name: "at", Usage: "mount the branch read-only as it was at this point: LSN, RFC3339 time or -duration (-15m)"},
			&ucli.BoolFlag{Name: "writeback-cache", Value: true, Usage: "let the kernel page cache absorb writes until fsync"},
			&ucli.BoolFlag{Name: "fuse-debug", Usage: "log every FUSE request"},
			metricsFlag,
		}, append(volumeFlags(), fuseFlags()...)...),
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
	tuning, err := fuseTuning(c)
	if err != nil {
		return err
	}
	if err := checkMetricsAddr(c.String("metrics")); err != nil {
		return err
	}
	// Check the mountpoint before replaying the log: a bad path should fail fast.
	if err := daemon.CheckMountpoint(mnt); err != nil {
		return err
	}
	if _, err := volume.ReadConfig(dir); err != nil {
		return err
	}
	req := daemon.MountRequest{Branch: c.String("branch"), At: c.String("at"), Mountpoint: mnt, Writeback: c.Bool("writeback-cache")}
	if r, ok, err := daemonRunning(c.Context, dir); err != nil {
		return err
	} else if ok {
		if c.String("metrics") != "" {
			return fmt.Errorf("--metrics: a daemon already serves %s; give --metrics to the command that started it", dir)
		}
		var rep daemon.MountReply
		if err := r.call(c.Context, "mount", daemon.Args{Name: req.Branch, Point: req.At, Mountpoint: mnt, Writeback: req.Writeback}, &rep); err != nil {
			return err
		}
		mode := ""
		if rep.ReadOnly {
			mode = " read-only"
		}
		fmt.Printf("mounted branch %s%s at %s (served by the daemon, process %d)\n", rep.Branch, mode, rep.Mountpoint, rep.Pid)
		return nil
	}

	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	daemon.TuneGC()
	vol, err := volume.Open(ctx, dir, opts)
	if err != nil {
		return fmt.Errorf("open volume: %w", err)
	}
	d := daemon.New(dir, vol, c.Bool("fuse-debug"))
	d.SetFUSE(tuning)
	stopMetrics, err := startMetrics(d, c.String("metrics"))
	if err != nil {
		vol.Close()
		return err
	}
	defer stopMetrics()
	return daemon.Run(ctx, d, req, func(rep daemon.MountReply) {
		fmt.Fprintf(os.Stderr, "neonfs: mounted branch %s of %s at %s\n", rep.Branch, dir, rep.Mountpoint)
	})
}

func unmountCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "unmount",
		Usage:     "stop serving a mountpoint of the running daemon (the last one stops the daemon)",
		ArgsUsage: "MOUNTPOINT",
		Flags:     []ucli.Flag{dataFlag},
		Action: func(c *ucli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("unmount: want exactly one MOUNTPOINT argument, got %d", c.NArg())
			}
			r, err := remoteFor(c.Context, c.String("data"))
			if err != nil {
				return err
			}
			mnt, err := filepath.Abs(c.Args().First())
			if err != nil {
				return err
			}
			if err := r.call(c.Context, "unmount", daemon.Args{Mountpoint: mnt}, nil); err != nil {
				return err
			}
			fmt.Printf("unmounted %s\n", mnt)
			return nil
		},
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
func fetchStatus(ctx context.Context, dir string) (st volume.Status, err error) {
	err = withVolume(ctx, dir, func(v volumeAPI) error {
		st, err = v.Status(ctx)
		return err
	})
	return st, err
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
	if st.Flushing {
		fmt.Fprintf(w, "background\tflushing or merging layers\n")
	}
	fmt.Fprintf(w, "layers\t%d (%s); a read looks in at most %d (layers x branch ancestry)\n", st.Layers, human(st.LayerBytes), st.ReadDepth)
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
	if st.Stopped != "" {
		fmt.Fprintf(w, "STOPPED\t%s; no writes are accepted (a newer neonfs may read it; otherwise restore from the object store)\n", st.Stopped)
	}
	if st.LastFlushError != "" {
		fmt.Fprintf(w, "last flush error\t%s (retrying; writes keep committing to the log)\n", st.LastFlushError)
	}
	if st.ObjectStoreError != "" {
		fmt.Fprintf(w, "object store\tUNREACHABLE: %s\n", st.ObjectStoreError)
	}
	if lc := st.LayerCache; lc != nil {
		fmt.Fprintf(w, "layer cache\t%s of %s, %d hits, %d misses, %d evictions\n", human(lc.Bytes), human(lc.Limit), lc.Hits, lc.Misses, lc.Evictions)
	}
	if st.Manifest != "" {
		fmt.Fprintf(w, "manifest\t%s (generation %d)\n", st.Manifest, st.Generation)
	}
	if st.FencedBy != 0 {
		fmt.Fprintf(w, "object store\tTAKEN OVER by generation %d (a restored copy?): this volume no longer publishes manifests or deletes objects\n", st.FencedBy)
	}
	w.Flush()
}

func human(n int64) string { return volume.HumanBytes(n) }

func gcCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "gc",
		Usage: "merge layers and delete object-store data no branch, fork point or retention window can read",
		Description: "Flushes the memtable, rewrites every layer without the versions no reader can reach\n" +
			"(superseded before the retention window and under no branch's fork point, or written by\n" +
			"deleted branches), and deletes replaced and orphaned objects. The daemon also merges\n" +
			"layers in the background after flushes; this is the full pass.",
		ArgsUsage: " ",
		Flags:     []ucli.Flag{dataFlag, &ucli.BoolFlag{Name: "json", Usage: "print the result as JSON"}},
		Action: func(c *ucli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			dir := c.String("data")
			var res volume.GCResult
			err := withVolumeOpts(c.Context, dir, volume.Options{}, func(v volumeAPI) (err error) {
				fmt.Fprintf(os.Stderr, "gc: flushing the memtable and planning merges\n")
				res, err = v.GC(c.Context, func(format string, args ...any) {
					fmt.Fprintf(os.Stderr, "gc: "+format+"\n", args...)
				})
				return err
			})
			if err != nil {
				return fmt.Errorf("gc %s: %w", dir, err)
			}
			if c.Bool("json") {
				return json.NewEncoder(os.Stdout).Encode(res)
			}
			if res.Skipped != "" {
				fmt.Printf("gc skipped: %s\n", res.Skipped)
				return nil
			}
			fmt.Printf("gc: %d layers -> %d (a read consults at most %d), %s unreachable data dropped, %d objects deleted (%s)",
				res.LayersBefore, res.LayersAfter, res.ReadDepth, human(res.DroppedBytes), res.DeletedObjects, human(res.DeletedBytes))
			if res.PendingDeletes > 0 {
				fmt.Printf(", %d more once their readers finish", res.PendingDeletes)
			}
			fmt.Println()
			return nil
		},
	}
}
