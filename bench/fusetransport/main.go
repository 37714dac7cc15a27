// Command fusetransport measures what one FUSE request costs on this machine
// with nothing behind it: a null file system with one file whose writes
// (FOPEN_DIRECT_IO, so each pwrite is one WRITE request) and fsyncs are
// answered at once, served either the classic way (read(2) and writev(2) on
// /dev/fuse) or through FUSE-over-io_uring (Linux 6.14+, the fuse module's
// enable_uring parameter set). It speaks the FUSE protocol itself, without
// go-fuse, so both transports run the same handler code.
//
//	fusetransport serve -mode classic|uring MOUNTPOINT   (as root)
//	fusetransport client -threads N -secs S -pid SERVERPID FILE
//
// The client prints requests per second and the CPU time per request of the
// whole machine and of the server process. bench/fusetransport.sh runs both.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fusetransport serve|client ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (want serve or client)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fusetransport:", err)
		os.Exit(1)
	}
}

// FUSE protocol constants (include/uapi/linux/fuse.h).
const (
	opLookup      = 1
	opForget      = 2
	opGetattr     = 3
	opSetattr     = 4
	opOpen        = 14
	opWrite       = 16
	opStatfs      = 17
	opRelease     = 18
	opFsync       = 20
	opFlush       = 25
	opInit        = 26
	opOpendir     = 27
	opReleasedir  = 29
	opAccess      = 34
	opInterrupt   = 36
	opDestroy     = 38
	opBatchForget = 42

	inHeaderSize  = 40
	outHeaderSize = 16

	initExt       = 1 << 30
	initBigWrites = 1 << 5
	initMaxPages  = 1 << 22
	initOverUring = 1 << (41 - 32) // in flags2

	fopenDirectIO = 1 << 0

	uringCmdRegister       = 1
	uringCmdCommitAndFetch = 2

	maxWrite = 128 << 10
)

// handle answers one request: in is the opcode's own arguments followed by
// its payload, out receives the reply's arguments. It returns the reply
// length and an errno (0 for success), or -1 when no reply is due.
func handle(hdr []byte, in []byte, out []byte) (int, int32) {
	op := binary.LittleEndian.Uint32(hdr[4:])
	node := binary.LittleEndian.Uint64(hdr[16:])
	switch op {
	case opLookup:
		if node != 1 || !strings.HasPrefix(string(in), "f\x00") {
			return 0, -int32(syscall.ENOENT)
		}
		clear(out[:128])
		binary.LittleEndian.PutUint64(out[0:], 2)     // nodeid
		binary.LittleEndian.PutUint64(out[16:], 3600) // entry_valid
		binary.LittleEndian.PutUint64(out[24:], 3600) // attr_valid
		putAttr(out[40:], 2)
		return 128, 0
	case opGetattr, opSetattr:
		clear(out[:104])
		binary.LittleEndian.PutUint64(out[0:], 3600)
		putAttr(out[16:], node)
		return 104, 0
	case opOpen:
		clear(out[:16])
		binary.LittleEndian.PutUint64(out[0:], 1)
		binary.LittleEndian.PutUint32(out[8:], fopenDirectIO)
		return 16, 0
	case opOpendir:
		clear(out[:16])
		return 16, 0
	case opWrite:
		size := binary.LittleEndian.Uint32(in[16:])
		clear(out[:8])
		binary.LittleEndian.PutUint32(out[0:], size)
		return 8, 0
	case opStatfs:
		clear(out[:80])
		return 80, 0
	case opRelease, opReleasedir, opFsync, opFlush, opAccess:
		return 0, 0
	case opForget, opBatchForget, opInterrupt:
		return -1, 0
	case opDestroy:
		return 0, 0
	}
	return 0, -int32(syscall.ENOSYS)
}

func putAttr(b []byte, node uint64) {
	clear(b[:88])
	binary.LittleEndian.PutUint64(b[0:], node)
	mode, nlink := uint32(syscall.S_IFDIR|0o755), uint32(2)
	if node == 2 {
		mode, nlink = syscall.S_IFREG|0o666, 1
		binary.LittleEndian.PutUint64(b[8:], 1<<30) // size
	}
	binary.LittleEndian.PutUint32(b[60:], mode)
	binary.LittleEndian.PutUint32(b[64:], nlink)
	binary.LittleEndian.PutUint32(b[80:], 4096) // blksize
}

