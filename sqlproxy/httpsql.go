package sqlproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// SQL over HTTP serves the neon() function of Neon's serverless driver
// (@neondatabase/serverless): each POST /sql carries one statement, or a
// batch run in one transaction, with the client's connection string in a
// header, and gets the result back as JSON. The wire shape is that of
// Neon's own proxy (proxy/src/serverless/sql_over_http.rs). The driver
// sends Neon-Raw-Text-Output and Neon-Array-Mode on every request and
// parses each value itself by its type OID, so values travel as
// Postgres's text form; parameters arrive already serialized to text
// (arrays as array literals, objects as JSON, Buffers as \x hex).
//
// Postgres sessions are pooled between requests per (user, database,
// password, startup parameters): a session authenticated with one password
// never serves a request made with another. An idle pooled session holds
// no activity, so it does not keep the endpoint awake; when the endpoint
// suspends, closeIdle closes them all, and a session taken out before
// that is closed rather than pooled when its request ends.

// The request headers of Neon's protocol.
const (
	hdrConnString = "Neon-Connection-String"
	hdrRawText    = "Neon-Raw-Text-Output"
	hdrArrayMode  = "Neon-Array-Mode"
	hdrIsolation  = "Neon-Batch-Isolation-Level"
	hdrReadOnly   = "Neon-Batch-Read-Only"
	hdrDeferrable = "Neon-Batch-Deferrable"
)

// corsAllowHeaders answers a browser's preflight: the driver's headers.
var corsAllowHeaders = strings.Join([]string{"Authorization", "Content-Type", hdrConnString, hdrRawText,
	hdrArrayMode, "Neon-Pool-Opt-In", hdrIsolation, hdrReadOnly, hdrDeferrable}, ", ")

// isolationLevels maps Neon-Batch-Isolation-Level to SQL.
var isolationLevels = map[string]string{
	"Serializable":    "SERIALIZABLE",
	"ReadUncommitted": "READ UNCOMMITTED",
	"ReadCommitted":   "READ COMMITTED",
	"RepeatableRead":  "REPEATABLE READ",
}

// maxIdlePerKey bounds the idle sessions pooled for one (user, database,
// password). Below the clients' concurrency, each request past it opens a
// session (a backend fork and a SCRAM exchange, several ms): with 4, eight
// concurrent clients got 440 queries/s. Idle sessions cost a backend
// each and do not keep the endpoint awake.
const maxIdlePerKey = 32

// sqlHandler serves SQL over HTTP.
type sqlHandler struct {
	b    Backend
	opts HTTPOptions
	pool *sessionPool
}

func newSQLHandler(b Backend, opts HTTPOptions) *sqlHandler {
	return &sqlHandler{b: b, opts: opts, pool: newSessionPool()}
}

// closeIdle closes the pooled sessions (the endpoint suspends, or the
// listener closes).
func (h *sqlHandler) closeIdle() { h.pool.closeAll() }

// sqlRequest is one POST /sql, parsed.
type sqlRequest struct {
	login   login
	rawText bool
	batch   bool
	queries []sqlQuery
	// For a batch: the BEGIN that opens its transaction, and the
	// Neon-Batch-* headers echoed in the answer.
	begin     string
	txHeaders map[string]string
}

type sqlQuery struct {
	sql       string
	params    [][]byte // nil is NULL
	arrayMode bool
}

// login is who the connection string says the client is.
type login struct {
	user, password, database string
	params                   map[string]string // startup parameters
}

// httpError is an answer other than 200: a JSON body in the shape of
// Neon's (the driver makes a NeonDbError of a 400's fields).
type httpError struct {
	status int
	msg    string
	code   string
	pg     *pgconn.PgError
}

