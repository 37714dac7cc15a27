package volume

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/objstore"
	"github.com/neonfs/neonfs/objstore/s3"
	"github.com/neonfs/neonfs/raftwal"
	"github.com/neonfs/neonfs/snapshot"
	"github.com/neonfs/neonfs/volume/fsm"
)

// RestoreOptions name the object store to rebuild a volume from.
type RestoreOptions struct {
	S3      *s3.Config
	Objects string // a local object directory, when S3 is nil
	// Progress, when set, is told what restore is doing.
	Progress func(format string, args ...any)
}

// RestoreResult describes a rebuilt volume.
type RestoreResult struct {
	Manifest string             `json:"manifest"`
	LSN      uint64             `json:"lsn"`
	Layers   int                `json:"layers"`
	Bytes    int64              `json:"layer_bytes"`
	Branches []*snapshot.Branch `json:"branches"`
}

// Restore rebuilds a volume in dir (missing or empty) from an object
// store alone: the newest manifest of the highest generation names the
// layers and the branch tree, up to the last LSN flushed there. The
// restored volume takes the store over: opening it claims a newer
// generation, which fences the volume that wrote the manifest.
func Restore(ctx context.Context, dir string, o RestoreOptions) (RestoreResult, error) {
	var res RestoreResult
	progress := o.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	if err := checkEmptyDir(dir); err != nil {
		return res, err
	}
	cfg := Config{Format: 1, Created: time.Now().UTC(), S3: o.S3}
	var objs objstore.ObjectStore
	var err error
	where := o.Objects
	if o.S3 != nil {
		where = o.S3.String()
		objs, err = s3.New(ctx, *o.S3)
	} else {
		if cfg.Objects, err = filepath.Abs(o.Objects); err != nil {
			return res, err
		}
		if _, err := os.Stat(cfg.Objects); err != nil {
			return res, fmt.Errorf("object directory: %w", err)
		}
		objs, err = objstore.NewDirStore(cfg.Objects)
	}
	if err != nil {
		return res, err
	}
	progress("reading manifests in %s", where)
	_, latest, err := scanManifests(ctx, objs)
	if err != nil {
		return res, fmt.Errorf("%s: %w", where, err)
	}
	if latest == "" {
		return res, fmt.Errorf("%s holds no manifest: nothing to restore (was a volume ever flushed there?)", where)
	}
	data, err := objs.Get(ctx, latest)
	if err != nil {
		return res, fmt.Errorf("read manifest %s: %w", latest, err)
	}
	m, err := decodeManifest(latest, data)
	if err != nil {
		return res, err
	}
	// Decode it as the volume will, to fail now rather than at open.
	store := blockstore.NewStore(objs, 1<<20)
	f := fsm.New(store, time.Now(), rootIno)
	if err := f.Restore(io.NopCloser(bytes.NewReader(m.Snapshot))); err != nil {
		return res, fmt.Errorf("manifest %s: %w", latest, err)
	}
	layers := store.Layers()
	progress("manifest %s: LSN %d, %d layers, %d branches", latest, m.LSN, len(layers), len(f.TreeClone().Branches))
	present, err := objs.List(ctx, "layers/")
	if err != nil {
		return res, fmt.Errorf("list layers in %s: %w", where, err)
	}
	have := make(map[string]int64, len(present))
	for _, p := range present {
		have[p.Name] = p.Size
	}
	for _, l := range layers {
		size, ok := have[l.Name]
		if !ok {
			return res, fmt.Errorf("manifest %s names layer %s, which %s does not hold", latest, l.Name, where)
		}
		if size != l.Size {
			return res, fmt.Errorf("layer %s is %d bytes in %s, manifest %s says %d: %w", l.Name, size, where, latest, l.Size, objstore.ErrCorrupt)
		}
		res.Bytes += l.Size
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, fmt.Errorf("create data dir: %w", err)
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := writeFileSync(filepath.Join(dir, configFile), append(b, '\n')); err != nil {
		return res, fmt.Errorf("write volume config: %w", err)
	}
	if err := raftwal.BootstrapFromSnapshot(raftwal.Config{Dir: filepath.Join(dir, "raft")}, m.LSN, m.Snapshot); err != nil {
		return res, err
	}
	// Open once: replays the snapshot, claims a generation and publishes
	// under it, so the store's previous writer is fenced from now on.
	progress("opening the restored volume")
	v, err := Open(ctx, dir, Options{})
	if err != nil {
		return res, fmt.Errorf("open restored volume: %w", err)
	}
	res = RestoreResult{Manifest: latest, LSN: m.LSN, Layers: len(layers), Bytes: res.Bytes, Branches: v.fsm.TreeClone().List()}
	if err := v.Close(); err != nil {
		return res, fmt.Errorf("close restored volume: %w", err)
	}
	if v.published.Load() == nil {
		return res, fmt.Errorf("restored volume could not publish its manifest (is %s writable?)", where)
	}
	return res, nil
}
