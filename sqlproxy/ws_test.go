package sqlproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5/pgproto3"
)

// wsSetup serves an HTTP listener for a stopped endpoint whose Postgres
// asks for scram-sha-256 and the role's password (never trust).
func wsSetup(t *testing.T) (*lazyBackend, *HTTPServer) {
	t.Helper()
	b := newLazyBackend(t)
	s := ServeHTTP(listenLocal(t), b, HTTPOptions{WakeTimeout: time.Minute})
	t.Cleanup(func() {
		s.Close()
		b.stop()
	})
	return b, s
}

// wsDial opens a WebSocket as the driver does: no subprotocol.
func wsDial(t *testing.T, s *HTTPServer, path string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+s.Addr().String()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(-1)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// encode concatenates frontend messages' bytes.
func encode(t *testing.T, msgs ...pgproto3.FrontendMessage) []byte {
	t.Helper()
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func startupMsg(params ...string) *pgproto3.StartupMessage {
	m := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": "postgres", "application_name": "ws_test"}}
	for i := 0; i+1 < len(params); i += 2 {
		m.Parameters[params[i]] = params[i+1]
	}
	return m
}

// wsFrontend reads the server's messages from the WebSocket's byte
// stream, whatever its framing.
func wsFrontend(c *websocket.Conn) *pgproto3.Frontend {
	nc := websocket.NetConn(context.Background(), c, websocket.MessageBinary)
	nc.SetReadDeadline(time.Now().Add(90 * time.Second))
	return pgproto3.NewFrontend(nc, io.Discard)
}

// receive reads the next message, which must be of type T.
func receive[T pgproto3.BackendMessage](t *testing.T, f *pgproto3.Frontend) T {
	t.Helper()
	msg, err := f.Receive()
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	m, ok := msg.(T)
	if !ok {
		var want T
		t.Fatalf("got %T %+v, want %T", msg, msg, want)
	}
	return m
}

// expectSession reads what follows a password the server accepts.
func expectSession(t *testing.T, f *pgproto3.Frontend) map[string]string {
	t.Helper()
	receive[*pgproto3.AuthenticationOk](t, f)
	params := map[string]string{}
	for {
		msg, err := f.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.ParameterStatus:
			params[m.Name] = m.Value
			continue
		case *pgproto3.BackendKeyData:
			if m.ProcessID == 0 || len(m.SecretKey) == 0 {
				t.Errorf("backend key data %+v", m)
			}
		default:
			t.Fatalf("got %T %+v after AuthenticationOk, want ParameterStatus or BackendKeyData", msg, msg)
		}
		break
	}
	if rfq := receive[*pgproto3.ReadyForQuery](t, f); rfq.TxStatus != 'I' {
		t.Errorf("ReadyForQuery status %q", rfq.TxStatus)
	}
	if params["server_version"] == "" || params["application_name"] != "ws_test" {
		t.Errorf("parameter statuses %v", params)
	}
	return params
}

// expectValue reads a simple query's answer: one row, one column.
func expectValue(t *testing.T, f *pgproto3.Frontend) string {
	t.Helper()
	receive[*pgproto3.RowDescription](t, f)
	row := receive[*pgproto3.DataRow](t, f)
	receive[*pgproto3.CommandComplete](t, f)
	receive[*pgproto3.ReadyForQuery](t, f)
	if len(row.Values) != 1 {
		t.Fatalf("row %q", row.Values)
	}
	return string(row.Values[0])
}

// The driver's pipelined connect: startup, password and first query in
// one frame, before the server has said anything. The endpoint was
// suspended: the client wakes it.
func TestWSPipelinedConnect(t *testing.T) {
	b, s := wsSetup(t)
	c := wsDial(t, s, "/v2")
	ctx := context.Background()
	if err := c.Write(ctx, websocket.MessageBinary, encode(t, startupMsg(),
		&pgproto3.PasswordMessage{Password: b.cfg.Password},
		&pgproto3.Query{String: "SELECT 40 + 2 AS v"})); err != nil {
		t.Fatal(err)
	}
	f := wsFrontend(c)
	receive[*pgproto3.AuthenticationCleartextPassword](t, f)
	expectSession(t, f)
	if v := expectValue(t, f); v != "42" {
		t.Fatalf("SELECT 40 + 2 = %q", v)
	}
	if n := b.starts.Load(); n != 1 {
		t.Errorf("Postgres started %d times", n)
	}
	if b.touches.Load() == 0 {
		t.Error("no activity reported for relayed bytes")
	}
	// The session is the role's own, not a privileged one of the proxy.
	if err := c.Write(ctx, websocket.MessageBinary, encode(t, &pgproto3.Query{String: "SELECT current_user || '/' || current_setting('application_name')"})); err != nil {
		t.Fatal(err)
	}
	if v := expectValue(t, f); v != "postgres/ws_test" {
		t.Errorf("session user/application_name = %q", v)
	}
	if err := c.Write(ctx, websocket.MessageBinary, encode(t, &pgproto3.Terminate{})); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Receive(); err == nil {
		t.Error("the session outlived Terminate")
	}
}

// Several clients of a suspended endpoint wake it once.
func TestWSWakesSuspendedBackend(t *testing.T) {
	b, s := wsSetup(t)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := wsDial(t, s, "/v2")
			err := c.Write(context.Background(), websocket.MessageBinary, encode(t, startupMsg(),
				&pgproto3.PasswordMessage{Password: b.cfg.Password},
				&pgproto3.Query{String: fmt.Sprintf("SELECT %d + 1", i)}))
			if err != nil {
				t.Error(err)
				return
			}
			f := wsFrontend(c)
			receive[*pgproto3.AuthenticationCleartextPassword](t, f)
			expectSession(t, f)
			if v := expectValue(t, f); v != fmt.Sprint(i+1) {
				t.Errorf("client %d: %q", i, v)
			}
		}()
	}
	wg.Wait()
	if n := b.starts.Load(); n != 1 {
		t.Errorf("Postgres started %d times, want once", n)
	}
}

