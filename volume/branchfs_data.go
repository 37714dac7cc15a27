package volume

// The data side of BranchFS: attributes and sizes, reads and writes of
// file blocks, fsync. The namespace side is in branchfs.go.

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"syscall"
	"time"

	"github.com/neonfs/neonfs/blockstore"
)

// SetAttr changes attributes; a size change truncates or extends the file.
func (f *BranchFS) SetAttr(ino uint64, c AttrChange) (Attr, syscall.Errno) {
	if c.Size != nil && *c.Size > MaxFileSize {
		return Attr{}, syscall.EFBIG
	}
	if errno := f.begin(bs + 256); errno != 0 {
		return Attr{}, errno
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.nodes[ino]
	if n == nil {
		return Attr{}, syscall.ENOENT
	}
	t := now()
	var puts []blockstore.Entry
	if c.Size != nil {
		if n.attr.IsDir() {
			return Attr{}, syscall.EISDIR
		}
		var errno syscall.Errno
		if puts, errno = f.resizeLocked(ino, n, *c.Size); errno != 0 {
			return Attr{}, errno
		}
		n.attr.Mtime = t
	}
	if c.Mode != nil {
		n.attr.Mode = n.attr.Mode&syscall.S_IFMT | *c.Mode&^syscall.S_IFMT
	}
	if c.Uid != nil {
		n.attr.Uid = *c.Uid
	}
	if c.Gid != nil {
		n.attr.Gid = *c.Gid
	}
	if c.Atime != nil {
		n.attr.Atime = *c.Atime
	}
	if c.Mtime != nil {
		n.attr.Mtime = *c.Mtime
	}
	n.attr.Ctime = t
	puts = append(puts, f.inodePut(ino, n))
	var errno syscall.Errno
	if c.Size == nil {
		errno = f.logAttrLocked(n, puts...)
	} else {
		errno = f.logLocked([]*node{n}, puts...)
	}
	return n.attr, errno
}

// resizeLocked sets the size and returns the block puts that make it true.
// Invariant: bytes of a block past the end of the file are zero, so growing
// needs no puts; shrinking zeroes the tail of the new last block and
// deletes the blocks past it, so a later grow cannot resurrect old bytes.
func (f *BranchFS) resizeLocked(ino uint64, n *node, size uint64) ([]blockstore.Entry, syscall.Errno) {
	old := n.attr.Size
	if size >= old {
		n.attr.Size = size
		return nil, 0
	}
	first := (size + bs - 1) / bs
	last := (old + bs - 1) / bs
	cut, errno := f.blocksIn(ino, first, last)
	if errno != 0 {
		return nil, errno
	}
	puts := make([]blockstore.Entry, 0, len(cut)+1)
	for _, b := range cut {
		puts = append(puts, blockstore.Entry{Key: blockstore.BlockKey(f.branch, ino, b),
			Version: blockstore.Version{Value: blockstore.Value{Kind: blockstore.ValTombstone}}})
	}
	if size%bs != 0 {
		b := size / bs
		page, errno := f.readBlock(ino, b)
		if errno != 0 {
			return nil, errno
		}
		clear(page[size%bs:])
		puts = append(puts, blockstore.Entry{Key: blockstore.BlockKey(f.branch, ino, b),
			Version: blockstore.Version{Value: blockstore.BlockValue(page)}})
	}
	n.attr.Size = size
	return puts, 0
}

// denseCut is how many blocks a shrink deletes one by one without looking
// which exist: a short cut costs less than a scan.
const denseCut = 1024

// blocksIn returns the block numbers in [first, last) that a shrink must
// delete. Over a long range (a sparse file of terabytes) it lists only the
// blocks that have a version: the committer's pending puts, then the block
// map (in that order, so a batch applied in between is seen in one or the
// other). The block map's list comes from the memtable and the layers'
// indexes (Store.KeysWritten), never the blocks themselves, so it may name
// blocks deleted already (holes a file grew over): one more tombstone each
// costs less than reading every block of a table a DROP TABLE truncates.
func (f *BranchFS) blocksIn(ino, first, last uint64) ([]uint64, syscall.Errno) {
	if last-first <= denseCut {
		out := make([]uint64, 0, last-first)
		for b := first; b < last; b++ {
			out = append(out, b)
		}
		return out, 0
	}
	from, to := blockstore.BlockKey(f.branch, ino, first), blockstore.BlockKey(f.branch, ino, last)
	set := make(map[uint64]struct{})
	for _, k := range f.vol.commit.KeysIn(from, to) {
		set[k.Block] = struct{}{}
	}
	for _, p := range f.lineage {
		err := f.vol.store.KeysWritten(context.Background(), p.Branch, from, to, 0, p.MaxLSN, func(k blockstore.Key) error {
			set[k.Block] = struct{}{}
			return nil
		})
		if err != nil {
			slog.Error("list blocks to truncate", "branch", f.name, "ino", ino, "err", err)
			return nil, syscall.EIO
		}
	}
	out := make([]uint64, 0, len(set))
	for b := range set {
		out = append(out, b)
	}
	slices.Sort(out)
	return out, 0
}

// readBlock returns a fresh copy of block b of ino (zeros when absent).
func (f *BranchFS) readBlock(ino, b uint64) ([]byte, syscall.Errno) {
	page := make([]byte, bs)
	v, ok, errno := f.lookupBlock(ino, b)
	if errno != 0 {
		return nil, errno
	}
	if ok && v.Kind == blockstore.ValData {
		copy(page, v.Data)
	}
	return page, 0
}

func (f *BranchFS) lookupBlock(ino, b uint64) (blockstore.Value, bool, syscall.Errno) {
	k := blockstore.BlockKey(f.branch, ino, b)
	if f.at == 0 {
		// Live: the newest writes may not be applied yet. A time-travel
		// view must not see them.
		if v, ok := f.vol.commit.Lookup(k); ok {
			return v, true, 0
		}
	}
	ver, ok, err := f.vol.store.Get(context.Background(), k, f.lineage)
	if err != nil {
		slog.Error("read block", "branch", f.name, "ino", ino, "block", b, "err", err)
		return blockstore.Value{}, false, syscall.EIO
	}
	return ver.Value, ok, 0
}

// Read fills dest from offset off and returns the bytes read (short at EOF).
func (f *BranchFS) Read(ino uint64, dest []byte, off int64) (int, syscall.Errno) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n := f.nodes[ino]
	if n == nil {
		return 0, syscall.ENOENT
	}
	if off < 0 {
		return 0, syscall.EINVAL
	}
	size := int64(n.attr.Size)
	if off >= size {
		return 0, 0
	}
	end := min(off+int64(len(dest)), size)
	dest = dest[:end-off]
	for pos := off; pos < end; {
		b := uint64(pos / bs)
		in := pos % bs
		cnt := min(int64(bs)-in, end-pos)
		out := dest[pos-off : pos-off+cnt]
		v, ok, errno := f.lookupBlock(ino, b)
		if errno != 0 {
			return 0, errno
		}
		if ok && v.Kind == blockstore.ValData {
			copy(out, v.Data[in:])
		} else {
			clear(out)
		}
		pos += cnt
	}
	return len(dest), 0
}

