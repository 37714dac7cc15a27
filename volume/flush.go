package volume

// Flushing: the memtable becomes layer objects, merges keep the layers a
// read consults few, and a manifest is published after each flush. One
// flusher goroutine runs it; flushMu makes flushes, merges, manifests and
// deletions take turns.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/volume/fsm"
)

// kickFlush asks the flusher to look now (the memtable bound holds writers).
func (v *Volume) kickFlush() {
	select {
	case v.flushKick <- struct{}{}:
	default:
	}
}

// nothing reads it.
func (v *Volume) flusher() {
	defer v.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	ctx := context.Background()
	lastOrphans := time.Now()
	for {
		select {
		case <-v.stop:
			return
		case <-t.C:
		case <-v.flushKick:
		}
		if !v.leadFlushes(ctx) {
			continue
		}
		v.flushMu.Lock()
		release := v.releaseAsked.Swap(false) && v.unmounted()
		active, frozen := v.store.MemBytes()
		if v.needsFlush(active, frozen) || (release && active+frozen > 0) {
			v.flushing.Store(true)
			if err := v.flushLocked(ctx); err != nil {
				msg := err.Error()
				v.flushErr.Store(&msg)
				slog.Error("flush memtable", "err", err)
			} else {
				v.flushErr.Store(nil)
				if _, err := v.compactLocked(ctx, false, nil); err != nil {
					slog.Error("merge layers", "err", err)
				}
				if time.Since(lastOrphans) > v.opts.GCInterval {
					lastOrphans = time.Now()
					if _, _, err := v.deleteOrphans(ctx, func(f string, a ...any) { slog.Info(fmt.Sprintf(f, a...)) }); err != nil {
						slog.Warn("delete orphaned objects", "err", err)
					}
				}
			}
			v.flushing.Store(false)
		} else if len(v.retired) > 0 {
			if _, _, err := v.deleteRetired(ctx); err != nil {
				slog.Warn("delete replaced layers", "err", err)
			}
		}
		if release {
			v.dropMemory()
		}
		v.flushMu.Unlock()
	}
}

// leadFlushes reports whether this node flushes: a single voter always; a
// cluster node while it leads, after claiming a generation newer than any
// earlier leader's (so its layer names and manifests win). A follower
// instead snapshots its log once the leader's layers have replaced part of
// its memtable, so its own log stays short.
func (v *Volume) leadFlushes(ctx context.Context) bool {
	if v.cluster == nil {
		return true
	}
	if !v.log.IsLeader() {
		v.flushMu.Lock()
		v.genTerm = false
		var covered uint64 // the highest LSN a layer holds
		for _, l := range v.store.Layers() {
			covered = max(covered, l.MaxLSN)
		}
		if covered > v.snapCovered {
			if err := v.log.Snapshot(); err != nil {
				slog.Warn("snapshot the log on a follower", "err", err)
			} else {
				v.snapCovered = covered
			}
		}
		v.flushMu.Unlock()
		return false
	}
	v.maybeSwitchFormats()
	if v.genTerm {
		return true
	}
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	gen, err := claimGeneration(ctx, v.dir, v.store.Objects())
	if err != nil {
		slog.Error("claim a writer generation as the new leader; flushes wait", "err", err)
		return false
	}
	v.gen = gen
	v.store.SetGeneration(gen)
	v.fencedBy.Store(0)
	v.lastFrozen = nil
	v.genTerm = true
	slog.Info("leading the cluster: this node flushes layers", "generation", gen)
	return true
}

// needsFlush says whether the memtable (active and frozen bytes) should be
// flushed now: the active part reached FlushBytes, or the whole is over
// MaxUnflushed, which holds writers at the admission gate. The second
// counts frozen bytes with no active ones too: a Raft snapshot freezes the
// active segment (Store.Capture), and writers held by those bytes would
// otherwise wait for ever.
func (v *Volume) needsFlush(active, frozen int64) bool {
	return active >= v.opts.FlushBytes || active+frozen > v.opts.MaxUnflushed
}

// Flush writes everything applied so far to a layer, records it through
// the log, and snapshots so the log before it can be truncated. Upload
// failures are retried with backoff until stop.
func (v *Volume) Flush(ctx context.Context) error {
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	return v.flushLocked(ctx)
}

func (v *Volume) flushLocked(ctx context.Context) error {
	_, err := v.flushLayer(ctx)
	return err
}

// flushLayer is flushLocked, saying whether it wrote a layer and so took
// a log snapshot after it.
func (v *Volume) flushLayer(ctx context.Context) (snapshotted bool, err error) {
	defer v.gate.Changed() // the memtable shrank, or writers look again at why not
	_, resp, err := v.log.Apply(fsm.EncodeFreeze(now()))
	if err != nil {
		return false, fmt.Errorf("freeze memtable: %w", err)
	}
	fr, ok := resp.(fsm.Frozen)
	if !ok {
		return false, fmt.Errorf("freeze memtable: %v", resp)
	}
	v.lastFrozen = &fr
	backoff := 100 * time.Millisecond
	var meta blockstore.LayerMeta
	for {
		start := time.Now()
		meta, ok, err = v.store.WriteLayer(ctx, fr.LSN)
		if err == nil {
			if ok {
				slog.Info("flushed layer", "layer", meta.Name, "bytes", meta.Size, "keys", meta.Keys, "took", time.Since(start).Round(time.Millisecond))
			}
			break
		}
		msg := err.Error()
		v.flushErr.Store(&msg)
		slog.Warn("write layer failed, retrying", "backoff", backoff, "err", err)
		select {
		case <-v.stop:
			return false, err
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
	seq := fr.LSN
	if ok {
		b, err := fsm.EncodeLayer(now(), meta)
		if err != nil {
			return false, err
		}
		if seq, _, err = v.log.Apply(b); err != nil {
			return false, fmt.Errorf("record layer %s: %w", meta.Name, err)
		}
		if err := v.store.OpenNow(ctx, meta.Name); err != nil {
			slog.Warn("open flushed layer", "layer", meta.Name, "err", err) // reads open it again
		}
		if err := v.log.Snapshot(); err != nil {
			return false, fmt.Errorf("snapshot after layer %s: %w", meta.Name, err)
		}
	}
	return ok, v.publishIfChanged(ctx, fr, seq)
}

// publishIfChanged publishes a manifest unless the last one already says
// the same (same tree, same layers).
func (v *Volume) publishIfChanged(ctx context.Context, fr fsm.Frozen, seq uint64) error {
	var state strings.Builder
	state.Write(fr.Tree)
	for _, l := range v.store.Layers() {
		state.WriteString("\n" + l.Name)
	}
	if state.String() == v.pubState && v.published.Load() != nil {
		return nil
	}
	if err := v.publish(ctx, fr, seq); err != nil {
		return err
	}
	v.pubState = state.String()
	return nil
}