// argSize is the size of each opcode's first (fixed) argument, which the
// io_uring transport delivers apart from the payload.
func argSize(op uint32) int {
	switch op {
	case opGetattr:
		return 16
	case opSetattr:
		return 88
	case opOpen, opOpendir:
		return 8
	case opWrite:
		return 40
	case opRelease, opReleasedir:
		return 24
	case opFsync:
		return 16
	case opFlush:
		return 24
	case opAccess:
		return 8
	case opInit:
		return 64
	}
	return 0
}

func serve(args []string) error {
	fl := flag.NewFlagSet("serve", flag.ContinueOnError)
	mode := fl.String("mode", "classic", "transport: classic, uring or gofuse (go-fuse's own loop)")
	readers := fl.Int("readers", 4, "classic: reader threads")
	entries := fl.Int("entries", 4, "uring: ring entries per queue")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 1 {
		return fmt.Errorf("serve needs one mountpoint")
	}
	if *readers < 1 || *entries < 1 || *entries > 1024 {
		return fmt.Errorf("-readers %d -entries %d: want at least one reader and 1 to 1024 entries", *readers, *entries)
	}
	mnt := fl.Arg(0)
	switch *mode {
	case "gofuse":
		return serveGoFuse(mnt)
	case "classic", "uring":
	default:
		return fmt.Errorf("-mode %q: want classic, uring or gofuse", *mode)
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/fuse: %w", err)
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", fd)
	if err := unix.Mount("fusetransport", mnt, "fuse.fusetransport", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount %s: %w", mnt, err)
	}
	// INIT is read the classic way whatever the mode; the reply offers
	// io_uring when asked to.
	if err := classicInit(fd, *mode == "uring"); err != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
		return err
	}
	slog.Info("mounted", "mountpoint", mnt, "mode", *mode)
	var wg sync.WaitGroup
	// A queue that fails leaves its requests to the classic reader, which
	// would then be measured as io_uring: the server stops instead.
	failed := make(chan error, 1)
	// Classic readers run in both modes: before the ring is ready the
	// kernel still queues requests on /dev/fuse.
	n := *readers
	if *mode == "uring" {
		n = 1
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); classicLoop(fd) }()
	}
	if *mode == "uring" {
		ncpu, err := possibleCPUs()
		if err != nil {
			unix.Unmount(mnt, unix.MNT_DETACH)
			return err
		}
		for q := 0; q < ncpu; q++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := uringQueue(fd, q, *entries); err != nil {
					select {
					case failed <- fmt.Errorf("io_uring queue %d: %w", q, err):
					default:
					}
				}
			}()
		}
	}
	go func() { wg.Wait(); close(failed) }()
	if err := <-failed; err != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
		return err
	}
	return nil
}

func classicInit(fd int, uring bool) error {
	buf := make([]byte, maxWrite+4096)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return fmt.Errorf("read INIT: %w", err)
	}
	if n < inHeaderSize+16 || binary.LittleEndian.Uint32(buf[4:]) != opInit {
		return fmt.Errorf("first request is not INIT")
	}
	in := buf[inHeaderSize:n]
	major, minor := binary.LittleEndian.Uint32(in[0:]), binary.LittleEndian.Uint32(in[4:])
	if major != 7 {
		return fmt.Errorf("kernel speaks FUSE %d.%d; this server speaks 7.x", major, minor)
	}
	if uring && minor < 42 {
		return fmt.Errorf("kernel speaks FUSE 7.%d; io_uring needs 7.42 (Linux 6.14)", minor)
	}
	out := make([]byte, outHeaderSize+64)
	o := out[outHeaderSize:]
	binary.LittleEndian.PutUint32(o[0:], 7)
	binary.LittleEndian.PutUint32(o[4:], minor)
	binary.LittleEndian.PutUint32(o[8:], binary.LittleEndian.Uint32(in[8:])) // max_readahead
	binary.LittleEndian.PutUint32(o[12:], initExt|initBigWrites|initMaxPages)
	binary.LittleEndian.PutUint16(o[16:], 12) // max_background
	binary.LittleEndian.PutUint16(o[18:], 9)  // congestion_threshold
	binary.LittleEndian.PutUint32(o[20:], maxWrite)
	binary.LittleEndian.PutUint32(o[24:], 1) // time_gran
	binary.LittleEndian.PutUint16(o[28:], maxWrite/4096)
	if uring {
		binary.LittleEndian.PutUint32(o[32:], initOverUring)
	}
	return reply(fd, buf[:inHeaderSize], out, 0)
}