// Write stores data at off. Each touched block is one put, so a page
// written by one FUSE write is committed whole or not at all.
//
// A write to a file fsynced lately (Postgres's WAL) returns only once it
// is committed. The fsync that follows it would wait for that commit
// anyway; blocking here instead hands the commit to the committer and raft
// on this thread, where returning first makes the scheduler wake another
// thread for them, which costs about 0.1 ms on these machines (measured:
// +8% TPC-B).
func (f *BranchFS) Write(ino uint64, data []byte, off int64) (int, syscall.Errno) {
	return f.writeAt(ino, data, off, writeCached)
}

// WriteDirect is Write through a handle that bypasses the page cache
// without O_DSYNC (a WAL segment under wal_sync_method=fdatasync): it
// returns once the write is logged, never waiting for the commit, since
// such a write(2) is Postgres's own, made as it goes (a bulk load writes
// out full WAL buffers this way, thousands a second), not the kernel's
// flush on the way to an fsync; the fdatasync that follows is the
// barrier. A write to a file fsynced lately is still proposed at once.
func (f *BranchFS) WriteDirect(ino uint64, data []byte, off int64) (int, syscall.Errno) {
	return f.writeAt(ino, data, off, writeDirect)
}

// WriteSync is Write through a handle opened O_DSYNC (or O_SYNC): it
// returns only once the write and everything logged before it are
// committed, as fdatasync would, so an O_DSYNC write is durable when it
// returns (and an error means it may not be).
func (f *BranchFS) WriteSync(ino uint64, data []byte, off int64) (int, syscall.Errno) {
	return f.writeAt(ino, data, off, writeSync)
}

