package objstore_test

import (
	"path/filepath"
	"testing"

	"github.com/neonfs/neonfs/objstore"
	"github.com/neonfs/neonfs/objstore/objstoretest"
)

func TestDirStoreConformance(t *testing.T) {
	s, err := objstore.NewDirStore(filepath.Join(t.TempDir(), "objects"))
	if err != nil {
		t.Fatal(err)
	}
	objstoretest.Run(t, s)
}

func TestMemStoreConformance(t *testing.T) {
	objstoretest.Run(t, objstore.NewMemStore())
}
