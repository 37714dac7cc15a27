package volume

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/volume/commit"
	"github.com/neonfs/neonfs/volume/fsm"
)

const bs = blockstore.BlockSize

// BranchFS is the POSIX view of one branch: the namespace in memory
// (loaded from the block map at mount), file data read through the
// committer's overlay and the block map, every change put into the log.
// The FUSE layer translates requests into these calls; the decisions live
// here. Errors are errnos because that is the vocabulary of the callers.
//
// The mounting daemon is the only writer of a branch, so the in-memory
// namespace is authoritative while mounted.
type BranchFS struct {
	vol      *Volume
	branch   uint32
	name     string
	lineage  []blockstore.ReadPoint
	readOnly bool
	at       uint64 // the LSN of a time-travel mount; 0 when live

	mountpoint string // where the daemon serves it, for listings

	// Cluster nodes: the writer lease a read-write mount holds, and
	// whether it was lost (then every write and fsync fails).
	lease    *lease
	fenced   atomic.Bool
	fencedCh chan struct{} // closed when fenced (lease != nil only)

	// mu orders mutations: a change and the Put that logs it happen under
	// it, so the log order is the order the file system saw.
	mu    sync.RWMutex
	nodes map[uint64]*node
}

type node struct {
	attr     Attr
	children map[string]uint64 // directories only
	parent   uint64            // directories only: the one directory naming it (the root's is itself)
	lastSeq  uint64            // batch holding the last change, for fsync
	// dataSeq is the batch holding the last change fdatasync must wait
	// for: everything but timestamp, mode and owner changes. With writeback
	// caching the kernel sends the mtime as its own SETATTR right before
	// each fsync; a WAL fdatasync should not wait for that.
	dataSeq uint64
	// fsynced is when the file was last fsynced (unix ns): changes to a
	// file fsynced lately (a WAL) are committed at once, since an fsync is
	// about to wait for them; others may linger to share a commit.
	fsynced atomic.Int64
}

// urgentWindow is how recently a file must have been fsynced for its
// changes to be committed without lingering.
const urgentWindow = time.Second

// DirEntry is one name in a directory.
type DirEntry struct {
	Name string
	Ino  uint64
	Mode uint32
}

// AttrChange lists the attributes a setattr changes; nil fields stay.
type AttrChange struct {
	Mode, Uid, Gid *uint32
	Size           *uint64
	Atime, Mtime   *int64
}

func now() int64 { return time.Now().UnixNano() }

// Limits, matched to ext4 so a program sees the errno it would see on a
// native data directory.
const (
	// MaxFileSize is ext4's largest file (4 KiB blocks): 16 TiB - 4 KiB.
	// Writes and truncates past it get EFBIG.
	MaxFileSize = 16<<40 - 4096
	// MaxSymlinkLen is the longest symlink target: PATH_MAX without its
	// NUL. Longer targets get ENAMETOOLONG.
	MaxSymlinkLen = 4095
)

// checkName refuses names a dirent key cannot hold (NAME_MAX). The kernel
// passes FUSE names of up to 1024 bytes, so every call taking a name checks
// it before changing anything.
func checkName(names ...string) syscall.Errno {
	for _, n := range names {
		if len(n) > blockstore.MaxNameLen {
			return syscall.ENAMETOOLONG
		}
	}
	return 0
}