// Frames are not messages: a client may split its bytes anywhere. /v1
// with an address (the driver's string wsProxy) is the same endpoint.
func TestWSSplitFrames(t *testing.T) {
	b, s := wsSetup(t)
	c := wsDial(t, s, "/v1?address=db.example.com:5432")
	ctx := context.Background()
	all := encode(t, startupMsg(), &pgproto3.PasswordMessage{Password: b.cfg.Password},
		&pgproto3.Query{String: "SELECT 'split'"})
	for i, size := 0, 1; len(all) > 0; i, size = i+1, size*2+1 { // 1, 3, 7, 15... bytes
		n := min(size, len(all))
		if err := c.Write(ctx, websocket.MessageBinary, all[:n]); err != nil {
			t.Fatal(err)
		}
		all = all[n:]
	}
	f := wsFrontend(c)
	receive[*pgproto3.AuthenticationCleartextPassword](t, f)
	expectSession(t, f)
	if v := expectValue(t, f); v != "split" {
		t.Fatalf("got %q", v)
	}
}

// A client that does not pipeline asks for SSL first (and is refused),
// then waits for each request before answering it.
func TestWSSSLRequestThenStepwise(t *testing.T) {
	b, s := wsSetup(t)
	c := wsDial(t, s, "/v2")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageBinary, encode(t, &pgproto3.SSLRequest{})); err != nil {
		t.Fatal(err)
	}
	if typ, p, err := c.Read(ctx); err != nil || typ != websocket.MessageBinary || string(p) != "N" {
		t.Fatalf("answer to SSLRequest: %v %q %v", typ, p, err)
	}
	if err := c.Write(ctx, websocket.MessageBinary, encode(t, startupMsg())); err != nil {
		t.Fatal(err)
	}
	f := wsFrontend(c)
	receive[*pgproto3.AuthenticationCleartextPassword](t, f)
	if b.starts.Load() != 0 {
		t.Error("Postgres woke before the client gave a password")
	}
	if err := c.Write(ctx, websocket.MessageBinary, encode(t, &pgproto3.PasswordMessage{Password: b.cfg.Password})); err != nil {
		t.Fatal(err)
	}
	expectSession(t, f)
	if err := c.Write(ctx, websocket.MessageBinary, encode(t, &pgproto3.Query{String: "SELECT 7"})); err != nil {
		t.Fatal(err)
	}
	if v := expectValue(t, f); v != "7" {
		t.Fatalf("got %q", v)
	}
}

// A wrong password is Postgres's own refusal, 28P01, and the end.
func TestWSWrongPassword(t *testing.T) {
	_, s := wsSetup(t)
	c := wsDial(t, s, "/v2")
	if err := c.Write(context.Background(), websocket.MessageBinary, encode(t, startupMsg(),
		&pgproto3.PasswordMessage{Password: "wrong"}, &pgproto3.Query{String: "SELECT 1"})); err != nil {
		t.Fatal(err)
	}
	f := wsFrontend(c)
	receive[*pgproto3.AuthenticationCleartextPassword](t, f)
	e := receive[*pgproto3.ErrorResponse](t, f)
	if e.Code != "28P01" || e.Severity != "FATAL" || !strings.Contains(e.Message, "password authentication failed") {
		t.Errorf("refusal %+v", e)
	}
	if msg, err := f.Receive(); err == nil {
		t.Errorf("got %T after the refusal, want the end", msg)
	}
}

