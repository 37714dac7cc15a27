package sqlproxy

import (
	"context"
	"errors"
	"net"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
)

// connectAs opens a Postgres session through the backend (waking it) and
// authenticates it with the client's own credentials: the proxy
// terminates authentication for the serverless driver, whose clients send
// a cleartext password without waiting to be asked, and Postgres checks
// it (against its SCRAM verifier) as for any client. A wrong password is
// Postgres's own *pgconn.PgError, 28P01. params are the client's startup
// parameters besides user and database (application_name, options...).
// done must be called once the session is closed.
func connectAs(ctx context.Context, b Backend, user, password, database string, params map[string]string) (*pgconn.PgConn, func(), error) {
	cfg, err := pgconn.ParseConfig("")
	if err != nil {
		return nil, nil, err
	}
	cfg.Host, cfg.Port = "neonfs-endpoint", 5432 // not dialled: DialFunc is
	cfg.User, cfg.Password, cfg.Database = user, password, database
	cfg.TLSConfig, cfg.Fallbacks = nil, nil
	cfg.RuntimeParams = map[string]string{}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	var done func()
	cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
		c, d, err := b.Dial(ctx)
		if err != nil {
			return nil, &backendError{err}
		}
		if done != nil {
			// A later dial is pgconn's cancel request (CancelRequest, and
			// asyncClose after a deadline or a broken read): pgconn closes
			// that connection itself, so its done goes with its Close.
			return &doneConn{Conn: c, done: d}, nil
		}
		done = d
		return c, nil
	}
	cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"neonfs-endpoint"}, nil }
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		if done != nil {
			done()
		}
		return nil, nil, err
	}
	if done == nil {
		done = func() {}
	}
	return conn, done, nil
}

// backendError marks a failure to reach Postgres at all (it could not be
// woken), as opposed to Postgres refusing the session.
type backendError struct{ err error }

func (e *backendError) Error() string {
	return "neonfs: the database could not be started: " + e.err.Error()
}
func (e *backendError) Unwrap() error { return e.err }

// isBackendError reports whether err is a failure to wake the backend.
func isBackendError(err error) bool {
	var be *backendError
	return errors.As(err, &be)
}

// doneConn calls done once when closed.
type doneConn struct {
	net.Conn
	once sync.Once
	done func()
}

func (c *doneConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.done)
	return err
}
