package volume

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/durable"
	"github.com/neonfs/neonfs/volume/fsm"
)

// Formats are the on-disk formats a binary writes (fsm.Formats). Each
// only grows: a reader knows every version up to its own and refuses a
// higher one, so an older binary never half-reads what a newer one wrote.
type Formats = fsm.Formats

// written is what this binary writes (and the most it reads).
var written = Formats{Entries: fsm.EntryVersion, Layers: blockstore.LayerFormat, Snapshots: fsm.SnapshotVersion, Manifests: manifestVersion}

const formatsFile = "formats.json"

// checkFormats refuses a volume that records a format newer than this
// binary's, then records this binary's formats (never lowering one) before
// anything is written, so the next binary to open the volume knows what it
// may meet. A volume from before the record existed holds what the binary
// of that time wrote: compressed puts, layer format 2, snapshot headers
// without a version (0), manifest format 1.
func checkFormats(dir string) error {
	path := filepath.Join(dir, formatsFile)
	rec := Formats{Entries: 2, Layers: 2, Snapshots: 0, Manifests: 1}
	b, err := os.ReadFile(path)
	found := err == nil
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read %s: %w", path, err)
	default:
		if err := json.Unmarshal(b, &rec); err != nil {
			return fmt.Errorf("format record %s: %w", path, err)
		}
	}
	if err := written.Knows(rec); err != nil {
		return fmt.Errorf("volume %s was written by a newer neonfs: %w; use that version or newer", dir, err)
	}
	if found && rec == written.Max(rec) {
		return nil
	}
	out, _ := json.MarshalIndent(written.Max(rec), "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(out, '\n'), 0o600); err != nil {
		return fmt.Errorf("record formats: %w", err)
	}
	f, err := os.Open(tmp)
	if err == nil {
		err = errors.Join(f.Sync(), f.Close())
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = durable.SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("record formats: %w", err)
	}
	return nil
}
