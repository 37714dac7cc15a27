package raftwal

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Connection kinds: the first byte a dialer writes (after the TLS handshake
// when TLS is on). One port per node carries both, as in rqlite, so a
// cluster needs one address and one firewall rule per node.
const (
	KindRaft byte = 'R'
	KindRPC  byte = 'F'
)

const (
	// defaultHandshakeTimeout bounds the TLS handshake plus the read of
	// the kind byte, so a silent or slow client holds one goroutine and
	// one socket for at most this long.
	defaultHandshakeTimeout = 10 * time.Second
	// defaultQueueTimeout is how long a dispatched connection waits for a
	// full sub-listener queue (nobody accepting that kind) before it is
	// closed.
	defaultQueueTimeout = 5 * time.Second
	// acceptBacklog is each sub-listener's queue of dispatched connections.
	acceptBacklog = 16
)

// muxOptions are the knobs Listen fixes; tests and raftwal.go (which has
// its own logger) use listen directly.
type muxOptions struct {
	log              *slog.Logger
	handshakeTimeout time.Duration
	queueTimeout     time.Duration
}

// Mux is a node's one listening port. It accepts connections, completes
// the TLS handshake when configured, reads the kind byte and hands the
// connection to the sub-listener of that kind. Close closes everything.
type Mux struct {
	ln        net.Listener
	advertise string
	tlsc      *tls.Config // nil: plain TCP
	opt       muxOptions
	raft      *subListener
	rpc       *subListener

	done      chan struct{} // closed by Close
	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup // accept loop and dispatch goroutines

	mu      sync.Mutex
	closed  bool                  // guarded by mu; set before pending is emptied
	pending map[net.Conn]struct{} // accepted, not yet dispatched
}

// Listen listens on bind (HOST:PORT). advertise is the address peers dial;
// empty means the listener's address (so port 0 in bind is resolved). The
// advertise address must not be unspecified (0.0.0.0, [::]) or have port
// 0: peers could not dial it.
//
// With tlsc (see LoadTLS) every accepted connection must complete a TLS
// handshake presenting a client certificate that verifies against the CA;
// otherwise it is closed with a warning naming the remote address and the
// reason. tlsc is used for the dialing side too.
func Listen(bind, advertise string, tlsc *tls.Config) (*Mux, error) {
	return listen(bind, advertise, tlsc, muxOptions{})
}

func listen(bind, advertise string, tlsc *tls.Config, opt muxOptions) (*Mux, error) {
	if opt.log == nil {
		opt.log = slog.Default()
	}
	if opt.handshakeTimeout <= 0 {
		opt.handshakeTimeout = defaultHandshakeTimeout
	}
	if opt.queueTimeout <= 0 {
		opt.queueTimeout = defaultQueueTimeout
	}
	if tlsc != nil {
		// Refuse a config that would accept unauthenticated peers rather
		// than quietly tightening it: the caller should know.
		if tlsc.ClientAuth != tls.RequireAndVerifyClientCert || tlsc.ClientCAs == nil {
			return nil, errors.New("raftwal mux: TLS config must require and verify client certificates against a CA (build it with LoadTLS)")
		}
		if len(tlsc.Certificates) == 0 && tlsc.GetCertificate == nil {
			return nil, errors.New("raftwal mux: TLS config has no certificate (build it with LoadTLS)")
		}
		tlsc = tlsc.Clone()
	}
	if advertise != "" {
		if err := checkAdvertise(advertise); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("raftwal mux: listen on %s: %w", bind, err)
	}
	if advertise == "" {
		advertise = ln.Addr().String()
		if err := checkAdvertise(advertise); err != nil {
			ln.Close()
			return nil, fmt.Errorf("%w (set an advertise address when binding %s)", err, bind)
		}
	}
	m := &Mux{
		ln:        ln,
		advertise: advertise,
		tlsc:      tlsc,
		opt:       opt,
		done:      make(chan struct{}),
		pending:   make(map[net.Conn]struct{}),
	}
	m.raft = newSubListener(m, KindRaft)
	m.rpc = newSubListener(m, KindRPC)
	m.wg.Add(1)
	go m.acceptLoop()
	return m, nil
}

// checkAdvertise refuses addresses a peer cannot dial.
func checkAdvertise(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("raftwal mux: advertise address %q: %w", addr, err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("raftwal mux: advertise address %q: port must be 1-65535", addr)
	}
	if host == "" {
		return fmt.Errorf("raftwal mux: advertise address %q has no host: peers cannot dial it", addr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("raftwal mux: advertise address %q is unspecified (%s): peers cannot dial it", addr, host)
	}
	return nil
}

// Addr is the advertise address: what peers dial.
func (m *Mux) Addr() string { return m.advertise }

// Raft is the stream layer for raft.NewNetworkTransport: it accepts
// KindRaft connections and dials with KindRaft.
func (m *Mux) Raft() raft.StreamLayer { return raftStream{m.raft} }

// RPC accepts KindRPC connections.
func (m *Mux) RPC() net.Listener { return m.rpc }

// Dial connects to a peer's mux at addr, with TLS when m has it, and writes
// kind. timeout bounds connect, handshake and the write together; zero
// means none. The returned connection carries the kind's protocol.
func (m *Mux) Dial(addr string, kind byte, timeout time.Duration) (net.Conn, error) {
	ctx := context.Background()
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("raftwal mux: dial %s: %w", addr, err)
	}
	conn := raw
	if m.tlsc != nil {
		tc := tls.Client(raw, m.tlsc)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("raftwal mux: TLS handshake with %s: %w", addr, err)
		}
		conn = tc
	}
	if err := conn.SetWriteDeadline(deadline); err != nil {
		conn.Close()
		return nil, fmt.Errorf("raftwal mux: dial %s: %w", addr, err)
	}
	if _, err := conn.Write([]byte{kind}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("raftwal mux: dial %s: write kind byte: %w", addr, err)
	}
	if err := conn.SetWriteDeadline(time.Time{}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("raftwal mux: dial %s: %w", addr, err)
	}
	return conn, nil
}

