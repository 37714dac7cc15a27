package raftwal

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/neonfs/neonfs/raftwal/raftwaltest"
)

// logBuf collects a mux's log lines; tests wait for a line rather than
// sleep, so they are as fast as the mux and do not flake on a slow host.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// mark is the log's length now: waitFor(t, l.mark(), ...) ignores lines
// logged before, so a subtest is not satisfied by an earlier one's line.
func (l *logBuf) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Len()
}

// waitFor waits until one log line written after offset from holds every
// part.
func (l *logBuf) waitFor(t *testing.T, from int, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(l.String()[from:], "\n") {
			if containsAll(line, parts) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q; log:\n%s", parts, l.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// newMux listens on a loopback port with a recorded log and closes the
// mux at the end of the test.
func newMux(t *testing.T, tlsc *tls.Config, opt muxOptions) (*Mux, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	opt.log = slog.New(slog.NewTextHandler(lb, nil))
	m, err := listen("127.0.0.1:0", "", tlsc, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close mux: %v", err)
		}
	})
	return m, lb
}

// serveEcho echoes every connection accepted on l until l is closed.
func serveEcho(l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// echo sends msg on c, expects it back and closes c. It returns an error
// rather than failing t so goroutines may call it.
func echo(c net.Conn, msg string) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("echo write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("echo read: %w", err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo: got %q, want %q", got, msg)
	}
	return nil
}

func checkEcho(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if err := echo(c, msg); err != nil {
		t.Fatal(err)
	}
}

// newTransport builds raft's own TCP transport on m and answers every
// RequestVote with a granted vote in the request's term.
func newTransport(t *testing.T, m *Mux) *raft.NetworkTransport {
	t.Helper()
	trans := raft.NewNetworkTransport(m.Raft(), 2, 2*time.Second, io.Discard)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case rpc := <-trans.Consumer():
				if req, ok := rpc.Command.(*raft.RequestVoteRequest); ok {
					rpc.Respond(&raft.RequestVoteResponse{Term: req.Term, Granted: true}, nil)
				} else {
					rpc.Respond(nil, errors.New("unexpected RPC"))
				}
			case <-done:
				return
			}
		}
	}()
	// Cleanups run last-in first-out: the transport closes before its mux.
	t.Cleanup(func() {
		close(done)
		trans.Close()
	})
	return trans
}

func requestVote(from *raft.NetworkTransport, to *Mux) (*raft.RequestVoteResponse, error) {
	req := &raft.RequestVoteRequest{
		RPCHeader: raft.RPCHeader{ID: []byte("candidate"), Addr: []byte(from.LocalAddr())},
		Term:      7,
	}
	var resp raft.RequestVoteResponse
	err := from.RequestVote("voter", raft.ServerAddress(to.Addr()), req, &resp)
	return &resp, err
}

// vote runs a RequestVote and checks it is granted; it returns an error
// rather than failing t so goroutines may call it.
func vote(from *raft.NetworkTransport, to *Mux) error {
	resp, err := requestVote(from, to)
	if err != nil {
		return fmt.Errorf("RequestVote %s -> %s: %w", from.LocalAddr(), to.Addr(), err)
	}
	if !resp.Granted || resp.Term != 7 {
		return fmt.Errorf("RequestVote: got %+v, want granted in term 7", resp)
	}
	return nil
}

func checkVote(t *testing.T, from *raft.NetworkTransport, to *Mux) {
	t.Helper()
	if err := vote(from, to); err != nil {
		t.Fatal(err)
	}
}

// expectRefused asserts a connection that dialed (or failed to) is not
// served: either the dial failed, or the peer closes it before answering.
func expectRefused(t *testing.T, c net.Conn, dialErr error) {
	t.Helper()
	if dialErr != nil {
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return
	}
	var b [4]byte
	n, err := io.ReadFull(c, b[:])
	if err == nil {
		t.Fatalf("refused connection answered %q", b[:n])
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("refused connection was left open: %v", err)
	}
}

