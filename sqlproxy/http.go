package sqlproxy

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// The HTTP listener of an endpoint serves Neon's serverless driver
// (@neondatabase/serverless), for clients that cannot open TCP sockets:
// Postgres's protocol over a WebSocket at /v1 and /v2 (ws.go), and SQL
// over HTTP at /sql (httpsql.go). Both reach Postgres through the same
// Backend as the TCP listener, so a suspended endpoint wakes for them too.

// HTTPOptions tune an endpoint's HTTP listener.
type HTTPOptions struct {
	// QueryTimeout bounds one SQL-over-HTTP query or batch (default 15 s).
	QueryTimeout time.Duration
	// MaxBody bounds an SQL-over-HTTP request body and response (default
	// 10 MiB).
	MaxBody int64
	// WakeTimeout bounds how long a request waits for the backend
	// (default 5 minutes, as for TCP clients).
	WakeTimeout time.Duration
}

func (o *HTTPOptions) defaults() {
	if o.QueryTimeout == 0 {
		o.QueryTimeout = 15 * time.Second
	}
	if o.MaxBody == 0 {
		o.MaxBody = 10 << 20
	}
	if o.WakeTimeout == 0 {
		o.WakeTimeout = 5 * time.Minute
	}
}

// HTTPServer serves one endpoint's HTTP listener.
type HTTPServer struct {
	ln   net.Listener
	srv  *http.Server
	ws   *wsHandler
	sql  *sqlHandler
	once sync.Once
	done chan struct{}
}

// ServeHTTP serves the serverless driver's two modes on ln until Close.
func ServeHTTP(ln net.Listener, b Backend, opts HTTPOptions) *HTTPServer {
	opts.defaults()
	s := &HTTPServer{ln: ln, ws: newWSHandler(b, opts), sql: newSQLHandler(b, opts), done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle("/v1", s.ws)
	mux.Handle("/v2", s.ws)
	mux.Handle("/sql", s.sql)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("endpoint http listener", "addr", ln.Addr(), "err", err)
		}
	}()
	return s
}

// Addr is the listening address.
func (s *HTTPServer) Addr() net.Addr { return s.ln.Addr() }

// CloseIdle closes the pooled Postgres connections (the endpoint is
// suspending: they must not outlive its Postgres).
func (s *HTTPServer) CloseIdle() { s.sql.closeIdle() }

// Close stops listening, ends WebSocket sessions and open requests, and
// closes the pooled connections.
func (s *HTTPServer) Close() error {
	var err error
	s.once.Do(func() {
		err = s.srv.Close() // closes ln and every connection, hijacked ones excepted
		s.ws.close()        // the hijacked WebSocket sessions
		s.sql.closeIdle()
		<-s.done
	})
	return err
}