func badRequest(format string, args ...any) *httpError {
	return &httpError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func (h *sqlHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Access-Control-Allow-Origin", "*")
	switch r.Method {
	case http.MethodPost:
	case http.MethodOptions:
		w.Header().Set("Allow", "OPTIONS, POST")
		w.Header().Set("Access-Control-Allow-Methods", "OPTIONS, POST")
		w.Header().Set("Access-Control-Allow-Headers", corsAllowHeaders)
		w.Header().Set("Access-Control-Max-Age", "86400")
		w.WriteHeader(http.StatusOK)
		return
	default:
		w.Header().Set("Allow", "OPTIONS, POST")
		writeHTTPError(w, &httpError{status: http.StatusMethodNotAllowed, msg: "SQL over HTTP takes POST /sql"})
		return
	}
	h.b.Touch()
	defer h.b.Touch()
	req, herr := h.parse(w, r)
	if herr != nil {
		writeHTTPError(w, herr)
		return
	}
	out, herr := h.run(r.Context(), req)
	if herr != nil {
		slog.Debug("sql over http: request failed", "user", req.login.user, "database", req.login.database,
			"status", herr.status, "code", herr.code, "err", herr.msg)
		writeHTTPError(w, herr)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	for k, v := range req.txHeaders {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(http.StatusOK)
	w.Write(out)
}

// parse reads the request's headers and body.
func (h *sqlHandler) parse(w http.ResponseWriter, r *http.Request) (*sqlRequest, *httpError) {
	req := &sqlRequest{rawText: r.Header.Get(hdrRawText) == "true"}
	arrayMode := r.Header.Get(hdrArrayMode) == "true"
	// Neon checks the batch headers on every request, batch or not.
	isolation := ""
	if vs := r.Header.Values(hdrIsolation); len(vs) > 0 {
		level, ok := isolationLevels[vs[0]]
		if !ok || len(vs) > 1 {
			return nil, badRequest("invalid isolation level: %s must be one of Serializable, ReadUncommitted, ReadCommitted, RepeatableRead", hdrIsolation)
		}
		isolation = level
		req.txHeaders = map[string]string{hdrIsolation: vs[0]}
	}
	readOnly := r.Header.Get(hdrReadOnly) == "true"
	deferrable := r.Header.Get(hdrDeferrable) == "true"

	var err error
	if req.login, err = parseConnString(r.Header.Get(hdrConnString)); err != nil {
		return nil, badRequest("%v", err)
	}

	body, err := readBody(w, r, h.opts.MaxBody)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, &httpError{status: http.StatusRequestEntityTooLarge,
				msg: fmt.Sprintf("request is too large (max is %d bytes)", h.opts.MaxBody)}
		}
		return nil, badRequest("could not read the request body: %v", err)
	}
	var p struct {
		queryJSON
		Queries *[]queryJSON `json:"queries"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, badRequest("the request body is not {\"query\", \"params\"} or {\"queries\": [...]}: %v", err)
	}
	switch {
	case p.Query != nil:
		q, err := p.queryJSON.parse(arrayMode)
		if err != nil {
			return nil, paramError(err)
		}
		req.queries = []sqlQuery{q}
	case p.Queries != nil:
		req.batch = true
		for i, qj := range *p.Queries {
			if qj.Query == nil {
				return nil, badRequest("queries[%d] has no query", i)
			}
			q, err := qj.parse(arrayMode)
			if err != nil {
				e := paramError(err)
				e.msg = fmt.Sprintf("queries[%d]: %s", i, e.msg)
				return nil, e
			}
			req.queries = append(req.queries, q)
		}
		req.begin = "BEGIN"
		if isolation != "" {
			req.begin += " ISOLATION LEVEL " + isolation
		}
		if readOnly {
			req.begin += " READ ONLY"
			setHeader(&req.txHeaders, hdrReadOnly, "true")
		}
		if deferrable {
			req.begin += " DEFERRABLE"
			setHeader(&req.txHeaders, hdrDeferrable, "true")
		}
	default:
		return nil, badRequest("the request body has neither query nor queries")
	}
	if !req.batch {
		req.txHeaders = nil
	}
	return req, nil
}

func setHeader(m *map[string]string, k, v string) {
	if *m == nil {
		*m = map[string]string{}
	}
	(*m)[k] = v
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	return io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
}

// queryJSON is one statement as the driver sends it.
type queryJSON struct {
	Query     *string           `json:"query"`
	Params    []json.RawMessage `json:"params"`
	ArrayMode *bool             `json:"arrayMode"`
}

// copyFromStdin matches COPY ... FROM STDIN: Postgres would wait for data
// that SQL over HTTP cannot send (a form it misses still ends at the
// query timeout).
var copyFromStdin = regexp.MustCompile(`(?is)^\s*copy\s.*\bfrom\s+stdin\b`)

func (qj queryJSON) parse(arrayMode bool) (sqlQuery, error) {
	q := sqlQuery{sql: *qj.Query, arrayMode: arrayMode}
	if copyFromStdin.MatchString(q.sql) {
		return q, errCopyFromStdin
	}
	if qj.ArrayMode != nil {
		q.arrayMode = *qj.ArrayMode
	}
	for i, raw := range qj.Params {
		v, err := paramText(raw)
		if err != nil {
			return q, fmt.Errorf("params[%d]: %w", i, err)
		}
		q.params = append(q.params, v)
	}
	return q, nil
}

var errCopyFromStdin = errors.New("COPY FROM STDIN is not supported over HTTP")

func paramError(err error) *httpError {
	e := badRequest("%v", err)
	if errors.Is(err, errCopyFromStdin) {
		e.code = "0A000" // feature_not_supported
	}
	return e
}

// paramText turns a JSON parameter into Postgres's text form as Neon's
// proxy does: null is NULL, a string is itself, a number, boolean or
// object its JSON text, an array a Postgres array literal. (The driver
// itself sends only strings and nulls: it serializes client-side.)
func paramText(raw json.RawMessage) ([]byte, error) {
	raw = trimSpace(raw)
	if len(raw) == 0 {
		return nil, errors.New("empty value")
	}
	switch raw[0] {
	case 'n':
		return nil, nil
	case '"':
		var s string
		err := json.Unmarshal(raw, &s)
		return []byte(s), err
	case '[':
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return nil, err
		}
		return appendArrayLiteral(nil, elems)
	default:
		var buf bytes.Buffer
		err := json.Compact(&buf, raw)
		return buf.Bytes(), err
	}
}

// appendArrayLiteral writes a JSON array as a Postgres array literal,
// leaving it to Postgres to check the elements against the type.
func appendArrayLiteral(b []byte, elems []json.RawMessage) ([]byte, error) {
	b = append(b, '{')
	for i, e := range elems {
		if i > 0 {
			b = append(b, ',')
		}
		e = trimSpace(e)
		if len(e) == 0 {
			return nil, errors.New("empty array element")
		}
		switch e[0] {
		case 'n':
			b = append(b, "NULL"...)
		case '[':
			var sub []json.RawMessage
			if err := json.Unmarshal(e, &sub); err != nil {
				return nil, err
			}
			var err error
			if b, err = appendArrayLiteral(b, sub); err != nil {
				return nil, err
			}
		case '"':
			var s string
			if err := json.Unmarshal(e, &s); err != nil {
				return nil, err
			}
			b = appendQuotedElement(b, s)
		case '{': // an object: its JSON, quoted
			var buf bytes.Buffer
			if err := json.Compact(&buf, e); err != nil {
				return nil, err
			}
			b = appendQuotedElement(b, buf.String())
		default: // a number or a boolean
			b = append(b, e...)
		}
	}
	return append(b, '}'), nil
}

func appendQuotedElement(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return append(b, '"')
}

// parseConnString reads Neon-Connection-String. Its errors never quote
// the string: it holds the password.
func parseConnString(s string) (login, error) {
	var l login
	if s == "" {
		return l, errors.New("missing " + hdrConnString + " header (postgres://user:password@host/database)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return l, errors.New(hdrConnString + " is not a valid URL (percent-encode special characters in the password)")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return l, errors.New(hdrConnString + " must start with postgres:// or postgresql://")
	}
	if u.User == nil || u.User.Username() == "" {
		return l, errors.New(hdrConnString + " has no user name")
	}
	l.user = u.User.Username()
	pw, ok := u.User.Password()
	if !ok || pw == "" {
		return l, errors.New(hdrConnString + " has no password")
	}
	l.password = pw
	l.database = strings.TrimPrefix(u.Path, "/")
	if l.database == "" {
		return l, errors.New(hdrConnString + " has no database name")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return l, errors.New(hdrConnString + " has a malformed query string")
	}
	l.params = map[string]string{}
	for _, k := range []string{"application_name", "options"} {
		if v := q.Get(k); v != "" {
			l.params[k] = v
		}
	}
	return l, nil
}

// run executes the request on a pooled session or a new one. A pooled
// session that turns out to be dead (Postgres stopped under it: the
// endpoint suspended) is replaced once by a new session, which wakes
// Postgres.
func (h *sqlHandler) run(ctx context.Context, req *sqlRequest) ([]byte, *httpError) {
	gen := h.pool.generation()
	key := h.pool.key(req.login)
	for attempt := 0; ; attempt++ {
		var s *session
		if attempt == 0 {
			s = h.pool.get(key)
		}
		pooled := s != nil
		if s == nil {
			wakeCtx, cancel := context.WithTimeout(ctx, h.opts.WakeTimeout)
			conn, done, err := connectAs(wakeCtx, h.b, req.login.user, req.login.password, req.login.database, req.login.params)
			cancel()
			if err != nil {
				return nil, connectError(ctx, err)
			}
			s = &session{conn: conn, done: done, key: key}
		}
		out, err := h.execute(ctx, s.conn, req)
		if err == nil {
			h.pool.put(s, gen)
			return out, nil
		}
		if pooled && staleSession(ctx, err) {
			slog.Debug("sql over http: pooled session is dead, retrying on a new one", "user", req.login.user, "err", err)
			s.close()
			h.pool.drop(key) // its siblings died with it
			continue
		}
		h.pool.put(s, gen) // closed instead when broken or mid-transaction
		return nil, h.queryError(ctx, err)
	}
}

// staleSession reports whether err says a pooled session died while idle
// (so the request never ran and may be retried).
func staleSession(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// admin_shutdown, crash_shutdown, cannot_connect_now: Postgres
		// stopped (fast shutdown) or restarts.
		return pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	return pgconn.SafeToRetry(err)
}

// errTooLarge says the response outgrew MaxBody.
var errTooLarge = errors.New("response is too large")

// errQueryTimeout says the query outlived QueryTimeout.
var errQueryTimeout = errors.New("query timeout")

// execute runs the request's statement or batch on c within QueryTimeout
// and returns the JSON answer.
func (h *sqlHandler) execute(ctx context.Context, c *pgconn.PgConn, req *sqlRequest) ([]byte, error) {
	qctx, cancel := context.WithTimeout(ctx, h.opts.QueryTimeout)
	defer cancel()
	out := &jsonOut{max: int(min(h.opts.MaxBody, math.MaxInt))}
	var err error
	if req.batch {
		err = runBatch(qctx, c, req, out)
	} else {
		err = runQuery(qctx, c, req.queries[0], req.rawText, out)
	}
	if err != nil && qctx.Err() != nil && ctx.Err() == nil && !errors.Is(err, errTooLarge) {
		// pgconn gave up on the session at the deadline: it closes it
		// and sends Postgres a cancel request for the query.
		return nil, errQueryTimeout
	}
	return out.b, err
}

func runBatch(ctx context.Context, c *pgconn.PgConn, req *sqlRequest, out *jsonOut) error {
	if _, err := c.Exec(ctx, req.begin).ReadAll(); err != nil {
		return err
	}
	out.raw(`{"results":[`)
	for i, q := range req.queries {
		if i > 0 {
			out.raw(",")
		}
		if err := runQuery(ctx, c, q, req.rawText, out); err != nil {
			if !c.IsClosed() && ctx.Err() == nil {
				c.Exec(ctx, "ROLLBACK").ReadAll() // if it fails the session is not idle: not pooled
			}
			return err
		}
	}
	out.raw("]}")
	if _, err := c.Exec(ctx, "COMMIT").ReadAll(); err != nil {
		return err
	}
	return nil
}

// runQuery runs one statement (extended protocol, text format) and writes
// its result.
func runQuery(ctx context.Context, c *pgconn.PgConn, q sqlQuery, rawText bool, out *jsonOut) error {
	rr := c.ExecParams(ctx, q.sql, q.params, nil, nil, nil)
	fields := rr.FieldDescriptions()
	out.raw(`{"fields":[`)
	for i, f := range fields {
		if i > 0 {
			out.raw(",")
		}
		out.raw(`{"name":`)
		out.str([]byte(f.Name))
		out.b = fmt.Appendf(out.b, `,"dataTypeID":%d,"tableID":%d,"columnID":%d,"dataTypeSize":%d,"dataTypeModifier":%d,"format":"text"}`,
			f.DataTypeOID, f.TableOID, f.TableAttributeNumber, f.DataTypeSize, f.TypeModifier)
	}
	out.raw(`],"rows":[`)
	for n := 0; rr.NextRow(); n++ {
		if n > 0 {
			out.raw(",")
		}
		out.row(rr.Values(), fields, rawText, q.arrayMode)
		if out.over() {
			// Stop reading: the session is mid-result, so it goes (and
			// Postgres stops sending when the socket closes).
			c.Conn().Close()
			rr.Close()
			return errTooLarge
		}
	}
	tag, err := rr.Close()
	if err != nil {
		return err
	}
	command, count := parseCommandTag(tag.String())
	out.raw(`],"command":`)
	out.str([]byte(command))
	out.raw(`,"rowCount":`)
	if count < 0 {
		out.raw("null")
	} else {
		out.b = strconv.AppendInt(out.b, count, 10)
	}
	out.raw(`,"rowAsArray":`)
	out.b = strconv.AppendBool(out.b, q.arrayMode)
	out.raw("}")
	if out.over() {
		return errTooLarge
	}
	return nil
}

// parseCommandTag splits "INSERT 0 3" into ("INSERT", 3); count is -1
// when the tag has none ("CREATE TABLE" is ("CREATE", -1), as Neon does).
func parseCommandTag(tag string) (string, int64) {
	name, rest, ok := strings.Cut(tag, " ")
	if !ok {
		return tag, -1
	}
	if name == "INSERT" {
		_, rest, _ = strings.Cut(rest, " ")
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	if err != nil {
		return name, -1
	}
	return name, n
}

// connectError answers a failure to open a session.
func connectError(ctx context.Context, err error) *httpError {
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe):
		return &httpError{status: http.StatusBadRequest, msg: pe.Message, code: pe.Code, pg: pe}
	case isBackendError(err):
		return &httpError{status: http.StatusBadRequest, msg: err.Error(), code: "57P03"}
	case ctx.Err() != nil:
		return &httpError{status: http.StatusBadRequest, msg: "request cancelled while connecting to the database", code: "57014"}
	default:
		return &httpError{status: http.StatusBadRequest, msg: "neonfs: could not connect to the database: " + err.Error(), code: "08006"}
	}
}

// queryError answers a failed statement or batch.
func (h *sqlHandler) queryError(ctx context.Context, err error) *httpError {
	var pe *pgconn.PgError
	switch {
	case errors.Is(err, errTooLarge):
		return &httpError{status: http.StatusInsufficientStorage,
			msg: fmt.Sprintf("response is too large (max is %d bytes)", h.opts.MaxBody)}
	case errors.Is(err, errQueryTimeout):
		return &httpError{status: http.StatusBadRequest, code: "57014",
			msg: fmt.Sprintf("neonfs: the query exceeded the %v limit and was cancelled", h.opts.QueryTimeout)}
	case errors.As(err, &pe):
		return &httpError{status: http.StatusBadRequest, msg: pe.Message, code: pe.Code, pg: pe}
	case ctx.Err() != nil:
		return &httpError{status: http.StatusBadRequest, msg: "request cancelled", code: "57014"}
	default:
		return &httpError{status: http.StatusBadRequest, msg: "neonfs: lost the database connection: " + err.Error(), code: "08006"}
	}
}

// errorJSON is the body of an error answer: Neon's keys, null when
// absent.
type errorJSON struct {
	Message          string  `json:"message"`
	Code             *string `json:"code"`
	Detail           *string `json:"detail"`
	Hint             *string `json:"hint"`
	Position         *string `json:"position"`
	InternalPosition *string `json:"internalPosition"`
	InternalQuery    *string `json:"internalQuery"`
	Severity         *string `json:"severity"`
	Where            *string `json:"where"`
	Table            *string `json:"table"`
	Column           *string `json:"column"`
	Schema           *string `json:"schema"`
	DataType         *string `json:"dataType"`
	Constraint       *string `json:"constraint"`
	File             *string `json:"file"`
	Line             *string `json:"line"`
	Routine          *string `json:"routine"`
}

func writeHTTPError(w http.ResponseWriter, e *httpError) {
	opt := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	num := func(n int32) *string {
		if n == 0 {
			return nil
		}
		return opt(strconv.Itoa(int(n)))
	}
	body := errorJSON{Message: e.msg, Code: opt(e.code)}
	if pe := e.pg; pe != nil {
		body.Detail, body.Hint, body.Position = opt(pe.Detail), opt(pe.Hint), num(pe.Position)
		body.InternalPosition, body.InternalQuery = num(pe.InternalPosition), opt(pe.InternalQuery)
		body.Severity, body.Where = opt(pe.Severity), opt(pe.Where)
		body.Table, body.Column, body.Schema = opt(pe.TableName), opt(pe.ColumnName), opt(pe.SchemaName)
		body.DataType, body.Constraint = opt(pe.DataTypeName), opt(pe.ConstraintName)
		body.File, body.Line, body.Routine = opt(pe.File), num(pe.Line), opt(pe.Routine)
	}
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	w.Write(b)
}

// jsonOut builds a response, watching its size.
type jsonOut struct {
	b   []byte
	max int
}

func (o *jsonOut) raw(s string) { o.b = append(o.b, s...) }
func (o *jsonOut) str(s []byte) { o.b = appendJSONString(o.b, s) }
func (o *jsonOut) over() bool   { return len(o.b) > o.max }

// row writes one row: each value its Postgres text form (raw text
// output), or converted to JSON by type as Neon's proxy does without it.
func (o *jsonOut) row(values [][]byte, fields []pgconn.FieldDescription, rawText, arrayMode bool) {
	if arrayMode {
		o.raw("[")
	} else {
		o.raw("{")
	}
	for i, v := range values {
		if i > 0 {
			o.raw(",")
		}
		if !arrayMode {
			o.str([]byte(fields[i].Name))
			o.raw(":")
		}
		switch {
		case v == nil:
			o.raw("null")
		case rawText:
			o.str(v)
		default:
			o.b = appendTyped(o.b, v, fields[i].DataTypeOID)
		}
	}
	if arrayMode {
		o.raw("]")
	} else {
		o.raw("}")
	}
}

// appendJSONString writes s as a JSON string; invalid UTF-8 (a database
// in SQL_ASCII) becomes U+FFFD.
func appendJSONString(b, s []byte) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, `\n`...)
			case c == '\r':
				b = append(b, `\r`...)
			case c == '\t':
				b = append(b, `\t`...)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && n == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}

// pgTypes knows the element type of Postgres's built-in array types.
var pgTypes = sync.OnceValue(pgtype.NewMap)

// appendTyped writes a text value as a JSON value of its type, as Neon's
// proxy does without raw text output: booleans, int2/int4 and finite
// floats as JSON scalars, json and jsonb as themselves, arrays of those as
// JSON arrays, anything else (int8 and numeric included) as a string.
func appendTyped(b, v []byte, oid uint32) []byte {
	if t, ok := pgTypes().TypeForOID(oid); ok {
		if ac, ok := t.Codec.(*pgtype.ArrayCodec); ok && ac.ElementType != nil {
			delim := byte(',')
			if oid == pgtype.BoxArrayOID {
				delim = ';'
			}
			if out, err := appendPGArray(b, v, ac.ElementType.OID, delim); err == nil {
				return out
			}
			return appendJSONString(b, v)
		}
	}
	switch oid {
	case pgtype.BoolOID:
		return strconv.AppendBool(b, string(v) == "t")
	case pgtype.Int2OID, pgtype.Int4OID:
		if _, err := strconv.ParseInt(string(v), 10, 32); err == nil {
			return append(b, v...)
		}
	case pgtype.Float4OID, pgtype.Float8OID:
		bits := 64
		if oid == pgtype.Float4OID {
			bits = 32
		}
		if f, err := strconv.ParseFloat(string(v), bits); err == nil && !math.IsInf(f, 0) && !math.IsNaN(f) {
			return strconv.AppendFloat(b, f, 'g', -1, bits)
		}
	case pgtype.JSONOID, pgtype.JSONBOID:
		if json.Valid(v) {
			return append(b, v...)
		}
	}
	return appendJSONString(b, v)
}

var errArraySyntax = errors.New("malformed array")

// appendPGArray writes an array's text form as a JSON array (nested for
// several dimensions; bounds decoration such as "[0:1]=" is dropped).
func appendPGArray(b, s []byte, elem uint32, delim byte) ([]byte, error) {
	if len(s) > 0 && s[0] == '[' {
		i := strings.IndexByte(string(s), '=')
		if i < 0 {
			return nil, errArraySyntax
		}
		s = s[i+1:]
	}
	b, rest, err := appendPGArrayLevel(b, trimSpace(s), elem, delim)
	if err != nil || len(rest) > 0 {
		return nil, errArraySyntax
	}
	return b, nil
}

func appendPGArrayLevel(b, s []byte, elem uint32, delim byte) ([]byte, []byte, error) {
	if len(s) == 0 || s[0] != '{' {
		return nil, nil, errArraySyntax
	}
	s = trimSpace(s[1:])
	b = append(b, '[')
	if len(s) > 0 && s[0] == '}' {
		return append(b, ']'), trimSpace(s[1:]), nil
	}
	for first := true; ; first = false {
		if !first {
			b = append(b, ',')
		}
		s = trimSpace(s)
		if len(s) == 0 {
			return nil, nil, errArraySyntax
		}
		var err error
		switch s[0] {
		case '{':
			if b, s, err = appendPGArrayLevel(b, s, elem, delim); err != nil {
				return nil, nil, err
			}
		case '"':
			var item []byte
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' {
					i++
					if i == len(s) {
						return nil, nil, errArraySyntax
					}
				}
				item = append(item, s[i])
			}
			if i == len(s) {
				return nil, nil, errArraySyntax
			}
			b = appendTyped(b, item, elem)
			s = trimSpace(s[i+1:])
		default:
			i := 0
			for i < len(s) && s[i] != delim && s[i] != '}' {
				i++
			}
			if i == len(s) {
				return nil, nil, errArraySyntax
			}
			item := trimSpace(s[:i])
			if string(item) == "NULL" {
				b = append(b, "null"...)
			} else {
				b = appendTyped(b, item, elem)
			}
			s = s[i:]
		}
		if len(s) > 0 && s[0] == delim {
			s = s[1:]
			continue
		}
		break
	}
	if len(s) == 0 || s[0] != '}' {
		return nil, nil, errArraySyntax
	}
	return append(b, ']'), trimSpace(s[1:]), nil
}

func trimSpace(s []byte) []byte {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t' || s[0] == '\n' || s[0] == '\r') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t' || s[len(s)-1] == '\n' || s[len(s)-1] == '\r') {
		s = s[:len(s)-1]
	}
	return s
}

// session is a Postgres session opened for SQL over HTTP.
type session struct {
	conn *pgconn.PgConn
	done func()
	key  poolKey
}

func (s *session) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.conn.Close(ctx)
	s.done()
}

// poolKey says which requests a session may serve: the password is kept
// as a salted hash.
type poolKey struct {
	user, database, params string
	password               [sha256.Size]byte
}

// sessionPool keeps idle sessions between requests.
type sessionPool struct {
	salt [16]byte
	mu   sync.Mutex
	gen  uint64 // bumped by closeAll: older sessions are not pooled again
	idle map[poolKey][]*session
}

func newSessionPool() *sessionPool {
	p := &sessionPool{idle: map[poolKey][]*session{}}
	rand.Read(p.salt[:])
	return p
}

func (p *sessionPool) key(l login) poolKey {
	h := sha256.New()
	h.Write(p.salt[:])
	h.Write([]byte(l.password))
	k := poolKey{user: l.user, database: l.database,
		params: "application_name=" + l.params["application_name"] + "\x00options=" + l.params["options"]}
	h.Sum(k.password[:0])
	return k
}

func (p *sessionPool) generation() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gen
}

// get takes the most recently used idle session for k, or nil.
func (p *sessionPool) get(k poolKey) *session {
	var dead []*session
	defer func() {
		for _, s := range dead {
			s.close()
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	for l := p.idle[k]; len(l) > 0; l = p.idle[k] {
		s := l[len(l)-1]
		p.idle[k] = l[:len(l)-1]
		if !s.conn.IsClosed() {
			return s
		}
		dead = append(dead, s)
	}
	delete(p.idle, k)
	return nil
}

// put pools s after a request that began at generation gen, or closes it
// when it is broken, not idle (a transaction left open), from before the
// last closeAll, or one too many.
func (p *sessionPool) put(s *session, gen uint64) {
	p.mu.Lock()
	ok := gen == p.gen && !s.conn.IsClosed() && !s.conn.IsBusy() && s.conn.TxStatus() == 'I' &&
		len(p.idle[s.key]) < maxIdlePerKey
	if ok {
		p.idle[s.key] = append(p.idle[s.key], s)
	}
	p.mu.Unlock()
	if !ok {
		s.close()
	}
}

// drop closes the idle sessions for k.
func (p *sessionPool) drop(k poolKey) {
	p.mu.Lock()
	l := p.idle[k]
	delete(p.idle, k)
	p.mu.Unlock()
	for _, s := range l {
		s.close()
	}
}

// closeAll closes every idle session; sessions in use are closed when
// their request ends.
func (p *sessionPool) closeAll() {
	p.mu.Lock()
	p.gen++
	idle := p.idle
	p.idle = map[poolKey][]*session{}
	p.mu.Unlock()
	for _, l := range idle {
		for _, s := range l {
			s.close()
		}
	}
}
