package volume

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/neonfs/neonfs/durable"
	"github.com/neonfs/neonfs/objstore"
	"github.com/neonfs/neonfs/volume/fsm"
)

// A remote manifest publishes in the object store everything needed to
// rebuild the volume from the store alone (Neon's index_part.json): the
// layer list, the branch tree and the timeline, as of the last LSN the
// layers hold. It is uploaded only after the layers it names are durable
// and recorded, so the upload order is the barrier.
//
// Generations fence writers. Every read-write open of a volume claims a
// generation above all those in the store (a claim object), layers carry
// it in their names, and restore takes the newest manifest of the highest
// generation. Of two writers of one bucket (a volume and a copy restored
// elsewhere) only the newer can win; the older, on seeing a higher
// generation, stops publishing manifests and deleting objects.

const (
	manifestDir   = "manifests/"
	manifestMagic = "NEONMAN1"
	// manifestVersion is the digit ending manifestMagic; a newer manifest
	// ("NEONMAN2") is refused by name, not taken for damage.
	manifestVersion = 1
)

var manifestCRC = crc32.MakeTable(crc32.Castagnoli)

func manifestName(gen, seq uint64) string {
	return fmt.Sprintf("%s%010d-%020d.manifest", manifestDir, gen, seq)
}

func claimName(gen uint64) string { return fmt.Sprintf("%s%010d.claim", manifestDir, gen) }

// parseManifestObject reads the generation (and for a manifest, its
// sequence) from an object name under manifests/.
func parseManifestObject(name string) (gen, seq uint64, manifest, ok bool) {
	rest, found := strings.CutPrefix(name, manifestDir)
	if !found {
		return 0, 0, false, false
	}
	if g, found := strings.CutSuffix(rest, ".claim"); found {
		gen, err := strconv.ParseUint(g, 10, 64)
		return gen, 0, false, err == nil
	}
	rest, found = strings.CutSuffix(rest, ".manifest")
	g, s, found2 := strings.Cut(rest, "-")
	if !found || !found2 {
		return 0, 0, false, false
	}
	gen, err1 := strconv.ParseUint(g, 10, 64)
	seq, err2 := strconv.ParseUint(s, 10, 64)
	return gen, seq, true, err1 == nil && err2 == nil
}

// Manifest is a decoded remote manifest.
type Manifest struct {
	Gen, Seq uint64
	LSN      uint64 // the layers hold everything up to here
	Snapshot []byte // an FSM snapshot with no memtable
}

func encodeManifest(m Manifest) []byte {
	b := []byte(manifestMagic)
	b = binary.AppendUvarint(b, m.Gen)
	b = binary.AppendUvarint(b, m.Seq)
	b = binary.AppendUvarint(b, m.LSN)
	b = binary.AppendUvarint(b, uint64(len(m.Snapshot)))
	b = append(b, m.Snapshot...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, manifestCRC))
}

func decodeManifest(name string, b []byte) (Manifest, error) {
	var m Manifest
	bad := func(what string) error {
		return fmt.Errorf("manifest %s: %s: %w", name, what, objstore.ErrCorrupt)
	}
	if len(b) >= len(manifestMagic) && string(b[:len(manifestMagic)-1]) == manifestMagic[:len(manifestMagic)-1] &&
		b[len(manifestMagic)-1] > '0'+manifestVersion && b[len(manifestMagic)-1] <= '9' {
		return m, fmt.Errorf("manifest %s: format %c is unknown to this binary (written by a newer neonfs?)", name, b[len(manifestMagic)-1])
	}
	if len(b) < len(manifestMagic)+4 || string(b[:len(manifestMagic)]) != manifestMagic {
		return m, bad("not a manifest")
	}
	body, tail := b[:len(b)-4], b[len(b)-4:]
	if crc32.Checksum(body, manifestCRC) != binary.BigEndian.Uint32(tail) {
		return m, bad("checksum mismatch")
	}
	r := bytes.NewReader(body[len(manifestMagic):])
	var f [4]uint64
	for i := range f {
		v, err := binary.ReadUvarint(r)
		if err != nil {
			return m, bad("header")
		}
		f[i] = v
	}
	if f[3] != uint64(r.Len()) {
		return m, bad("length mismatch")
	}
	m.Gen, m.Seq, m.LSN = f[0], f[1], f[2]
	m.Snapshot = body[len(body)-r.Len():]
	return m, nil
}