// Close closes the listener, both sub-listeners, connections still in
// handshake and connections queued but not accepted. Connections already
// accepted belong to their acceptor and stay open. It waits for the mux's
// goroutines and is idempotent.
func (m *Mux) Close() error {
	m.closeOnce.Do(func() {
		close(m.done)
		m.closeErr = m.ln.Close()
		m.mu.Lock()
		m.closed = true
		for c := range m.pending {
			c.Close()
		}
		m.mu.Unlock()
		m.raft.Close()
		m.rpc.Close()
		m.wg.Wait()
		if m.closeErr != nil {
			m.closeErr = fmt.Errorf("raftwal mux: close %s: %w", m.ln.Addr(), m.closeErr)
		}
	})
	return m.closeErr
}

func (m *Mux) acceptLoop() {
	defer m.wg.Done()
	var delay time.Duration
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			// Errors other than closing (EMFILE, ECONNABORTED) are
			// transient from our side: back off rather than give up the
			// node's only port.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			m.opt.log.Warn("raftwal mux: accept failed", "addr", m.advertise, "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-m.done:
				return
			}
			continue
		}
		delay = 0
		if !m.track(c) {
			c.Close()
			return
		}
		m.wg.Add(1)
		go m.dispatch(c)
	}
}

// track records c as in handshake so Close can interrupt it; false once
// the mux is closed.
func (m *Mux) track(c net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.pending[c] = struct{}{}
	return true
}

func (m *Mux) untrack(c net.Conn) {
	m.mu.Lock()
	delete(m.pending, c)
	m.mu.Unlock()
}

