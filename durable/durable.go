// Package durable holds the file-system steps that make a change survive a
// crash, shared by the storage packages. It imports no other neonfs
// package.
package durable

import (
	"fmt"
	"os"
)

// SyncDir fsyncs directory dir, so the names created, renamed or removed
// in it are on disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