func reply(fd int, hdr []byte, out []byte, errno int32) error {
	binary.LittleEndian.PutUint32(out[0:], uint32(len(out)))
	binary.LittleEndian.PutUint32(out[4:], uint32(errno))
	copy(out[8:16], hdr[8:16])
	_, err := unix.Write(fd, out)
	return err
}

func classicLoop(fd int) {
	buf := make([]byte, maxWrite+4096)
	out := make([]byte, outHeaderSize+4096)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR || err == unix.ENOENT {
			continue
		}
		if err != nil {
			if err != unix.ENODEV {
				slog.Error("read /dev/fuse", "err", err)
			}
			return
		}
		if n < inHeaderSize {
			slog.Error("short read from /dev/fuse", "bytes", n)
			return
		}
		hdr := buf[:inHeaderSize]
		m, errno := handle(hdr, buf[inHeaderSize:n], out[outHeaderSize:])
		if m < 0 {
			continue
		}
		if errno != 0 {
			m = 0
		}
		if err := reply(fd, hdr, out[:outHeaderSize+m], errno); err != nil && err != unix.ENOENT {
			slog.Error("write /dev/fuse", "err", err)
			return
		}
	}
}

func possibleCPUs() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexAny(s, "-,"); i >= 0 {
		s = s[i+1:]
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("parse /sys/devices/system/cpu/possible %q: %w", b, err)
	}
	return n + 1, nil
}

// io_uring ABI (include/uapi/linux/io_uring.h).
const (
	setupSQE128        = 1 << 10
	setupSingleIssuer  = 1 << 12
	setupDeferTaskrun  = 1 << 13
	featSingleMmap     = 1
	offSQRing          = 0
	offSQEs            = 0x10000000
	enterGetEvents     = 1
	opUringCmd         = 46
	sqeSize            = 128
	cqeSize            = 16
	ringHeaderSize     = 288 // struct fuse_uring_req_header
	ringOpIn           = 128
	ringEntInOut       = 256
	ringEntPayloadSize = 272
)

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  [8]uint32
	sqUserAddr                                                             uint64
	cqOff                                                                  [8]uint32
	cqUserAddr                                                             uint64
}

type ring struct {
	fd            int
	mem, sqes     []byte
	sqHead        *uint32
	sqTail        *uint32
	sqMask        uint32
	sqArray       unsafe.Pointer
	cqHead        *uint32
	cqTail        *uint32
	cqMask        uint32
	cqes          unsafe.Pointer
	pendingSubmit uint32
}

func newRing(entries uint32) (*ring, error) {
	var p uringParams
	p.flags = setupSQE128 | setupSingleIssuer | setupDeferTaskrun
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", e)
	}
	if p.features&featSingleMmap == 0 {
		return nil, fmt.Errorf("io_uring lacks IORING_FEAT_SINGLE_MMAP")
	}
	sqSize := p.sqOff[6] + p.sqEntries*4
	cqSize := p.cqOff[5] + p.cqEntries*cqeSize
	size := max(sqSize, cqSize)
	mem, err := unix.Mmap(int(fd), offSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap rings: %w", err)
	}
	sqes, err := unix.Mmap(int(fd), offSQEs, int(p.sqEntries*sqeSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap sqes: %w", err)
	}
	at := func(off uint32) unsafe.Pointer { return unsafe.Pointer(&mem[off]) }
	return &ring{
		fd: int(fd), mem: mem, sqes: sqes,
		sqHead: (*uint32)(at(p.sqOff[0])), sqTail: (*uint32)(at(p.sqOff[1])),
		sqMask: *(*uint32)(at(p.sqOff[2])), sqArray: at(p.sqOff[6]),
		cqHead: (*uint32)(at(p.cqOff[0])), cqTail: (*uint32)(at(p.cqOff[1])),
		cqMask: *(*uint32)(at(p.cqOff[2])), cqes: at(p.cqOff[5]),
	}, nil
}

