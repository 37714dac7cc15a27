// Package sqlproxy is the client-facing listener of an endpoint: it accepts
// Postgres connections, reads each one's startup message, asks its Backend
// for a connection to Postgres (which may wake a suspended one, however
// long that takes: the client waits), then relays bytes both ways and
// reports them as activity. When the backend cannot be had, the client
// gets a Postgres ErrorResponse naming why, not a dropped socket. It
// depends only on the Backend interface: never on the daemon, the volume
// or pgserve.
package sqlproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Backend is what the proxy needs of an endpoint.
type Backend interface {
	// Dial returns a connection to the endpoint's Postgres, waking it
	// first when it is suspended. done is called when the relayed
	// connection ends.
	Dial(ctx context.Context) (conn net.Conn, done func(), err error)
	// Touch records activity: bytes were relayed.
	Touch()
}

// Startup codes (the protocol's special "versions").
const (
	sslRequest    = 80877103
	gssEncRequest = 80877104
	cancelRequest = 80877102
	// maxStartup bounds a startup message (Postgres allows 10000 bytes).
	maxStartup = 10000
)

// Proxy serves one listener.
type Proxy struct {
	ln      net.Listener
	backend Backend
	// WakeTimeout bounds how long a client waits for the backend.
	WakeTimeout time.Duration

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// Serve accepts connections on ln until Close.
func Serve(ln net.Listener, b Backend) *Proxy {
	p := &Proxy{ln: ln, backend: b, WakeTimeout: 5 * time.Minute, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p
}

// Addr is the listening address.
func (p *Proxy) Addr() net.Addr { return p.ln.Addr() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				slog.Error("sql proxy: accept", "addr", p.ln.Addr(), "err", err)
			}
			return
		}
		if !p.track(c, true) {
			c.Close()
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.track(c, false)
			p.serve(c)
		}()
	}
}

func (p *Proxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		if p.closed {
			return false
		}
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
	return true
}

// Close stops accepting, ends every relayed connection and waits for them.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) serve(client net.Conn) {
	defer client.Close()
	client.SetReadDeadline(time.Now().Add(30 * time.Second))
	startup, err := readStartup(client)
	if err != nil {
		slog.Debug("sql proxy: bad startup", "client", client.RemoteAddr(), "err", err)
		if errors.Is(err, errProtocol) {
			writeError(client, "08P01", err.Error())
		}
		return
	}
	client.SetReadDeadline(time.Time{})
	ctx, cancel := context.WithTimeout(context.Background(), p.WakeTimeout)
	server, done, err := p.backend.Dial(ctx)
	cancel()
	if err != nil {
		slog.Error("sql proxy: no backend for a client", "client", client.RemoteAddr(), "err", err)
		writeError(client, "57P03", fmt.Sprintf("neonfs: the database could not be started: %v", err))
		return
	}
	defer done()
	defer server.Close()
	if _, err := server.Write(startup); err != nil {
		writeError(client, "08006", fmt.Sprintf("neonfs: lost the database: %v", err))
		return
	}
	relay(p.backend, client, server)
}

// relay copies both ways until either side ends, touching the backend as
// bytes flow.
func relay(b Backend, client, server net.Conn) {
	var wg sync.WaitGroup
	copyHalf := func(dst, src net.Conn) {
		defer wg.Done()
		io.Copy(touchWriter{dst, b}, src)
		// One side ended: end the other, so neither copy waits for ever.
		dst.Close()
		src.Close()
	}
	wg.Add(2)
	go copyHalf(server, client)
	go copyHalf(client, server)
	wg.Wait()
}

type touchWriter struct {
	w io.Writer
	b Backend
}

func (t touchWriter) Write(p []byte) (int, error) {
	t.b.Touch()
	return t.w.Write(p)
}

var errProtocol = errors.New("invalid startup packet")

// readStartup reads the client's startup message, answering SSL and GSS
// encryption requests with 'N' (the listener speaks plain TCP), and
// returns the message as the server must see it.
func readStartup(c net.Conn) ([]byte, error) {
	for range 3 {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return nil, err
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		code := binary.BigEndian.Uint32(hdr[4:])
		if n < 8 || n > maxStartup {
			return nil, fmt.Errorf("%w: length %d", errProtocol, n)
		}
		if (code == sslRequest || code == gssEncRequest) && n == 8 {
			if _, err := c.Write([]byte{'N'}); err != nil {
				return nil, err
			}
			continue
		}
		msg := make([]byte, n)
		copy(msg, hdr[:])
		if _, err := io.ReadFull(c, msg[8:]); err != nil {
			return nil, err
		}
		if code != cancelRequest && code>>16 != 3 {
			return nil, fmt.Errorf("%w: protocol version %d.%d", errProtocol, code>>16, code&0xffff)
		}
		return msg, nil
	}
	return nil, fmt.Errorf("%w: repeated encryption requests", errProtocol)
}

// writeError sends a FATAL ErrorResponse with SQLSTATE code.
func writeError(c net.Conn, code, msg string) {
	body := []byte{'S'}
	body = append(body, "FATAL\x00"...)
	body = append(body, 'V')
	body = append(body, "FATAL\x00"...)
	body = append(body, 'C')
	body = append(body, code+"\x00"...)
	body = append(body, 'M')
	body = append(body, msg+"\x00"...)
	body = append(body, 0)
	out := []byte{'E'}
	out = binary.BigEndian.AppendUint32(out, uint32(len(body)+4))
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write(append(out, body...))
}
