package objstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// MemStore is an ObjectStore in memory, for tests of what sits above the
// seam. Streamed objects are staged in the system's temporary directory.
type MemStore struct {
	mu   sync.Mutex
	objs map[string][]byte
}

var _ ObjectStore = (*MemStore)(nil)

func NewMemStore() *MemStore { return &MemStore{objs: map[string][]byte{}} }

func (m *MemStore) check(op, name string) error {
	if !ValidName(name) {
		return fmt.Errorf("%s object %q: invalid object name", op, name)
	}
	return nil
}

func (m *MemStore) Put(ctx context.Context, name string, data []byte) error {
	if err := m.check("put", name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put object %s: %w", name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.objs[name] = bytes.Clone(data)
	return nil
}

func (m *MemStore) CreateTemp(ctx context.Context, name string) (*os.File, error) {
	if err := m.check("put", name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("put object %s: %w", name, err)
	}
	return os.CreateTemp("", "neonfs-memstore-")
}

func (m *MemStore) PutFile(ctx context.Context, name string, f *os.File) error {
	defer DiscardTemp(f)
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("put object %s: %w", name, err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("put object %s: %w", name, err)
	}
	return m.Put(ctx, name, data)
}

func (m *MemStore) get(ctx context.Context, op, name string) ([]byte, error) {
	if err := m.check(op, name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s object %s: %w", op, name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.objs[name]
	if !ok {
		return nil, fmt.Errorf("%s object %s: %w", op, name, ErrNotFound)
	}
	return b, nil
}

func (m *MemStore) Get(ctx context.Context, name string) ([]byte, error) {
	b, err := m.get(ctx, "get", name)
	return bytes.Clone(b), err
}

func (m *MemStore) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	return m.ReadRange(ctx, name, off, n, nil)
}

func (m *MemStore) ReadRange(ctx context.Context, name string, off, n int64, buf []byte) ([]byte, error) {
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("get object %s: invalid range offset %d length %d", name, off, n)
	}
	b, err := m.get(ctx, "get", name)
	if err != nil {
		return nil, err
	}
	if off > int64(len(b)) || n > int64(len(b))-off {
		return nil, fmt.Errorf("get object %s: range [%d, %d+%d) beyond size %d: %w", name, off, off, n, len(b), ErrCorrupt)
	}
	return append(buf[:0], b[off:off+n]...), nil
}

func (m *MemStore) Size(ctx context.Context, name string) (int64, error) {
	b, err := m.get(ctx, "stat", name)
	return int64(len(b)), err
}

func (m *MemStore) Delete(ctx context.Context, name string) error {
	if _, err := m.get(ctx, "delete", name); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objs, name)
	return nil
}

func (m *MemStore) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list objects %q: %w", prefix, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ObjectInfo
	for name, b := range m.objs {
		if strings.HasPrefix(name, prefix) {
			out = append(out, ObjectInfo{Name: name, Size: int64(len(b))})
		}
	}
	slices.SortFunc(out, func(a, b ObjectInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (m *MemStore) Forget(string) {}

func (m *MemStore) RemoveStaleTemps(time.Duration) (int, int64, error) { return 0, 0, nil }