// sqe returns the next free submission entry, cleared.
func (r *ring) sqe() []byte {
	tail := atomic.LoadUint32(r.sqTail)
	idx := tail & r.sqMask
	*(*uint32)(unsafe.Add(r.sqArray, 4*idx)) = idx
	s := r.sqes[idx*sqeSize : (idx+1)*sqeSize]
	clear(s)
	atomic.StoreUint32(r.sqTail, tail+1)
	r.pendingSubmit++
	return s
}

// enter submits what is queued and waits for at least wait completions.
func (r *ring) enter(wait uint32) error {
	for {
		_, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(r.pendingSubmit), uintptr(wait), enterGetEvents, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("io_uring_enter: %w", e)
		}
		r.pendingSubmit = 0
		return nil
	}
}

type ringEnt struct {
	hdr, payload []byte
	iov          [2]unix.Iovec
}

func uringQueue(fuseFD, qid, entries int) error {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(qid)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin to cpu %d: %w", qid, err)
	}
	r, err := newRing(uint32(2 * entries))
	if err != nil {
		return err
	}
	payloadSize := maxWrite + 4096
	mem, err := unix.Mmap(-1, 0, entries*(ringHeaderSize+payloadSize)+4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return err
	}
	ents := make([]*ringEnt, entries)
	for i := range ents {
		base := i * (ringHeaderSize + payloadSize)
		e := &ringEnt{hdr: mem[base : base+ringHeaderSize], payload: mem[base+ringHeaderSize : base+ringHeaderSize+payloadSize]}
		e.iov[0].Base, e.iov[0].Len = &e.hdr[0], ringHeaderSize
		e.iov[1].Base, e.iov[1].Len = &e.payload[0], uint64(payloadSize)
		ents[i] = e
		s := r.sqe()
		prepCmd(s, fuseFD, uringCmdRegister, e, uint64(i), 0, qid)
	}
	// REGISTER answers EAGAIN until the kernel has processed the INIT reply.
	out := make([]byte, 4096)
	inBuf := make([]byte, ringOpIn+payloadSize)
	for {
		if err := r.enter(1); err != nil {
			return err
		}
		for {
			head := atomic.LoadUint32(r.cqHead)
			if head == atomic.LoadUint32(r.cqTail) {
				break
			}
			c := unsafe.Add(r.cqes, cqeSize*(head&r.cqMask))
			ud := *(*uint64)(c)
			res := *(*int32)(unsafe.Add(c, 8))
			atomic.StoreUint32(r.cqHead, head+1)
			e := ents[ud]
			if res < 0 {
				if syscall.Errno(-res) == unix.ENOTCONN {
					return nil // unmounted
				}
				if syscall.Errno(-res) == unix.EAGAIN {
					time.Sleep(time.Millisecond)
					prepCmd(r.sqe(), fuseFD, uringCmdRegister, e, ud, 0, qid)
					continue
				}
				return fmt.Errorf("entry %d: %w", ud, syscall.Errno(-res))
			}
			hdr := e.hdr[:inHeaderSize]
			op := binary.LittleEndian.Uint32(hdr[4:])
			payloadSz := binary.LittleEndian.Uint32(e.hdr[ringEntPayloadSize:])
			// The handler wants the opcode's arguments and payload
			// contiguous, as /dev/fuse delivers them.
			if int(payloadSz) > len(e.payload) {
				return fmt.Errorf("entry %d: payload of %d bytes in a %d-byte buffer", ud, payloadSz, len(e.payload))
			}
			a := argSize(op)
			in := inBuf[:a+int(payloadSz)]
			copy(in, e.hdr[ringOpIn:ringOpIn+a])
			copy(in[a:], e.payload[:payloadSz])
			m, errno := handle(hdr, in, out)
			if m < 0 {
				m, errno = 0, 0
			}
			if errno != 0 {
				m = 0
			}
			unique := binary.LittleEndian.Uint64(hdr[8:])
			binary.LittleEndian.PutUint32(e.hdr[0:], uint32(outHeaderSize+m))
			binary.LittleEndian.PutUint32(e.hdr[4:], uint32(errno))
			binary.LittleEndian.PutUint64(e.hdr[8:], unique)
			copy(e.payload, out[:m])
			binary.LittleEndian.PutUint32(e.hdr[ringEntPayloadSize:], uint32(m))
			prepCmd(r.sqe(), fuseFD, uringCmdCommitAndFetch, e, ud, unique, qid)
		}
	}
}

