package sqlproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Postgres's protocol over a WebSocket, for the serverless driver's Pool
// and Client (@neondatabase/serverless). The driver opens ws://HOST/v2
// (or /v1?address=host:port when neonConfig.wsProxy is a string) and
// sends the protocol's bytes in binary frames that are not aligned with
// messages, so a session is a byte stream, as over TCP.
//
// The proxy terminates authentication: by default the driver pipelines
// its connect, sending StartupMessage, a cleartext PasswordMessage and
// its first query together, before the server has asked for anything.
// So the endpoint asks for a cleartext password (the pipelining driver
// ignores that request, having answered it already), opens its own
// Postgres session as that role with that password (connectAs: Postgres
// checks it against its SCRAM verifier; never trust), tells the client
// authentication succeeded, then relays bytes, the client's pipelined
// query first. The password is never logged.
//
// The endpoint is the listener's: the address parameter of /v1, which
// names the server the driver wants, is ignored, as is the path's host.

// wsHandshakeTimeout bounds the wait for a client's startup and password
// messages (the wake of the backend that follows is bounded by
// HTTPOptions.WakeTimeout).
const wsHandshakeTimeout = 30 * time.Second

// maxPasswordMessage bounds a client's PasswordMessage.
const maxPasswordMessage = 10000

// wsHandler serves the WebSocket sessions of an endpoint's HTTP
// listener. The connections are hijacked from net/http, so Close of the
// http.Server does not end them: close does.
type wsHandler struct {
	b    Backend
	opts HTTPOptions

	wg       sync.WaitGroup
	mu       sync.Mutex
	sessions map[*wsSession]struct{}
	closed   bool
}

// wsSession is one client's WebSocket, tracked so that close can end it.
type wsSession struct {
	ws *websocket.Conn
	// cancel aborts a wake or authentication in progress.
	cancel context.CancelFunc
}

func newWSHandler(b Backend, opts HTTPOptions) *wsHandler {
	return &wsHandler{b: b, opts: opts, sessions: map[*wsSession]struct{}{}}
}

func (h *wsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "neonfs: "+r.URL.Path+" speaks Postgres's protocol over a WebSocket "+
			"(@neondatabase/serverless Pool and Client): send a WebSocket upgrade request; "+
			"for SQL over HTTP, POST to /sql", http.StatusUpgradeRequired)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &wsSession{cancel: cancel}
	defer cancel()
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		http.Error(w, "neonfs: the endpoint is shutting down", http.StatusServiceUnavailable)
		return
	}
	h.wg.Add(1)
	defer h.wg.Done()
	h.mu.Unlock()

	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		// Any origin may connect: the driver runs in browsers and edge
		// runtimes served from anywhere, and a session carries no ambient
		// authority a cross-site page could borrow (no cookies, no HTTP
		// auth): it must present the role's Postgres password in the
		// protocol, like any client of the TCP listener.
		InsecureSkipVerify: true,
		// Frames carry Postgres's protocol, often already small; the
		// driver does not ask for compression either.
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		// Accept has answered the request with the error.
		slog.Debug("sql proxy: websocket upgrade refused", "client", r.RemoteAddr, "err", err)
		return
	}
	s.ws = ws
	h.mu.Lock()
	if h.closed { // close ran between the check above and Accept
		h.mu.Unlock()
		ws.Close(websocket.StatusGoingAway, "neonfs: the endpoint is shutting down")
		return
	}
	h.sessions[s] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.sessions, s)
		h.mu.Unlock()
	}()

	// The byte stream's own context is not ctx: cancelling that aborts a
	// wake, and the client must still be told why.
	client := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	defer client.Close()
	h.serve(ctx, client, r.RemoteAddr)
}

// close ends every session, including those waiting for the backend,
// and waits for them.
func (h *wsHandler) close() {
	h.mu.Lock()
	h.closed = true
	var wg sync.WaitGroup
	for s := range h.sessions {
		wg.Add(1)
		go func() { // in parallel: a close handshake may wait for an unresponsive client
			defer wg.Done()
			s.cancel()
			s.ws.Close(websocket.StatusGoingAway, "neonfs: the endpoint is shutting down")
		}()
	}
	h.mu.Unlock()
	wg.Wait()
	h.wg.Wait()
}