// writeMode is how a write reached the daemon, which decides whether it
// waits for its commit (writeAt).
type writeMode int

const (
	writeCached writeMode = iota // kernel writeback: waits when the file was fsynced lately
	writeDirect                  // a direct write(2): never waits
	writeSync                    // an O_DSYNC write(2): always waits
)

func (f *BranchFS) writeAt(ino uint64, data []byte, off int64, mode writeMode) (int, syscall.Errno) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off >= MaxFileSize {
		return 0, syscall.EFBIG
	}
	// As on ext4, a write crossing the limit is cut short at it.
	data = data[:min(int64(len(data)), MaxFileSize-off)]
	sync := mode == writeSync
	seq, urgent, errno := f.write(ino, data, off, sync)
	if errno != 0 {
		return 0, errno
	}
	if sync || urgent && mode == writeCached {
		start := time.Now()
		err := f.durable(seq)
		f.vol.syncWrites.Observe(time.Since(start).Seconds())
		if err != nil {
			slog.Error("write", "branch", f.name, "ino", ino, "sync", sync, "err", err)
			return 0, syscall.EIO
		}
	}
	return len(data), 0
}

// durable waits until seq is committed and applied under this branch's
// lease: an error means what was logged up to seq may not be durable.
func (f *BranchFS) durable(seq uint64) error {
	if err := f.waitCommit(seq); err != nil {
		return err
	}
	if f.fenced.Load() {
		// The lease was lost while waiting: what this branch wrote may be
		// refused by the log, so nothing can be acknowledged.
		return errors.New("writer lease lost")
	}
	return nil
}