func (m *Mux) isClosed() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// dispatch runs the handshake and routes c by its kind byte. One goroutine
// per connection, so a slow client never delays the accept loop.
func (m *Mux) dispatch(raw net.Conn) {
	defer m.wg.Done()
	remote := raw.RemoteAddr().String()
	conn, kind, err := m.handshake(raw)
	m.untrack(raw)
	if err != nil {
		raw.Close()
		if !m.isClosed() {
			m.opt.log.Warn("raftwal mux: refused connection", "remote", remote, "err", err)
		}
		return
	}
	switch kind {
	case KindRaft:
		m.raft.enqueue(conn, remote)
	case KindRPC:
		m.rpc.enqueue(conn, remote)
	default:
		conn.Close()
		m.opt.log.Warn("raftwal mux: refused connection: unknown kind byte", "remote", remote, "kind", fmt.Sprintf("%#02x", kind))
	}
}

// handshake completes TLS (when on) and reads the kind byte, all under one
// deadline.
func (m *Mux) handshake(raw net.Conn) (net.Conn, byte, error) {
	if err := raw.SetDeadline(time.Now().Add(m.opt.handshakeTimeout)); err != nil {
		return nil, 0, err
	}
	conn := raw
	if m.tlsc != nil {
		tc := tls.Server(raw, m.tlsc)
		if err := tc.Handshake(); err != nil {
			return nil, 0, fmt.Errorf("TLS handshake: %w", err)
		}
		conn = tc
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return nil, 0, fmt.Errorf("read kind byte: %w", err)
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, 0, err
	}
	return conn, b[0], nil
}

// subListener is the net.Listener of one connection kind.
type subListener struct {
	m      *Mux
	kind   byte
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newSubListener(m *Mux, kind byte) *subListener {
	return &subListener{m: m, kind: kind, conns: make(chan net.Conn, acceptBacklog), closed: make(chan struct{})}
}

// enqueue hands c to Accept, waiting at most queueTimeout for room.
// Invariant: a connection in conns after closed is closed gets drained,
// either by Close (sent before) or by enqueue itself (sent after).
func (s *subListener) enqueue(c net.Conn, remote string) {
	t := time.NewTimer(s.m.opt.queueTimeout)
	defer t.Stop()
	select {
	case s.conns <- c:
		select {
		case <-s.closed:
			s.drain()
		default:
		}
	case <-s.closed:
		c.Close()
	case <-t.C:
		c.Close()
		s.m.opt.log.Warn("raftwal mux: closed connection: nobody accepting its kind",
			"remote", remote, "kind", string(s.kind), "waited", s.m.opt.queueTimeout)
	}
}

func (s *subListener) drain() {
	for {
		select {
		case c := <-s.conns:
			c.Close()
		default:
			return
		}
	}
}

// Accept returns the next connection of this kind, or an error wrapping
// net.ErrClosed once this sub-listener or the mux is closed.
func (s *subListener) Accept() (net.Conn, error) {
	select {
	case <-s.closed:
		return nil, s.errClosed()
	default:
	}
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.closed:
		return nil, s.errClosed()
	}
}

func (s *subListener) errClosed() error {
	return fmt.Errorf("raftwal mux %s: %q listener: %w", s.m.advertise, s.kind, net.ErrClosed)
}

// Close stops this kind only: raft's transport closes its stream layer on
// shutdown, which must not take the RPC listener down with it. Queued
// connections are closed.
func (s *subListener) Close() error {
	s.once.Do(func() {
		close(s.closed)
		s.drain()
	})
	return nil
}

// Addr is the mux's advertise address: raft's NetworkTransport reports it
// as the node's own address.
func (s *subListener) Addr() net.Addr { return advertiseAddr(s.m.advertise) }

type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }

// raftStream adds raft's Dial to the KindRaft sub-listener.
type raftStream struct{ *subListener }

func (r raftStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return r.m.Dial(string(address), KindRaft, timeout)
}