func TestMuxPlain(t *testing.T) {
	m1, _ := newMux(t, nil, muxOptions{})
	m2, _ := newMux(t, nil, muxOptions{})
	serveEcho(m1.RPC())
	serveEcho(m2.RPC())
	t1 := newTransport(t, m1)
	t2 := newTransport(t, m2)
	if got := string(t1.LocalAddr()); got != m1.Addr() {
		t.Fatalf("transport local address %q, want the advertise address %q", got, m1.Addr())
	}

	// Both kinds at once on the same ports.
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for range 4 {
		wg.Go(func() { errs <- vote(t1, m2) })
		wg.Go(func() { errs <- vote(t2, m1) })
		wg.Go(func() {
			c, err := m1.Dial(m2.Addr(), KindRPC, 2*time.Second)
			if err == nil {
				err = echo(c, "hello over the shared port")
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestMuxListenAdvertise(t *testing.T) {
	for _, tc := range []struct{ bind, advertise, want string }{
		{"127.0.0.1:0", "0.0.0.0:7000", "0.0.0.0"},
		{"127.0.0.1:0", "[::]:7000", "::"},
		{"127.0.0.1:0", ":7000", "no host"},
		{"127.0.0.1:0", "10.0.0.1:0", "port"},
		{"0.0.0.0:0", "", "0.0.0.0"},
	} {
		m, err := Listen(tc.bind, tc.advertise, nil)
		if err == nil {
			m.Close()
			t.Errorf("Listen(%q, %q) succeeded", tc.bind, tc.advertise)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Listen(%q, %q): %v; want it to mention %q", tc.bind, tc.advertise, err, tc.want)
		}
	}

	m, err := Listen("127.0.0.1:0", "192.0.2.7:7000", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Addr() != "192.0.2.7:7000" || m.Raft().Addr().String() != "192.0.2.7:7000" {
		t.Fatalf("Addr %q, Raft().Addr %q: want the advertise address", m.Addr(), m.Raft().Addr())
	}

	if _, err := Listen("127.0.0.1:0", "", &tls.Config{}); err == nil || !strings.Contains(err.Error(), "client certificates") {
		t.Fatalf("Listen with a TLS config not verifying clients: %v", err)
	}
}

type tlsNode struct {
	cert, key string
	cfg       *tls.Config
}

func issue(t *testing.T, ca raftwaltest.CA, dir, name string) tlsNode {
	t.Helper()
	cert, key, err := ca.Issue(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadTLS(cert, key, ca.File)
	if err != nil {
		t.Fatal(err)
	}
	return tlsNode{cert, key, cfg}
}

func TestMuxTLS(t *testing.T) {
	dir := t.TempDir()
	caA, err := raftwaltest.WriteCA(dir, "caA")
	if err != nil {
		t.Fatal(err)
	}
	caB, err := raftwaltest.WriteCA(dir, "caB")
	if err != nil {
		t.Fatal(err)
	}
	n1 := issue(t, caA, dir, "n1")
	n2 := issue(t, caA, dir, "n2")
	nb := issue(t, caB, dir, "nb")

	m1, log1 := newMux(t, n1.cfg, muxOptions{})
	m2, _ := newMux(t, n2.cfg, muxOptions{})
	mb, logB := newMux(t, nb.cfg, muxOptions{})
	for _, m := range []*Mux{m1, m2, mb} {
		serveEcho(m.RPC())
	}
	t1 := newTransport(t, m1)
	t2 := newTransport(t, m2)
	tb := newTransport(t, mb)

	t.Run("good peers", func(t *testing.T) {
		checkVote(t, t1, m2)
		checkVote(t, t2, m1)
		c, err := m2.Dial(m1.Addr(), KindRPC, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		checkEcho(t, c, "over TLS")
	})

	t.Run("other CA dials good node", func(t *testing.T) {
		from := log1.mark()
		c, err := mb.Dial(m1.Addr(), KindRPC, 2*time.Second)
		expectRefused(t, c, err)
		log1.waitFor(t, from, "refused connection", "bad certificate", "remote=127.0.0.1:")
		if _, err := requestVote(tb, m1); err == nil {
			t.Fatal("raft RPC from a node of another CA succeeded")
		}
	})

	t.Run("good node dials other CA", func(t *testing.T) {
		from := logB.mark()
		c, err := m1.Dial(mb.Addr(), KindRPC, 2*time.Second)
		if err == nil {
			c.Close()
			t.Fatal("dial to a server with another CA's certificate succeeded")
		}
		if !strings.Contains(err.Error(), "not signed by the cluster CA") {
			t.Fatalf("dial error %v; want it to say the peer is not signed by the cluster CA", err)
		}
		logB.waitFor(t, from, "refused connection", "bad certificate", "remote=127.0.0.1:")
		if _, err := requestVote(t1, mb); err == nil {
			t.Fatal("raft RPC to a node of another CA succeeded")
		}
	})

	// Clients that skip server verification isolate the server's own
	// check of client certificates.
	pairB, err := tls.LoadX509KeyPair(nb.cert, nb.key)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, why string
		cert      *tls.Certificate
	}{
		{"client cert from other CA", "unknown authority", &pairB},
		{"no client cert", "provide a certificate", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from := log1.mark()
			cfg := &tls.Config{
				InsecureSkipVerify: true,
				MinVersion:         tls.VersionTLS13,
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					if tc.cert == nil {
						return &tls.Certificate{}, nil
					}
					return tc.cert, nil
				},
			}
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", m1.Addr(), cfg)
			remote := "remote=127.0.0.1:"
			if err == nil {
				// TLS 1.3: the client finishes its handshake before the
				// server has checked the client's certificate.
				remote = "remote=" + c.LocalAddr().String()
				_, err = c.Write([]byte{KindRPC})
			}
			expectRefused(t, c, err)
			log1.waitFor(t, from, "refused connection", tc.why, remote)
		})
	}

	t.Run("plain client", func(t *testing.T) {
		from := log1.mark()
		p, _ := newMux(t, nil, muxOptions{})
		c, err := p.Dial(m1.Addr(), KindRPC, 2*time.Second)
		if err != nil {
			t.Fatal(err) // plain dialing has nothing to refuse yet
		}
		expectRefused(t, c, nil)
		log1.waitFor(t, from, "refused connection", "TLS handshake", "remote="+c.LocalAddr().String())
	})
}

func TestMuxSilentAndUnknown(t *testing.T) {
	m, lb := newMux(t, nil, muxOptions{handshakeTimeout: 300 * time.Millisecond})
	serveEcho(m.RPC())

	silent, err := net.Dial("tcp", m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	// The silent connection holds no one up.
	c, err := m.Dial(m.Addr(), KindRPC, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkEcho(t, c, "not blocked")

	unknown, err := net.Dial("tcp", m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer unknown.Close()
	if _, err := unknown.Write([]byte("X")); err != nil {
		t.Fatal(err)
	}
	unknown.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := unknown.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("unknown kind: read %v, want EOF", err)
	}
	lb.waitFor(t, 0, "unknown kind byte", "kind=0x58", "remote="+unknown.LocalAddr().String())

	// The silent one is closed by the server after the handshake timeout,
	// not left to the client's deadline.
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("silent connection: read %v, want EOF", err)
	}
	lb.waitFor(t, 0, "refused connection", "read kind byte", "remote="+silent.LocalAddr().String())
}

func TestMuxQueueFull(t *testing.T) {
	// Nobody accepts KindRaft: its queue fills, the extra connection is
	// closed after queueTimeout, and RPC connections still flow.
	m, lb := newMux(t, nil, muxOptions{queueTimeout: 100 * time.Millisecond})
	serveEcho(m.RPC())
	for range acceptBacklog + 1 {
		c, err := m.Dial(m.Addr(), KindRaft, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	lb.waitFor(t, 0, "nobody accepting", "kind=R")
	c, err := m.Dial(m.Addr(), KindRPC, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkEcho(t, c, "other kinds flow")
}

func TestMuxClose(t *testing.T) {
	m, err := Listen("127.0.0.1:0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(m.RPC())

	// Raft's transport closes its stream layer on shutdown; RPCs go on.
	if err := m.Raft().Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Raft().Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on closed raft listener: %v, want net.ErrClosed", err)
	}
	c, err := m.Dial(m.Addr(), KindRPC, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkEcho(t, c, "rpc after raft closed")

	accepted := make(chan error, 1)
	go func() {
		_, err := m.RPC().Accept()
		accepted <- err
	}()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// serveEcho's loop may have won the race for Accept; either way one
	// Accept returns and it must be net.ErrClosed.
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked after Close")
	}
	if _, err := m.Dial(m.Addr(), KindRPC, time.Second); err == nil {
		t.Fatal("dial to a closed mux succeeded")
	}
}

func TestTLSLoadErrors(t *testing.T) {
	dir := t.TempDir()
	caA, err := raftwaltest.WriteCA(dir, "caA")
	if err != nil {
		t.Fatal(err)
	}
	caB, err := raftwaltest.WriteCA(dir, "caB")
	if err != nil {
		t.Fatal(err)
	}
	n1 := issue(t, caA, dir, "n1")
	n2 := issue(t, caA, dir, "n2")
	nbCert, nbKey, err := caB.Issue(dir, "nb")
	if err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a PEM file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	for _, tc := range []struct {
		name            string
		cert, key, ca   string
		wantFile, wantS string
	}{
		{"missing cert", missing, n1.key, caA.File, missing, "no such file"},
		{"missing key", n1.cert, missing, caA.File, missing, "no such file"},
		{"missing CA", n1.cert, n1.key, missing, missing, "no such file"},
		{"garbage cert", garbage, n1.key, caA.File, garbage, "no PEM CERTIFICATE"},
		{"garbage key", n1.cert, garbage, caA.File, garbage, "no PEM private key"},
		{"key is a certificate", n1.cert, n1.cert, caA.File, n1.cert, "no PEM private key"},
		{"key of another cert", n1.cert, n2.key, caA.File, n2.key, "does not match"},
		{"garbage CA", n1.cert, n1.key, garbage, garbage, "no PEM CERTIFICATE"},
		{"CA holding only a key", n1.cert, n1.key, n1.key, n1.key, "no PEM CERTIFICATE"},
		{"cert from other CA", nbCert, nbKey, caA.File, nbCert, "does not verify against CA file " + caA.File},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadTLS(tc.cert, tc.key, tc.ca)
			if err == nil {
				t.Fatal("LoadTLS succeeded")
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.wantFile) || !strings.Contains(msg, tc.wantS) {
				t.Fatalf("error %q; want it to name %s and say %q", msg, tc.wantFile, tc.wantS)
			}
			for _, keyFile := range []string{n1.key, n2.key, nbKey} {
				data, err := os.ReadFile(keyFile)
				if err != nil {
					t.Fatal(err)
				}
				for _, line := range strings.Split(string(data), "\n") {
					if len(line) > 8 && !strings.HasPrefix(line, "-----") && strings.Contains(msg, line) {
						t.Fatalf("error %q quotes key material", msg)
					}
				}
			}
		})
	}
}