func (f *BranchFS) write(ino uint64, data []byte, off int64, sync bool) (seq uint64, urgent bool, errno syscall.Errno) {
	if errno := f.begin(len(data) + 2*bs); errno != 0 {
		return 0, false, errno
	}
	// Whole blocks are copied before the lock: the branch lock serialises
	// every write, kernel writeback hands over up to 1 MiB at a time, and
	// copying that into fresh pages takes milliseconds. Copied under the
	// lock, a bulk load's writeback held the lock most of the time, and
	// the WAL pages an fdatasync sends queued behind it.
	end := off + int64(len(data))
	puts := make([]blockstore.Entry, 0, len(data)/bs+3)
	var partial []int // indexes in puts of blocks merged under the lock
	for pos := off; pos < end; {
		b := uint64(pos / bs)
		cnt := min(int64(bs)-pos%bs, end-pos)
		var v blockstore.Value
		if cnt == bs {
			v = blockstore.BlockValue(slices.Clone(data[pos-off : pos-off+cnt]))
		} else {
			partial = append(partial, len(puts))
		}
		puts = append(puts, blockstore.Entry{Key: blockstore.BlockKey(f.branch, ino, b),
			Version: blockstore.Version{Value: v}})
		pos += cnt
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.nodes[ino]
	if n == nil {
		return 0, false, syscall.ENOENT
	}
	if n.attr.IsDir() {
		return 0, false, syscall.EISDIR
	}
	size := int64(n.attr.Size)
	for _, i := range partial {
		b := puts[i].Key.Block
		start := int64(b) * bs
		in := max(off, start) - start
		src := data[start+in-off : min(end, start+bs)-off]
		var page []byte
		if start >= size {
			page = make([]byte, bs) // past EOF: nothing to merge with
		} else if page, errno = f.readBlock(ino, b); errno != 0 {
			return 0, false, errno
		}
		copy(page[in:], src)
		puts[i].Value = blockstore.BlockValue(page)
	}
	t := now()
	if end > size {
		n.attr.Size = uint64(end)
	}
	n.attr.Mtime, n.attr.Ctime = t, t
	puts = append(puts, f.inodePut(ino, n))
	urgent = sync || f.urgentLocked([]*node{n})
	if errno := f.logWith(urgent, true, []*node{n}, puts); errno != 0 {
		return 0, false, errno
	}
	return n.dataSeq, urgent, 0
}

// Allocate implements fallocate mode 0 (and KEEP_SIZE): space is never
// reserved in a log-structured store, so it only extends the size.
func (f *BranchFS) Allocate(ino uint64, off, length uint64, mode uint32) syscall.Errno {
	const keepSize = 1
	if mode&^keepSize != 0 {
		return syscall.EOPNOTSUPP
	}
	if off+length < off || off+length > MaxFileSize {
		return syscall.EFBIG
	}
	if mode&keepSize != 0 {
		return 0
	}
	f.mu.RLock()
	n := f.nodes[ino]
	grow := n != nil && off+length > n.attr.Size
	f.mu.RUnlock()
	if n == nil {
		return syscall.ENOENT
	}
	if !grow {
		return 0
	}
	size := off + length
	_, errno := f.SetAttr(ino, AttrChange{Size: &size})
	return errno
}

// Fsync returns once every change to ino so far is committed (with
// datasync, every change but timestamps, mode and owner). A directory's
// seq covers its entries, since every entry change also
// rewrites the directory inode. Every call is timed into the fsync
// histogram, those with nothing left to wait for too: that is what the
// caller sees.
func (f *BranchFS) Fsync(ino uint64, datasync bool) syscall.Errno {
	start := time.Now()
	defer func() { f.vol.fsyncs.Observe(time.Since(start).Seconds()) }()
	f.mu.RLock()
	n := f.nodes[ino]
	var seq uint64
	if n != nil {
		n.fsynced.Store(start.UnixNano())
		seq = n.lastSeq
		if datasync {
			seq = n.dataSeq
		}
	}
	f.mu.RUnlock()
	if seq == 0 {
		return 0
	}
	if err := f.durable(seq); err != nil {
		slog.Error("fsync", "branch", f.name, "ino", ino, "err", err)
		return syscall.EIO
	}
	return 0
}

// Sync waits for every change so far, on every file.
func (f *BranchFS) Sync() syscall.Errno {
	if err := f.vol.commit.Wait(f.vol.commit.Current()); err != nil {
		return syscall.EIO
	}
	return 0
}

// Forget drops an unlinked inode from memory once the kernel no longer
// references it.
func (f *BranchFS) Forget(ino uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := f.nodes[ino]; n != nil && n.attr.Nlink == 0 && ino != rootIno {
		delete(f.nodes, ino)
	}
}

// Counts returns the number of inodes and the bytes of file data.
func (f *BranchFS) Counts() (inodes, bytes uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, n := range f.nodes {
		inodes++
		bytes += n.attr.Size
	}
	return inodes, bytes
}

// Statfs reports the data dir's file system: that is where the log and the
// local object store grow.
func (f *BranchFS) Statfs() (syscall.Statfs_t, error) {
	var st syscall.Statfs_t
	err := syscall.Statfs(f.vol.dir, &st)
	return st, err
}