func prepCmd(s []byte, fuseFD int, cmd uint32, e *ringEnt, ud, commitID uint64, qid int) {
	s[0] = opUringCmd
	binary.LittleEndian.PutUint32(s[4:], uint32(fuseFD))
	binary.LittleEndian.PutUint32(s[8:], cmd)
	binary.LittleEndian.PutUint64(s[16:], uint64(uintptr(unsafe.Pointer(&e.iov[0]))))
	binary.LittleEndian.PutUint32(s[24:], 2)
	binary.LittleEndian.PutUint64(s[32:], ud)
	binary.LittleEndian.PutUint64(s[56:], commitID)
	binary.LittleEndian.PutUint16(s[64:], uint16(qid))
}

func client(args []string) error {
	fl := flag.NewFlagSet("client", flag.ContinueOnError)
	threads := fl.Int("threads", 2, "writer threads")
	secs := fl.Float64("secs", 10, "seconds to run")
	pid := fl.Int("pid", 0, "server pid, for its CPU time")
	size := fl.Int("size", 8192, "bytes per write")
	fsync := fl.Bool("fsync", false, "fdatasync after each write (two requests per loop)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 1 {
		return fmt.Errorf("client needs one file")
	}
	if *threads < 1 || *secs <= 0 || *size < 1 || *size > maxWrite {
		return fmt.Errorf("-threads %d -secs %g -size %d: want at least 1 thread, a positive duration and 1 to %d bytes", *threads, *secs, *size, maxWrite)
	}
	var ops atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	fail := func(err error) {
		firstErr.CompareAndSwap(nil, &err)
		stop.Store(true)
	}
	busy0, total0, err := machineTicks()
	if err != nil {
		return err
	}
	srv0, err := procTicks(*pid)
	if err != nil {
		return err
	}
	start := time.Now()
	for i := 0; i < *threads; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			fd, err := unix.Open(fl.Arg(0), unix.O_WRONLY, 0)
			if err != nil {
				fail(fmt.Errorf("open %s: %w", fl.Arg(0), err))
				return
			}
			defer unix.Close(fd)
			buf := make([]byte, *size)
			off := int64(i) * 64 << 20
			for !stop.Load() {
				if _, err := unix.Pwrite(fd, buf, off); err != nil {
					fail(fmt.Errorf("pwrite %s: %w", fl.Arg(0), err))
					return
				}
				n := int64(1)
				if *fsync {
					if err := unix.Fdatasync(fd); err != nil {
						fail(fmt.Errorf("fdatasync %s: %w", fl.Arg(0), err))
						return
					}
					n = 2
				}
				ops.Add(n)
			}
		}()
	}
	for end := time.Now().Add(time.Duration(*secs * float64(time.Second))); time.Now().Before(end) && !stop.Load(); {
		time.Sleep(10 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return *e
	}
	el := time.Since(start).Seconds()
	busy1, total1, _ := machineTicks()
	srv1, _ := procTicks(*pid)
	n := float64(ops.Load())
	if n == 0 {
		return fmt.Errorf("no request completed on %s", fl.Arg(0))
	}
	hz := 100.0
	machineUS := float64(busy1-busy0) / hz * 1e6 / n
	serverUS := float64(srv1-srv0) / hz * 1e6 / n
	fmt.Printf("requests/s %.0f  machine_us_per_request %.1f  server_us_per_request %.1f  busy %.0f%%\n",
		n/el, machineUS, serverUS, 100*float64(busy1-busy0)/float64(total1-total0))
	return nil
}

func machineTicks() (busy, total int64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
	for i, s := range f[1:] {
		v, _ := strconv.ParseInt(s, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, nil
}

func procTicks(pid int) (int64, error) {
	if pid == 0 {
		return 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k, nil
}
