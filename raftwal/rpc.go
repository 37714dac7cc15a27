package raftwal

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Node RPCs share the Raft port (Mux, first byte KindRPC). A connection
// carries requests one after another: a request is an op byte and a
// length-prefixed body; a reply is a status byte (0 ok, 1 error), an
// index and a length-prefixed body (the error text when status is 1).
// Bodies are JSON except for apply, whose request body is the entry and
// whose reply body is the FSM's answer as Config.EncodeReply wrote it.

const (
	opApply    byte = 'a'
	opJoin     byte = 'j'
	opRemove   byte = 'r'
	opTransfer byte = 't'
	opStats    byte = 's'
	opInfo     byte = 'i'
)

// maxRPCBody bounds what a peer may make this node allocate for one
// request or reply: a log entry is a few MiB (a huge truncate can put
// more, but it stays well under this).
const maxRPCBody = 512 << 20

// rpcTimeout bounds one forwarded request, proposal included: past it the
// caller retries (an fsync blocks meanwhile; nothing is acknowledged). A
// leader that vanished (a partition: no reset, no refusal) is replaced in
// about a second, so waiting much longer on it only stalls commits; a
// proposal that did commit after its forward timed out is proposed again,
// which puts tolerate (the same values again, from the same writer).
var rpcTimeout = 5 * time.Second

func writeFrame(w *bufio.Writer, head []byte, body []byte) error {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(body)))
	w.Write(head)
	w.Write(n[:])
	w.Write(body)
	return w.Flush()
}

func readBody(r *bufio.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxRPCBody {
		return nil, fmt.Errorf("rpc body of %d bytes is over the %d limit", size, maxRPCBody)
	}
	b := make([]byte, size)
	_, err := io.ReadFull(r, b)
	return b, err
}

// RemoteError is an error a peer answered with.
type RemoteError struct {
	Peer string
	Msg  string
}

func (e *RemoteError) Error() string { return fmt.Sprintf("%s: %s", e.Peer, e.Msg) }

// rpcClient keeps idle connections to peers.
type rpcClient struct {
	mux  *Mux
	mu   sync.Mutex
	idle map[string][]*rpcConn
}

type rpcConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func (p *rpcClient) get(addr string) (*rpcConn, error) {
	p.mu.Lock()
	if cs := p.idle[addr]; len(cs) > 0 {
		c := cs[len(cs)-1]
		p.idle[addr] = cs[:len(cs)-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	c, err := p.mux.Dial(addr, KindRPC, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &rpcConn{c: c, r: bufio.NewReaderSize(c, 64<<10), w: bufio.NewWriterSize(c, 64<<10)}, nil
}

func (p *rpcClient) put(addr string, c *rpcConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle[addr]) >= 8 {
		c.c.Close()
		return
	}
	p.idle[addr] = append(p.idle[addr], c)
}

func (p *rpcClient) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, cs := range p.idle {
		for _, c := range cs {
			c.c.Close()
		}
	}
	p.idle = map[string][]*rpcConn{}
}

// call sends one request to addr and returns the reply's index and body.
// A transport failure is an error; a peer's refusal is a *RemoteError.
func (p *rpcClient) call(addr string, op byte, body []byte, timeout time.Duration) (uint64, []byte, error) {
	c, err := p.get(addr)
	if err != nil {
		return 0, nil, fmt.Errorf("reach %s: %w", addr, err)
	}
	c.c.SetDeadline(time.Now().Add(timeout))
	idx, out, err := c.roundTrip(op, body)
	if err != nil {
		c.c.Close()
		if errors.Is(err, io.EOF) && p.mux.tlsc == nil {
			return 0, nil, fmt.Errorf("rpc to %s: the peer closed the connection at once (does the cluster use TLS? give --tls-cert, --tls-key and --tls-ca): %w", addr, err)
		}
		return 0, nil, fmt.Errorf("rpc to %s: %w", addr, err)
	}
	c.c.SetDeadline(time.Time{})
	p.put(addr, c)
	if out.status != 0 {
		return idx, nil, &RemoteError{Peer: addr, Msg: string(out.body)}
	}
	return idx, out.body, nil
}

type rpcReply struct {
	status byte
	body   []byte
}

func (c *rpcConn) roundTrip(op byte, body []byte) (uint64, rpcReply, error) {
	if err := writeFrame(c.w, []byte{op}, body); err != nil {
		return 0, rpcReply{}, err
	}
	var head [9]byte
	if _, err := io.ReadFull(c.r, head[:]); err != nil {
		return 0, rpcReply{}, err
	}
	b, err := readBody(c.r)
	if err != nil {
		return 0, rpcReply{}, err
	}
	return binary.BigEndian.Uint64(head[1:]), rpcReply{status: head[0], body: b}, nil
}

// serveRPC answers node RPCs until the listener closes.
func (n *Node) serveRPC(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				n.log.Debug("rpc listener stopped", "err", err)
			}
			return
		}
		go n.serveConn(c)
	}
}

func (n *Node) serveConn(c net.Conn) {
	defer c.Close()
	r, w := bufio.NewReaderSize(c, 64<<10), bufio.NewWriterSize(c, 64<<10)
	for {
		c.SetReadDeadline(time.Now().Add(10 * time.Minute))
		op, err := r.ReadByte()
		if err != nil {
			return
		}
		body, err := readBody(r)
		if err != nil {
			n.log.Warn("bad rpc request", "peer", c.RemoteAddr().String(), "err", err)
			return
		}
		c.SetReadDeadline(time.Time{})
		idx, out, herr := n.handle(op, body)
		head := make([]byte, 9)
		binary.BigEndian.PutUint64(head[1:], idx)
		if herr != nil {
			head[0], out = 1, []byte(herr.Error())
		}
		c.SetWriteDeadline(time.Now().Add(rpcTimeout))
		if err := writeFrame(w, head, out); err != nil {
			return
		}
	}
}

func (n *Node) handle(op byte, body []byte) (uint64, []byte, error) {
	switch op {
	case opApply:
		// Only the leader applies; a forward that reaches a follower (the
		// leader changed meanwhile) is refused and the proposer retries.
		idx, resp, err := n.applyLocal(body)
		if err != nil {
			return 0, nil, err
		}
		return idx, n.encodeReply(resp), nil
	case opJoin:
		var m Member
		if err := json.Unmarshal(body, &m); err != nil {
			return 0, nil, fmt.Errorf("join request: %w", err)
		}
		return 0, nil, n.AddVoter(m.ID, m.Addr)
	case opRemove:
		return 0, nil, n.RemoveServer(string(body))
	case opTransfer:
		return 0, nil, n.Transfer(string(body))
	case opStats:
		b, _ := json.Marshal(n.LocalStats())
		return 0, b, nil
	case opInfo:
		if n.cfg.Info == nil {
			return 0, nil, errors.New("this node describes nothing")
		}
		return 0, n.cfg.Info(), nil
	}
	slog.Warn("unknown rpc op", "op", op)
	return 0, nil, fmt.Errorf("unknown rpc op %q", op)
}
