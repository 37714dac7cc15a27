package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
)

// Rolling upgrades. Every cluster node announces, with an entry, the
// formats its binary reads and writes; the leader switches the cluster to
// a newer format, with another entry, only once every voter has announced
// it. A binary writes a format newer than the cluster's switched ones only
// after that switch, so a node still running the older binary never meets
// what it cannot read; and a node whose binary is older than the switched
// formats refuses to start (volume.Open), instead of halting on the first
// entry it cannot decode.

// Formats are the on-disk format versions a binary writes (and the most
// it reads). Each only grows.
type Formats struct {
	// Entries is the log entry vocabulary (EntryVersion).
	Entries int `json:"entries"`
	// Layers is the layer object format (blockstore).
	Layers int `json:"layers"`
	// Snapshots is the FSM snapshot header (SnapshotVersion).
	Snapshots int `json:"snapshots"`
	// Manifests is the remote manifest format.
	Manifests int `json:"manifests"`
}

// Knows returns an error naming each format in rec newer than f's.
func (f Formats) Knows(rec Formats) error {
	var errs []error
	for _, c := range []struct {
		what      string
		have, got int
	}{
		{"log entries", f.Entries, rec.Entries},
		{"layers", f.Layers, rec.Layers},
		{"FSM snapshots", f.Snapshots, rec.Snapshots},
		{"manifests", f.Manifests, rec.Manifests},
	} {
		if c.got > c.have {
			errs = append(errs, fmt.Errorf("%s format %d (this binary knows up to %d)", c.what, c.got, c.have))
		}
	}
	return errors.Join(errs...)
}

// Max is the newer of each format.
func (f Formats) Max(o Formats) Formats {
	return Formats{Entries: max(f.Entries, o.Entries), Layers: max(f.Layers, o.Layers),
		Snapshots: max(f.Snapshots, o.Snapshots), Manifests: max(f.Manifests, o.Manifests)}
}

// Min is the older of each format.
func (f Formats) Min(o Formats) Formats {
	return Formats{Entries: min(f.Entries, o.Entries), Layers: min(f.Layers, o.Layers),
		Snapshots: min(f.Snapshots, o.Snapshots), Manifests: min(f.Manifests, o.Manifests)}
}

// NodeFormats announces what a node's binary knows.
type NodeFormats struct {
	Node    string  `json:"node"`
	Formats Formats `json:"formats"`
}

// EncodeNode announces node's formats.
func EncodeNode(now int64, n NodeFormats) ([]byte, error) { return encodeJSON(entryNode, now, n) }

// EncodeSwitch switches the cluster to formats f.
func EncodeSwitch(now int64, f Formats) ([]byte, error) { return encodeJSON(entrySwitch, now, f) }

func (f *FSM) applyNode(n NodeFormats) any {
	if n.Node == "" {
		return errors.New("format announcement without a node")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes[n.Node] = n.Formats
	return nil
}

// applySwitch records the cluster's formats. It only grows: a switch to
// older formats changes nothing (a leader that read an old table).
func (f *FSM) applySwitch(to Formats) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inUse = f.inUse.Max(to)
	return nil
}

// NodeTable returns what each node announced.
func (f *FSM) NodeTable() map[string]Formats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.nodes)
}

// InUse is the formats the cluster switched to (zero before any switch).
func (f *FSM) InUse() Formats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inUse
}

// clusterState is the snapshot header's JSON part (version 2).
type clusterState struct {
	Leases map[uint32]Lease   `json:"leases"`
	Nodes  map[string]Formats `json:"nodes,omitempty"`
	InUse  Formats            `json:"in_use"`
}

func (f *FSM) marshalCluster() []byte {
	b, _ := json.Marshal(clusterState{Leases: f.leases, Nodes: f.nodes, InUse: f.inUse})
	return b
}