// serve authenticates one client as the role it names and relays its
// session. A text frame anywhere makes reads fail and closes the
// WebSocket with 1003 (unsupported data): the library does that.
func (h *wsHandler) serve(ctx context.Context, client net.Conn, addr string) {
	client.SetReadDeadline(time.Now().Add(wsHandshakeTimeout))
	raw, err := readStartup(client)
	if err != nil {
		slog.Debug("sql proxy: websocket: bad startup", "client", addr, "err", err)
		if errors.Is(err, errProtocol) {
			writeError(client, "08P01", err.Error())
		}
		return
	}
	if binary.BigEndian.Uint32(raw[4:8]) == cancelRequest {
		// A cancel key reaches Postgres over TCP; over a WebSocket the
		// request is dropped, as Postgres drops one it cannot match.
		return
	}
	var startup pgproto3.StartupMessage
	if err := startup.Decode(raw[4:]); err != nil {
		writeError(client, "08P01", fmt.Sprintf("%v: %v", errProtocol, err))
		return
	}
	user, database := startup.Parameters["user"], startup.Parameters["database"]
	if user == "" {
		writeError(client, "28000", "no PostgreSQL user name specified in startup packet")
		return
	}
	params := map[string]string{}
	var unrecognized []string
	for k, v := range startup.Parameters {
		switch {
		case k == "user" || k == "database":
		case strings.HasPrefix(k, "_pq_."):
			// Protocol extensions are the session's, and our session to
			// Postgres is pgconn's: refuse them all.
			unrecognized = append(unrecognized, k)
		default:
			params[k] = v
		}
	}

	// Ask for a cleartext password. A pipelining driver sent it already.
	var out []byte
	if startup.ProtocolVersion != pgproto3.ProtocolVersion30 || len(unrecognized) > 0 {
		// The proxy speaks protocol 3.0 to the client whatever it asked.
		out, _ = (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unrecognized}).Encode(out)
	}
	out, _ = (&pgproto3.AuthenticationCleartextPassword{}).Encode(out)
	if _, err := client.Write(out); err != nil {
		return
	}
	password, err := readPassword(client)
	if err != nil {
		slog.Debug("sql proxy: websocket: no password", "client", addr, "user", user, "err", err)
		if errors.Is(err, errProtocol) {
			writeError(client, "08P01", err.Error())
		}
		return
	}
	client.SetReadDeadline(time.Time{})

	wakeCtx, cancel := context.WithTimeout(ctx, h.opts.WakeTimeout)
	conn, done, err := connectAs(wakeCtx, h.b, user, password, database, params)
	cancel()
	if err != nil {
		var pgErr *pgconn.PgError
		var beErr *backendError
		switch {
		case errors.As(err, &pgErr):
			slog.Info("sql proxy: websocket: Postgres refused a session", "client", addr, "user", user,
				"database", database, "code", pgErr.Code, "err", pgErr.Message)
			writePgError(client, pgErr)
		case errors.As(err, &beErr):
			slog.Error("sql proxy: websocket: no backend for a client", "client", addr, "err", beErr.err)
			writeError(client, "57P03", beErr.Error()) // names the cause, without pgconn's dial wrapping
		default:
			slog.Error("sql proxy: websocket: cannot open a session", "client", addr, "user", user, "err", err)
			writeError(client, "08006", fmt.Sprintf("neonfs: could not open a session: %v", err))
		}
		return
	}
	defer done()
	// pgconn may have read ahead or be reading in the background: drain
	// it so the connection's bytes are all the relay's.
	syncCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = conn.SyncConn(syncCtx)
	cancel()
	if err != nil {
		conn.Close(context.Background())
		writeError(client, "08006", fmt.Sprintf("neonfs: lost the database: %v", err))
		return
	}
	hc, err := conn.Hijack()
	if err != nil {
		conn.Close(context.Background())
		writeError(client, "08006", fmt.Sprintf("neonfs: lost the database: %v", err))
		return
	}
	server := hc.Conn
	defer server.Close()

	out, _ = (&pgproto3.AuthenticationOk{}).Encode(nil)
	for name, value := range hc.ParameterStatuses {
		out, _ = (&pgproto3.ParameterStatus{Name: name, Value: value}).Encode(out)
	}
	out, _ = (&pgproto3.BackendKeyData{ProcessID: hc.PID, SecretKey: hc.SecretKey}).Encode(out)
	out, _ = (&pgproto3.ReadyForQuery{TxStatus: hc.TxStatus}).Encode(out)
	if _, err := client.Write(out); err != nil {
		return
	}
	slog.Debug("sql proxy: websocket session", "client", addr, "user", user, "database", database, "pid", hc.PID)
	// The client's pipelined query is still unread in the WebSocket (the
	// handshake read exactly its messages' bytes), so it is the first
	// thing relayed to Postgres.
	relay(h.b, client, server)
}

// readPassword reads the client's PasswordMessage.
func readPassword(c io.Reader) (string, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return "", err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if hdr[0] != 'p' {
		return "", fmt.Errorf("%w: expected a password message, got message type %q", errProtocol, hdr[0])
	}
	if n < 5 || n > maxPasswordMessage {
		return "", fmt.Errorf("%w: password message length %d", errProtocol, n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(c, body); err != nil {
		return "", err
	}
	var msg pgproto3.PasswordMessage
	if err := msg.Decode(body); err != nil {
		return "", fmt.Errorf("%w: password message: %v", errProtocol, err)
	}
	return msg.Password, nil
}

// writePgError sends the client Postgres's own refusal, FATAL: the
// session ends with it.
func writePgError(c net.Conn, e *pgconn.PgError) {
	msg, err := (&pgproto3.ErrorResponse{
		Severity: "FATAL", SeverityUnlocalized: "FATAL",
		Code: e.Code, Message: e.Message, Detail: e.Detail, Hint: e.Hint,
		Position: e.Position, InternalPosition: e.InternalPosition, InternalQuery: e.InternalQuery,
		Where: e.Where, SchemaName: e.SchemaName, TableName: e.TableName, ColumnName: e.ColumnName,
		DataTypeName: e.DataTypeName, ConstraintName: e.ConstraintName,
		File: e.File, Line: e.Line, Routine: e.Routine,
	}).Encode(nil)
	if err != nil {
		writeError(c, e.Code, e.Message)
		return
	}
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write(msg)
}

// headerHasToken reports whether a comma-separated header lists token
// (case-insensitively), as Connection: keep-alive, Upgrade does.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