// An endpoint that cannot start says why (57P03), as over TCP.
func TestWSBackendFailure(t *testing.T) {
	b, s := wsSetup(t)
	b.fail = errors.New("postgres binary /nonexistent/postgres: no such file")
	c := wsDial(t, s, "/v2")
	if err := c.Write(context.Background(), websocket.MessageBinary, encode(t, startupMsg(),
		&pgproto3.PasswordMessage{Password: b.cfg.Password})); err != nil {
		t.Fatal(err)
	}
	f := wsFrontend(c)
	receive[*pgproto3.AuthenticationCleartextPassword](t, f)
	e := receive[*pgproto3.ErrorResponse](t, f)
	if e.Code != "57P03" || !strings.Contains(e.Message, "could not be started") || !strings.Contains(e.Message, "/nonexistent/postgres") {
		t.Errorf("error %+v", e)
	}
}

// Text frames are not Postgres's protocol: the WebSocket closes with
// 1003, at the start of a session or in the middle of one.
func TestWSTextFrameRefused(t *testing.T) {
	b, s := wsSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	c := wsDial(t, s, "/v2")
	if err := c.Write(ctx, websocket.MessageText, []byte("SELECT 1")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusUnsupportedData {
		t.Errorf("text frame at startup: read %q, %v; want close status 1003", p, err)
	}

	c = wsDial(t, s, "/v2")
	if err := c.Write(ctx, websocket.MessageBinary, encode(t, startupMsg(),
		&pgproto3.PasswordMessage{Password: b.cfg.Password})); err != nil {
		t.Fatal(err)
	}
	// Read the session's start frame by frame (not through a NetConn,
	// which would take the close for its own).
	var got []byte
	for !strings.HasSuffix(string(got), "Z\x00\x00\x00\x05I") {
		_, p, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("session start: %v", err)
		}
		got = append(got, p...)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("SELECT 1")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusUnsupportedData {
		t.Errorf("text frame in a session: read %q, %v; want close status 1003", p, err)
	}
}

// A request that is not an upgrade is told what the path is for.
func TestWSNotAnUpgrade(t *testing.T) {
	_, s := wsSetup(t)
	resp, err := http.Get("http://" + s.Addr().String() + "/v2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusUpgradeRequired || !strings.Contains(string(body), "WebSocket") {
		t.Errorf("GET /v2: %s %q", resp.Status, body)
	}
}

// Close ends live sessions, and sessions still waiting for a wake, and
// waits for them.
func TestWSCloseEndsSessions(t *testing.T) {
	b, s := wsSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := wsDial(t, s, "/v2")
	if err := c.Write(ctx, websocket.MessageBinary, encode(t, startupMsg(),
		&pgproto3.PasswordMessage{Password: b.cfg.Password}, &pgproto3.Query{String: "SELECT 1"})); err != nil {
		t.Fatal(err)
	}
	f := wsFrontend(c)
	receive[*pgproto3.AuthenticationCleartextPassword](t, f)
	expectSession(t, f)
	expectValue(t, f)

	ended := make(chan error, 1)
	go func() { // reading, as a live client is: it answers the close handshake
		msg, err := f.Receive()
		if err == nil {
			err = fmt.Errorf("got %T after Close, want the end", msg)
		} else {
			err = nil
		}
		ended <- err
	}()
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := <-ended; err != nil {
		t.Error(err)
	}
}

// stuckBackend never wakes: Dial waits until it is given up on.
type stuckBackend struct{ dialing chan struct{} }

func (b *stuckBackend) Dial(ctx context.Context) (net.Conn, func(), error) {
	close(b.dialing)
	<-ctx.Done()
	return nil, nil, ctx.Err()
}

func (b *stuckBackend) Touch() {}

// Close also ends a session still waiting for its backend to wake.
func TestWSCloseDuringWake(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &stuckBackend{dialing: make(chan struct{})}
	s := ServeHTTP(ln, b, HTTPOptions{})
	defer s.Close()
	c := wsDial(t, s, "/v2")
	if err := c.Write(context.Background(), websocket.MessageBinary, encode(t, startupMsg(),
		&pgproto3.PasswordMessage{Password: "pw"})); err != nil {
		t.Fatal(err)
	}
	f := wsFrontend(c)
	receive[*pgproto3.AuthenticationCleartextPassword](t, f)
	<-b.dialing
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			if _, err := f.Receive(); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	s.Close()
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("Close took %v", d)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Error("the session outlived Close")
	}
}