// load builds the namespace from the block map.
func (f *BranchFS) load(ctx context.Context) error {
	store := f.vol.store
	f.nodes = make(map[uint64]*node)
	from := blockstore.Key{Kind: blockstore.KindDirent}
	to := blockstore.Key{Kind: blockstore.KindBlock}
	var dirents []blockstore.Entry
	err := store.ScanLatest(ctx, f.lineage, from, to, func(e blockstore.Entry) error {
		switch e.Key.Kind {
		case blockstore.KindInode:
			a, err := decodeAttr(e.Value.Data)
			if err != nil {
				return errors.Join(err, errors.New(e.Key.String()))
			}
			f.nodes[e.Key.Ino] = &node{attr: a}
		case blockstore.KindDirent:
			dirents = append(dirents, e)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, n := range f.nodes {
		if n.attr.IsDir() {
			n.children = make(map[string]uint64)
		}
	}
	for _, e := range dirents {
		child, _, err := decodeDirent(e.Value.Data)
		if err != nil {
			return errors.Join(err, errors.New(e.Key.String()))
		}
		p := f.nodes[e.Key.Ino]
		if p == nil || p.children == nil || f.nodes[child] == nil {
			slog.Warn("dangling directory entry", "key", e.Key.String(), "child", child)
			continue
		}
		p.children[e.Key.Name] = child
		f.nodes[child].parent = e.Key.Ino
	}
	root := f.nodes[rootIno]
	if root == nil {
		return errors.New("branch has no root directory")
	}
	root.parent = rootIno
	return nil
}

// Name is the branch's name.
func (f *BranchFS) Name() string { return f.name }

// pidFiles lists postmaster.pid entries of Postgres data directories
// (those holding PG_VERSION) in the live namespace.
func (f *BranchFS) pidFiles() []fsm.DirentRef {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []fsm.DirentRef
	for ino, n := range f.nodes {
		if n.children == nil {
			continue
		}
		if _, pg := n.children["PG_VERSION"]; !pg {
			continue
		}
		if _, ok := n.children["postmaster.pid"]; ok {
			out = append(out, fsm.DirentRef{Dir: ino, Name: "postmaster.pid"})
		}
	}
	return out
}

// SetMountpoint records where the branch is served.
func (f *BranchFS) SetMountpoint(m string) {
	f.vol.mu.Lock()
	f.mountpoint = m
	f.vol.mu.Unlock()
}

// place names the mount for messages: its mountpoint, or its name when it
// is served in-process.
func (f *BranchFS) place() string {
	f.vol.mu.Lock()
	defer f.vol.mu.Unlock()
	if f.mountpoint == "" {
		return f.name
	}
	return f.mountpoint
}

// ReadOnly reports whether writes return EROFS.
func (f *BranchFS) ReadOnly() bool { return f.readOnly }

func (f *BranchFS) inodePut(ino uint64, n *node) blockstore.Entry {
	return blockstore.Entry{Key: blockstore.InodeKey(f.branch, ino),
		Version: blockstore.Version{Value: blockstore.Value{Data: encodeAttr(n.attr)}}}
}

func (f *BranchFS) direntPut(parent uint64, name string, child uint64, mode uint32) blockstore.Entry {
	return blockstore.Entry{Key: blockstore.DirentKey(f.branch, parent, name),
		Version: blockstore.Version{Value: blockstore.Value{Data: encodeDirent(child, mode)}}}
}

func (f *BranchFS) direntDel(parent uint64, name string) blockstore.Entry {
	return blockstore.Entry{Key: blockstore.DirentKey(f.branch, parent, name),
		Version: blockstore.Version{Value: blockstore.Value{Kind: blockstore.ValTombstone}}}
}

// logLocked puts the change into the log and marks the nodes it touched.
func (f *BranchFS) logLocked(touched []*node, puts ...blockstore.Entry) syscall.Errno {
	return f.logWith(f.urgentLocked(touched), true, touched, puts)
}

// urgentLocked reports whether a change to touched should be committed
// without lingering: one of them was fsynced lately.
func (f *BranchFS) urgentLocked(touched []*node) bool {
	recent := time.Now().Add(-urgentWindow).UnixNano()
	for _, n := range touched {
		if n.fsynced.Load() > recent {
			return true
		}
	}
	return false
}

// logAttrLocked logs a change fdatasync does not wait for (timestamps,
// mode, owner). It lingers: with writeback caching the kernel sends the
// mtime as a SETATTR right before each fsync, and committing it at once
// would cost a commit no one waits for.
func (f *BranchFS) logAttrLocked(n *node, puts ...blockstore.Entry) syscall.Errno {
	return f.logWith(false, false, []*node{n}, puts)
}

// logWith puts the change, urgent or lingering (Committer.Put, PutLazy),
// and marks the nodes; data says whether fdatasync waits for it.
func (f *BranchFS) logWith(urgent, data bool, touched []*node, puts []blockstore.Entry) syscall.Errno {
	seq, err := f.vol.commit.Submit(urgent, puts)
	if errors.Is(err, blockstore.ErrNameTooLong) {
		return syscall.ENAMETOOLONG // callers check names first; this is the last line
	}
	if err != nil {
		slog.Error("log change", "branch", f.name, "err", err)
		return syscall.EIO
	}
	for _, n := range touched {
		n.lastSeq = seq
		if data {
			n.dataSeq = seq
		}
	}
	return 0
}

// begin checks the branch can change and passes the admission gate,
// before any lock is taken (it may wait).
func (f *BranchFS) begin(bytes int) syscall.Errno {
	if f.readOnly {
		return syscall.EROFS
	}
	if f.fenced.Load() {
		return syscall.EIO
	}
	return commit.Errno(f.vol.gate.Wait(bytes))
}

// GetAttr returns an inode's attributes.
func (f *BranchFS) GetAttr(ino uint64) (Attr, syscall.Errno) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n := f.nodes[ino]
	if n == nil {
		return Attr{}, syscall.ENOENT
	}
	return n.attr, 0
}

// Lookup finds name in directory parent.
func (f *BranchFS) Lookup(parent uint64, name string) (uint64, Attr, syscall.Errno) {
	if errno := checkName(name); errno != 0 {
		return 0, Attr{}, errno
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	p := f.nodes[parent]
	if p == nil || p.children == nil {
		return 0, Attr{}, syscall.ENOTDIR
	}
	ino, ok := p.children[name]
	if !ok {
		return 0, Attr{}, syscall.ENOENT
	}
	return ino, f.nodes[ino].attr, 0
}

// Readdir lists a directory: "." and "..", then the names in name order
// (stable across calls, as FUSE readdir offsets need).
func (f *BranchFS) Readdir(ino uint64) ([]DirEntry, syscall.Errno) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n := f.nodes[ino]
	if n == nil || n.children == nil {
		return nil, syscall.ENOTDIR
	}
	out := make([]DirEntry, 0, len(n.children)+2)
	for name, c := range n.children {
		out = append(out, DirEntry{Name: name, Ino: c, Mode: f.nodes[c].attr.Mode})
	}
	slices.SortFunc(out, func(a, b DirEntry) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	dots := []DirEntry{{Name: ".", Ino: ino, Mode: syscall.S_IFDIR}, {Name: "..", Ino: n.parent, Mode: syscall.S_IFDIR}}
	return append(dots, out...), 0
}

// Readlink returns a symlink's target.
func (f *BranchFS) Readlink(ino uint64) (string, syscall.Errno) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n := f.nodes[ino]
	if n == nil {
		return "", syscall.ENOENT
	}
	if n.attr.Mode&syscall.S_IFMT != syscall.S_IFLNK {
		return "", syscall.EINVAL
	}
	return n.attr.Target, 0
}

// Create makes a new inode named name in parent: a file, directory,
// symlink or special file depending on mode.
func (f *BranchFS) Create(parent uint64, name string, mode, uid, gid, rdev uint32, target string) (uint64, Attr, syscall.Errno) {
	if errno := checkName(name); errno != 0 {
		return 0, Attr{}, errno
	}
	if len(target) > MaxSymlinkLen {
		return 0, Attr{}, syscall.ENAMETOOLONG
	}
	if errno := f.begin(256 + len(target)); errno != 0 {
		return 0, Attr{}, errno
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.nodes[parent]
	if p == nil || p.children == nil {
		return 0, Attr{}, syscall.ENOTDIR
	}
	if _, ok := p.children[name]; ok {
		return 0, Attr{}, syscall.EEXIST
	}
	t := now()
	ino := f.vol.allocIno()
	n := &node{attr: Attr{Mode: mode, Uid: uid, Gid: gid, Nlink: 1, Rdev: rdev,
		Atime: t, Mtime: t, Ctime: t, Target: target}}
	if n.attr.IsDir() {
		n.attr.Nlink = 2
		n.children = make(map[string]uint64)
		n.parent = parent
		p.attr.Nlink++
	}
	if target != "" {
		n.attr.Size = uint64(len(target))
	}
	p.attr.Mtime, p.attr.Ctime = t, t
	f.nodes[ino] = n
	p.children[name] = ino
	errno := f.logLocked([]*node{n, p}, f.inodePut(ino, n), f.direntPut(parent, name, ino, mode), f.inodePut(parent, p))
	return ino, n.attr, errno
}

// Link adds name in parent for the existing inode ino.
func (f *BranchFS) Link(ino, parent uint64, name string) (Attr, syscall.Errno) {
	if errno := checkName(name); errno != 0 {
		return Attr{}, errno
	}
	if errno := f.begin(256); errno != 0 {
		return Attr{}, errno
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p, n := f.nodes[parent], f.nodes[ino]
	if p == nil || p.children == nil {
		return Attr{}, syscall.ENOTDIR
	}
	if n == nil {
		return Attr{}, syscall.ENOENT
	}
	if n.attr.IsDir() {
		return Attr{}, syscall.EPERM
	}
	if _, ok := p.children[name]; ok {
		return Attr{}, syscall.EEXIST
	}
	t := now()
	n.attr.Nlink++
	n.attr.Ctime = t
	p.attr.Mtime, p.attr.Ctime = t, t
	p.children[name] = ino
	errno := f.logLocked([]*node{n, p}, f.inodePut(ino, n), f.direntPut(parent, name, ino, n.attr.Mode), f.inodePut(parent, p))
	return n.attr, errno
}

// Remove unlinks name from parent; dir says whether this is rmdir.
// An unlinked file stays readable through open handles: its inode and
// blocks are left in place (inode numbers are never reused).
func (f *BranchFS) Remove(parent uint64, name string, dir bool) syscall.Errno {
	if errno := checkName(name); errno != 0 {
		return errno
	}
	if errno := f.begin(256); errno != 0 {
		return errno
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.nodes[parent]
	if p == nil || p.children == nil {
		return syscall.ENOTDIR
	}
	ino, ok := p.children[name]
	if !ok {
		return syscall.ENOENT
	}
	n := f.nodes[ino]
	if dir != n.attr.IsDir() {
		if dir {
			return syscall.ENOTDIR
		}
		return syscall.EISDIR
	}
	if dir && len(n.children) > 0 {
		return syscall.ENOTEMPTY
	}
	t := now()
	delete(p.children, name)
	p.attr.Mtime, p.attr.Ctime = t, t
	if dir {
		p.attr.Nlink--
		n.attr.Nlink = 0
	} else {
		n.attr.Nlink--
	}
	n.attr.Ctime = t
	return f.logLocked([]*node{n, p}, f.direntDel(parent, name), f.inodePut(ino, n), f.inodePut(parent, p))
}

// Rename flags, as in renameat2(2).
const (
	RenameNoReplace = 1
	RenameExchange  = 2
)

// Rename moves oldName in oldParent to newName in newParent; an existing
// target is replaced atomically (one log entry holds the whole change).
func (f *BranchFS) Rename(oldParent uint64, oldName string, newParent uint64, newName string, flags uint32) syscall.Errno {
	if errno := checkName(oldName, newName); errno != 0 {
		return errno
	}
	if errno := f.begin(512); errno != 0 {
		return errno
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	op, np := f.nodes[oldParent], f.nodes[newParent]
	if op == nil || np == nil || op.children == nil || np.children == nil {
		return syscall.ENOTDIR
	}
	srcIno, ok := op.children[oldName]
	if !ok {
		return syscall.ENOENT
	}
	src := f.nodes[srcIno]
	dstIno, exists := np.children[newName]
	t := now()
	touched := []*node{src, op, np}
	var puts []blockstore.Entry
	switch {
	case flags&RenameExchange != 0:
		if !exists {
			return syscall.ENOENT
		}
		dst := f.nodes[dstIno]
		op.children[oldName], np.children[newName] = dstIno, srcIno
		if src.attr.IsDir() != dst.attr.IsDir() && oldParent != newParent {
			if src.attr.IsDir() {
				op.attr.Nlink--
				np.attr.Nlink++
			} else {
				op.attr.Nlink++
				np.attr.Nlink--
			}
		}
		dst.attr.Ctime = t
		if dst.attr.IsDir() {
			dst.parent = oldParent
		}
		touched = append(touched, dst)
		puts = append(puts, f.direntPut(oldParent, oldName, dstIno, dst.attr.Mode), f.inodePut(dstIno, dst))
	case exists && flags&RenameNoReplace != 0:
		return syscall.EEXIST
	case exists:
		if dstIno == srcIno {
			return 0
		}
		dst := f.nodes[dstIno]
		if dst.attr.IsDir() {
			if !src.attr.IsDir() {
				return syscall.EISDIR
			}
			if len(dst.children) > 0 {
				return syscall.ENOTEMPTY
			}
			dst.attr.Nlink = 0
			np.attr.Nlink--
		} else {
			if src.attr.IsDir() {
				return syscall.ENOTDIR
			}
			dst.attr.Nlink--
		}
		dst.attr.Ctime = t
		touched = append(touched, dst)
		puts = append(puts, f.inodePut(dstIno, dst))
		fallthrough
	default:
		delete(op.children, oldName)
		np.children[newName] = srcIno
		puts = append(puts, f.direntDel(oldParent, oldName))
		if src.attr.IsDir() && oldParent != newParent {
			op.attr.Nlink--
			np.attr.Nlink++
		}
	}
	src.attr.Ctime = t
	if src.attr.IsDir() {
		src.parent = newParent
	}
	op.attr.Mtime, op.attr.Ctime = t, t
	np.attr.Mtime, np.attr.Ctime = t, t
	puts = append(puts, f.direntPut(newParent, newName, srcIno, src.attr.Mode),
		f.inodePut(srcIno, src), f.inodePut(oldParent, op), f.inodePut(newParent, np))
	return f.logLocked(touched, puts...)
}