// scanManifests lists the store's manifests and claims: the highest
// generation seen and the newest manifest of the highest generation that
// has one.
func scanManifests(ctx context.Context, objs objstore.ObjectStore) (highGen uint64, latest string, err error) {
	infos, err := objs.List(ctx, manifestDir)
	if err != nil {
		return 0, "", fmt.Errorf("list manifests: %w", err)
	}
	var lg, ls uint64
	for _, o := range infos {
		gen, seq, isManifest, ok := parseManifestObject(o.Name)
		if !ok {
			continue
		}
		highGen = max(highGen, gen)
		if isManifest && (latest == "" || gen > lg || gen == lg && seq > ls) {
			latest, lg, ls = o.Name, gen, seq
		}
	}
	return highGen, latest, nil
}

const generationFile = "generation"

// claimGeneration picks this open's generation: above the last one used
// here and every one in the object store, recorded locally before use and
// announced with a claim object. An unreachable store does not stop the
// open: the claim is retried by the first publish.
func claimGeneration(ctx context.Context, dir string, objs objstore.ObjectStore) (uint64, error) {
	path := filepath.Join(dir, generationFile)
	var local uint64
	if b, err := os.ReadFile(path); err == nil {
		if local, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err != nil {
			return 0, fmt.Errorf("generation file %s: %q is not a number", path, strings.TrimSpace(string(b)))
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("read generation: %w", err)
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	remote, _, listErr := scanManifests(lctx, objs)
	cancel()
	if listErr != nil {
		slog.Warn("object store unreachable: generation chosen from the local record alone", "err", listErr)
	}
	gen := max(local, remote) + 1
	if err := recordGeneration(path, gen); err != nil {
		return 0, fmt.Errorf("record generation: %w", err)
	}
	if listErr == nil {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := objs.Put(pctx, claimName(gen), []byte(strconv.FormatUint(gen, 10)+"\n")); err != nil {
			slog.Warn("could not announce generation in the object store", "generation", gen, "err", err)
		}
		cancel()
	}
	return gen, nil
}

// recordGeneration writes gen as a fixed-width line. Once the file has that
// width it is overwritten in place (one sector, so not torn), which needs
// no free blocks: a volume on a full disk can still be opened.
func recordGeneration(path string, gen uint64) error {
	line := []byte(fmt.Sprintf("%020d\n", gen))
	if st, err := os.Stat(path); err != nil || st.Size() != int64(len(line)) {
		return replaceFileSync(path, line)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	return writeSyncClose(f, line)
}

// replaceFileSync atomically replaces path with data, durably.
func replaceFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	os.Remove(tmp)
	if err := writeFileSync(tmp, data); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return durable.SyncDir(filepath.Dir(path))
}

// publish uploads a manifest of the state at fr (whose layers the store
// now holds) as sequence seq, then deletes the manifests it supersedes.
// It does nothing once another writer has taken the store over.
func (v *Volume) publish(ctx context.Context, fr fsm.Frozen, seq uint64) error {
	if fenced, err := v.fenced(ctx); err != nil || fenced {
		return err
	}
	var snap bytes.Buffer
	if err := fsm.WriteSnapshot(&snap, fr.Header, v.store.LayerCapture(fr.LSN)); err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	name := manifestName(v.gen, seq)
	data := encodeManifest(Manifest{Gen: v.gen, Seq: seq, LSN: fr.LSN, Snapshot: snap.Bytes()})
	if err := v.store.Objects().Put(ctx, name, data); err != nil {
		return fmt.Errorf("upload manifest %s: %w", name, err)
	}
	v.published.Store(&name)
	v.pubSeq = seq
	slog.Info("published manifest", "manifest", name, "lsn", fr.LSN, "layers", len(v.store.Layers()))
	infos, err := v.store.Objects().List(ctx, manifestDir)
	if err != nil {
		return nil // stale manifests go next time
	}
	for _, o := range infos {
		gen, _, isManifest, ok := parseManifestObject(o.Name)
		if ok && o.Name != name && (isManifest && gen <= v.gen || !isManifest && gen < v.gen) {
			if err := v.store.Objects().Delete(ctx, o.Name); err != nil && !errors.Is(err, objstore.ErrNotFound) {
				slog.Warn("delete superseded manifest", "manifest", o.Name, "err", err)
			}
		}
	}
	return nil
}
