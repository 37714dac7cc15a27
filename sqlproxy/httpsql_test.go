package sqlproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// sqlHTTPSetup serves an HTTP listener for a stopped endpoint whose
// Postgres asks for scram-sha-256 and the role's password.
func sqlHTTPSetup(t *testing.T, opts HTTPOptions) (*lazyBackend, *HTTPServer) {
	t.Helper()
	return sqlHTTPSetupWith(t, opts, nil)
}

// sqlHTTPSetupWith serves the backend as wrap makes it, when not nil.
func sqlHTTPSetupWith(t *testing.T, opts HTTPOptions, wrap func(*lazyBackend) Backend) (*lazyBackend, *HTTPServer) {
	t.Helper()
	b := newLazyBackend(t)
	if opts.WakeTimeout == 0 {
		opts.WakeTimeout = time.Minute
	}
	var backend Backend = b
	if wrap != nil {
		backend = wrap(b)
	}
	s := ServeHTTP(listenLocal(t), backend, opts)
	t.Cleanup(func() {
		s.Close()
		b.stop()
	})
	return b, s
}

// sqlHTTPConnString is the driver's connection string for the role.
func sqlHTTPConnString(password string) string {
	return "postgresql://postgres:" + url.QueryEscape(password) + "@ep.neonfs.local/postgres?application_name=httpsql_test"
}

// sqlHTTPResponse is an answer, its JSON decoded with numbers kept as
// written.
type sqlHTTPResponse struct {
	status int
	header http.Header
	raw    []byte
	body   map[string]any
}

// sqlHTTPPost sends body (JSON-encoded unless a string) as the driver does:
// raw text output and array mode unless headers say otherwise ("" drops
// a header).
func sqlHTTPPost(t *testing.T, s *HTTPServer, connString string, headers map[string]string, body any) sqlHTTPResponse {
	t.Helper()
	var data []byte
	if b, ok := body.(string); ok {
		data = []byte(b)
	} else {
		var err error
		if data, err = json.Marshal(body); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+s.Addr().String()+"/sql", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	h := map[string]string{hdrConnString: connString, hdrRawText: "true", hdrArrayMode: "true"}
	for k, v := range headers {
		h[k] = v
	}
	for k, v := range h {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	r := sqlHTTPResponse{status: resp.StatusCode, header: resp.Header, raw: buf.Bytes()}
	d := json.NewDecoder(bytes.NewReader(r.raw))
	d.UseNumber()
	if err := d.Decode(&r.body); err != nil && resp.StatusCode != http.StatusOK {
		r.body = nil
	} else if err != nil {
		t.Fatalf("200 answer is not JSON: %v: %s", err, r.raw)
	}
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Errorf("Access-Control-Allow-Origin = %q", got)
	}
	return r
}

// expect fails t unless the answer has the status and, for errors, the
// SQLSTATE.
func (r sqlHTTPResponse) expect(t *testing.T, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.raw)
	}
	if code != "" && r.body["code"] != code {
		t.Fatalf("code %v, want %s: %s", r.body["code"], code, r.raw)
	}
}

func jsonString(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// One statement with a parameter of each kind, answered in array and in
// object mode with raw text output: every value its Postgres text form.
func TestSQLOverHTTPParams(t *testing.T) {
	b, s := sqlHTTPSetup(t, HTTPOptions{})
	cs := sqlHTTPConnString(b.cfg.Password)
	query := map[string]any{
		"query": `SELECT $1::text AS n, $2::bool AS b, $3::int AS i, $4::numeric AS num, $5::text AS s,
			$6::bytea AS by, $7::int[] AS arr, $8::text[] AS ta, $9::jsonb AS jb, $10::json AS j, $11::timestamptz AS ts`,
		"params": []any{nil, true, 42, json.Number("1.50"), `it's "x" \ y`, `\x0102ff`, []any{1, nil, 3},
			[]any{`a"b`, `c\d`, nil, "NULL", map[string]any{"k": 1}}, json.RawMessage(`{"z": [1, "x"], "a": null}`),
			json.RawMessage(`{"z": 1, "a": 2}`), "2024-05-06 07:08:09.123+00"},
	}
	want := []any{nil, "t", "42", "1.50", `it's "x" \ y`, `\x0102ff`, "{1,NULL,3}",
		`{"a\"b","c\\d",NULL,"NULL","{\"k\":1}"}`, `{"a": null, "z": [1, "x"]}`, `{"z":1,"a":2}`, "2024-05-06 07:08:09.123+00"}
	names := []string{"n", "b", "i", "num", "s", "by", "arr", "ta", "jb", "j", "ts"}
	oids := []uint32{25, 16, 23, 1700, 25, 17, 1007, 1009, 3802, 114, 1184}

	r := sqlHTTPPost(t, s, cs, map[string]string{"Neon-Array-Mode": "true"}, query)
	r.expect(t, http.StatusOK, "")
	if r.body["command"] != "SELECT" || r.body["rowCount"] != json.Number("1") || r.body["rowAsArray"] != true {
		t.Errorf("command, rowCount, rowAsArray: %v %v %v", r.body["command"], r.body["rowCount"], r.body["rowAsArray"])
	}
	fields := r.body["fields"].([]any)
	for i, f := range fields {
		f := f.(map[string]any)
		if f["name"] != names[i] || f["dataTypeID"] != json.Number(fmt.Sprint(oids[i])) || f["format"] != "text" {
			t.Errorf("field %d: %v", i, f)
		}
	}
	row := r.body["rows"].([]any)[0].([]any)
	if got, w := jsonString(t, row), jsonString(t, want); got != w {
		t.Errorf("array-mode row\n got %s\nwant %s", got, w)
	}

	r = sqlHTTPPost(t, s, cs, map[string]string{"Neon-Array-Mode": ""}, query)
	r.expect(t, http.StatusOK, "")
	if r.body["rowAsArray"] != false {
		t.Errorf("rowAsArray %v without array mode", r.body["rowAsArray"])
	}
	obj := r.body["rows"].([]any)[0].(map[string]any)
	for i, n := range names {
		if got, w := jsonString(t, obj[n]), jsonString(t, want[i]); got != w {
			t.Errorf("object-mode %s = %s, want %s", n, got, w)
		}
	}
	// The body's own arrayMode overrides the header.
	query["arrayMode"] = true
	r = sqlHTTPPost(t, s, cs, map[string]string{"Neon-Array-Mode": ""}, query)
	if _, ok := r.body["rows"].([]any)[0].([]any); !ok || r.body["rowAsArray"] != true {
		t.Errorf("arrayMode in the body ignored: %s", r.raw)
	}
	if b.touches.Load() < 6 {
		t.Errorf("%d touches for three requests, want one at the start and one at the end of each", b.touches.Load())
	}
}

// Fields and text values are those pgx sees for the same query.
func TestSQLOverHTTPMatchesPgx(t *testing.T) {
	b, s := sqlHTTPSetup(t, HTTPOptions{})
	cs := sqlHTTPConnString(b.cfg.Password)
	r := sqlHTTPPost(t, s, cs, nil, map[string]any{"query": `CREATE TABLE items (id serial PRIMARY KEY,
		name varchar(20), price numeric(8,2), tags text[], meta jsonb, seen timestamptz DEFAULT '2024-01-02 03:04:05+00')`})
	r.expect(t, http.StatusOK, "")
	if r.body["command"] != "CREATE" || r.body["rowCount"] != nil {
		t.Errorf("CREATE TABLE: command %v rowCount %v", r.body["command"], r.body["rowCount"])
	}
	r = sqlHTTPPost(t, s, cs, nil, map[string]any{
		"query":  "INSERT INTO items (name, price, tags, meta) VALUES ($1, $2, $3, $4), ('two', NULL, '{}', NULL)",
		"params": []any{"one", "9.5", []any{"x y", `q"`}, map[string]any{"a": []any{1, 2}}},
	})
	r.expect(t, http.StatusOK, "")
	if r.body["command"] != "INSERT" || r.body["rowCount"] != json.Number("2") {
		t.Errorf("INSERT: command %v rowCount %v", r.body["command"], r.body["rowCount"])
	}

	const q = `SELECT i.*, i.price * 2 AS double, NULL::int AS nothing, 1.5::float4 AS f4, ARRAY[[1,2],[3,4]] AS grid,
		'(1,2),(0,0)'::box AS bx, 'é ✓'::text AS utf8 FROM items i ORDER BY id`
	r = sqlHTTPPost(t, s, cs, nil, map[string]any{"query": q})
	r.expect(t, http.StatusOK, "")

	ctx := context.Background()
	b.mu.Lock()
	conn, err := b.srv.Connect(ctx)
	b.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, q, pgx.QueryExecModeSimpleProtocol) // text format
	if err != nil {
		t.Fatal(err)
	}
	var want [][]any
	fds := rows.FieldDescriptions()
	for rows.Next() {
		var row []any
		for _, v := range rows.RawValues() {
			if v == nil {
				row = append(row, nil)
			} else {
				row = append(row, string(v))
			}
		}
		want = append(want, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	fields := r.body["fields"].([]any)
	if len(fields) != len(fds) {
		t.Fatalf("%d fields, pgx sees %d", len(fields), len(fds))
	}
	for i, fd := range fds {
		got := fields[i].(map[string]any)
		w := map[string]any{"name": fd.Name, "dataTypeID": json.Number(fmt.Sprint(fd.DataTypeOID)),
			"tableID": json.Number(fmt.Sprint(fd.TableOID)), "columnID": json.Number(fmt.Sprint(fd.TableAttributeNumber)),
			"dataTypeSize": json.Number(fmt.Sprint(fd.DataTypeSize)), "dataTypeModifier": json.Number(fmt.Sprint(fd.TypeModifier)),
			"format": "text"}
		if jsonString(t, got) != jsonString(t, w) {
			t.Errorf("field %d\n got %v\nwant %v", i, got, w)
		}
	}
	if fields[0].(map[string]any)["tableID"] == json.Number("0") {
		t.Error("a table's column has no tableID")
	}
	if got, w := jsonString(t, r.body["rows"]), jsonString(t, want); got != w {
		t.Errorf("rows\n got %s\nwant %s", got, w)
	}
	if r.body["rowCount"] != json.Number("2") {
		t.Errorf("rowCount %v", r.body["rowCount"])
	}
}

// Without raw text output values are JSON by type, as from Neon's proxy.
func TestSQLOverHTTPTypedOutput(t *testing.T) {
	b, s := sqlHTTPSetup(t, HTTPOptions{})
	cs := sqlHTTPConnString(b.cfg.Password)
	r := sqlHTTPPost(t, s, cs, map[string]string{hdrRawText: ""}, map[string]any{"query": `SELECT true AS b, 7::int2 AS i2,
		-8 AS i4, 9::int8 AS i8, 1.25::float8 AS f, 'NaN'::float8 AS nan, '{"k": [1]}'::jsonb AS j, 2.5::numeric AS num,
		ARRAY[[1,NULL],[3,4]] AS grid, ARRAY['a,b', 'c"d', NULL, 'NULL', ''] AS ta, '{}'::int[] AS empty,
		ARRAY[true,false] AS bools, '[0:1]={5,6}'::int[] AS bounded, ARRAY['(1,1),(0,0)'::box, '(2,2),(1,1)'] AS boxes,
		NULL::int AS n`})
	r.expect(t, http.StatusOK, "")
	want := `[true,7,-8,"9",1.25,"NaN",{"k":[1]},"2.5",[[1,null],[3,4]],["a,b","c\"d",null,"NULL",""],[],[true,false],[5,6],["(1,1),(0,0)","(2,2),(1,1)"],null]`
	if got := jsonString(t, r.body["rows"].([]any)[0]); got != want {
		t.Errorf("typed row\n got %s\nwant %s", got, want)
	}
}

// A batch runs in one transaction with the isolation and access the
// headers ask for; a failing statement rolls it all back.
func TestSQLOverHTTPBatch(t *testing.T) {
	b, s := sqlHTTPSetup(t, HTTPOptions{})
	cs := sqlHTTPConnString(b.cfg.Password)
	sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "CREATE TABLE t (v int)"}).expect(t, http.StatusOK, "")

	settings := map[string]any{"query": `SELECT current_setting('transaction_isolation') AS iso,
		current_setting('transaction_read_only') AS ro, current_setting('transaction_deferrable') AS df`}
	r := sqlHTTPPost(t, s, cs, map[string]string{hdrIsolation: "Serializable", hdrReadOnly: "true", hdrDeferrable: "true"},
		map[string]any{"queries": []any{settings, map[string]any{"query": "SELECT $1::int + 1 AS x", "params": []any{"1"}}}})
	r.expect(t, http.StatusOK, "")
	results := r.body["results"].([]any)
	if len(results) != 2 {
		t.Fatalf("%d results: %s", len(results), r.raw)
	}
	if got := jsonString(t, results[0].(map[string]any)["rows"]); got != `[["serializable","on","on"]]` {
		t.Errorf("serializable read-only deferrable batch ran as %s", got)
	}
	if got := jsonString(t, results[1].(map[string]any)["rows"]); got != `[["2"]]` {
		t.Errorf("second statement: %s", got)
	}
	if r.header.Get(hdrIsolation) != "Serializable" || r.header.Get(hdrReadOnly) != "true" || r.header.Get(hdrDeferrable) != "true" {
		t.Errorf("batch headers not echoed: %v", r.header)
	}

	// Only "true" is true; the default isolation is read committed.
	r = sqlHTTPPost(t, s, cs, map[string]string{hdrIsolation: "RepeatableRead", hdrReadOnly: "TRUE"},
		map[string]any{"queries": []any{settings, map[string]any{"query": "INSERT INTO t VALUES (1)"}}})
	r.expect(t, http.StatusOK, "")
	if got := jsonString(t, r.body["results"].([]any)[0].(map[string]any)["rows"]); got != `[["repeatable read","off","off"]]` {
		t.Errorf("repeatable read batch ran as %s", got)
	}
	r = sqlHTTPPost(t, s, cs, nil, map[string]any{"queries": []any{settings}})
	if got := jsonString(t, r.body["results"].([]any)[0].(map[string]any)["rows"]); got != `[["read committed","off","off"]]` {
		t.Errorf("default batch ran as %s", got)
	}

	// A read-only batch cannot write.
	sqlHTTPPost(t, s, cs, map[string]string{hdrReadOnly: "true"},
		map[string]any{"queries": []any{map[string]any{"query": "INSERT INTO t VALUES (2)"}}}).expect(t, http.StatusBadRequest, "25006")
	// A failure rolls back the statements before it.
	sqlHTTPPost(t, s, cs, nil, map[string]any{"queries": []any{
		map[string]any{"query": "INSERT INTO t VALUES (3)"},
		map[string]any{"query": "SELECT 1/0"},
	}}).expect(t, http.StatusBadRequest, "22012")
	r = sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "SELECT array_agg(v ORDER BY v)::text AS vs FROM t"})
	if got := jsonString(t, r.body["rows"]); got != `[["{1}"]]` {
		t.Errorf("after a failed batch t holds %s, want only the committed 1", got)
	}
}

// Errors are 400s in Neon's shape (Postgres's own fields), or the status
// the request deserves.
func TestSQLOverHTTPErrors(t *testing.T) {
	b, s := sqlHTTPSetup(t, HTTPOptions{MaxBody: 1 << 16})
	cs := sqlHTTPConnString(b.cfg.Password)

	r := sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "SELECT 1 FRM nowhere"})
	r.expect(t, http.StatusBadRequest, "42601")
	if r.body["position"] != "14" || r.body["severity"] != "ERROR" || !strings.Contains(r.body["message"].(string), "syntax error") {
		t.Errorf("syntax error: %s", r.raw)
	}
	for _, k := range []string{"detail", "hint", "where", "table", "column", "schema", "dataType", "constraint", "routine"} {
		if _, ok := r.body[k]; !ok {
			t.Errorf("error has no %q key: %s", k, r.raw)
		}
	}
	sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "SELECT * FROM nowhere"}).expect(t, http.StatusBadRequest, "42P01")

	// A wrong password is Postgres's refusal, and not served by a session
	// pooled for the right one.
	sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "SELECT 1"}).expect(t, http.StatusOK, "")
	r = sqlHTTPPost(t, s, sqlHTTPConnString("wrong"), nil, map[string]any{"query": "SELECT 1"})
	r.expect(t, http.StatusBadRequest, "28P01")
	if !strings.Contains(r.body["message"].(string), "password authentication failed") {
		t.Errorf("wrong password: %s", r.raw)
	}

	// Malformed connection strings are named, the password never echoed.
	for _, c := range []struct{ conn, want string }{
		{"", "missing"},
		{"mysql://postgres:hunter2@h/postgres", "postgres://"},
		{"postgres://h/postgres", "no user"},
		{"postgres://postgres@h/postgres", "no password"},
		{"postgres://postgres:hunter2@h", "no database"},
		{"postgres://postgres:hunter2%zz@h/postgres", "not a valid URL"},
	} {
		r := sqlHTTPPost(t, s, c.conn, nil, map[string]any{"query": "SELECT 1"})
		r.expect(t, http.StatusBadRequest, "")
		if msg, _ := r.body["message"].(string); !strings.Contains(msg, c.want) || strings.Contains(string(r.raw), "hunter2") {
			t.Errorf("connection string %q: %s", c.conn, r.raw)
		}
	}

	sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "COPY pg_class FROM STDIN"}).expect(t, http.StatusBadRequest, "0A000")
	sqlHTTPPost(t, s, cs, map[string]string{hdrIsolation: "Snapshot"},
		map[string]any{"queries": []any{map[string]any{"query": "SELECT 1"}}}).expect(t, http.StatusBadRequest, "")
	sqlHTTPPost(t, s, cs, nil, `{"query": `).expect(t, http.StatusBadRequest, "")
	sqlHTTPPost(t, s, cs, nil, `{"sql": "SELECT 1"}`).expect(t, http.StatusBadRequest, "")
	sqlHTTPPost(t, s, cs, nil, map[string]any{"query": strings.Repeat("-", 1<<16) + "\nSELECT 1"}).expect(t, http.StatusRequestEntityTooLarge, "")
	sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "SELECT repeat('x', 1000) FROM generate_series(1, 100)"}).
		expect(t, http.StatusInsufficientStorage, "")
	// The session given up mid-result is not pooled: the next request works.
	sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "SELECT 1"}).expect(t, http.StatusOK, "")

	// Preflight, and methods other than POST.
	req, _ := http.NewRequest(http.MethodOptions, "http://"+s.Addr().String()+"/sql", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "neon-connection-string,neon-raw-text-output")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != "*" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), hdrConnString) ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	resp, err = http.Get("http://" + s.Addr().String() + "/sql")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("GET /sql: %d %v", resp.StatusCode, resp.Header)
	}
}

// backendPid asks which Postgres backend served the request.
func backendPid(t *testing.T, s *HTTPServer, cs string) string {
	t.Helper()
	r := sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "SELECT pg_backend_pid()::text"})
	r.expect(t, http.StatusOK, "")
	return r.body["rows"].([]any)[0].([]any)[0].(string)
}

// Sessions are pooled between requests; closeIdle (suspend) closes them;
// a pooled session whose Postgres stopped under it is replaced, waking
// Postgres; a session left in a transaction is not pooled.
func TestSQLOverHTTPPool(t *testing.T) {
	b, s := sqlHTTPSetup(t, HTTPOptions{})
	cs := sqlHTTPConnString(b.cfg.Password)
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 5 {
				r := sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "SELECT $1::int * 10 + $2::int AS v", "params": []any{i, j}})
				if got, want := jsonString(t, r.body["rows"]), fmt.Sprintf(`[["%d"]]`, i*10+j); r.status != http.StatusOK || got != want {
					t.Errorf("concurrent request: %d %s, want %s", r.status, r.raw, want)
				}
			}
		}()
	}
	wg.Wait()
	s.CloseIdle()
	p1 := backendPid(t, s, cs)
	if p2 := backendPid(t, s, cs); p2 != p1 {
		t.Errorf("second request on backend %s, first on %s: not pooled", p2, p1)
	}
	s.CloseIdle()
	p3 := backendPid(t, s, cs)
	if p3 == p1 {
		t.Error("the pooled session survived CloseIdle")
	}

	// A statement leaving a transaction open: its session is closed.
	sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "BEGIN"}).expect(t, http.StatusOK, "") // on p3's session
	if p := backendPid(t, s, cs); p == p3 {
		t.Error("a later request ran inside the transaction another left open")
	}
	p3 = backendPid(t, s, cs)

	// Postgres stops without the pool being told (a crash, or a suspend
	// racing a request): the next request retries on a new session.
	b.mu.Lock()
	if err := b.srv.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.srv = nil
	b.mu.Unlock()
	if p := backendPid(t, s, cs); p == p3 {
		t.Error("served by a session of the stopped Postgres")
	}
	if n := b.starts.Load(); n != 2 {
		t.Errorf("Postgres started %d times, want twice", n)
	}
}

// countingBackend counts the connections dialled and those reported done.
type countingBackend struct {
	*lazyBackend
	dials, dones atomic.Int32
}

func (c *countingBackend) Dial(ctx context.Context) (net.Conn, func(), error) {
	conn, done, err := c.lazyBackend.Dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	c.dials.Add(1)
	var once sync.Once
	return conn, func() {
		once.Do(func() {
			c.dones.Add(1)
			done()
		})
	}, nil
}

// A query running past QueryTimeout is cancelled in Postgres and answered
// with 57014; every connection dialled, the cancel request's included, is
// reported done once closed.
func TestSQLOverHTTPQueryTimeout(t *testing.T) {
	var cb *countingBackend
	b, s := sqlHTTPSetupWith(t, HTTPOptions{QueryTimeout: time.Second}, func(b *lazyBackend) Backend {
		cb = &countingBackend{lazyBackend: b}
		return cb
	})
	cs := sqlHTTPConnString(b.cfg.Password)
	start := time.Now()
	r := sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "SELECT pg_sleep(60)"})
	r.expect(t, http.StatusBadRequest, "57014")
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("timed out after %v", took)
	}
	if msg := r.body["message"].(string); !strings.Contains(msg, "1s") {
		t.Errorf("timeout message %q does not name the limit", msg)
	}
	// Postgres no longer runs it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := sqlHTTPPost(t, s, cs, nil, map[string]any{"query": "SELECT count(*)::text FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'"})
		r.expect(t, http.StatusOK, "")
		if jsonString(t, r.body["rows"]) == `[["0"]]` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the timed-out query still runs in Postgres")
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.CloseIdle()
	for deadline := time.Now().Add(10 * time.Second); cb.dials.Load() != cb.dones.Load(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections dialled, %d done", cb.dials.Load(), cb.dones.Load())
		}
	}
	if cb.dials.Load() < 3 { // the timed-out session, its cancel request, the pooled one
		t.Errorf("%d connections dialled: no cancel request?", cb.dials.Load())
	}
}

// Parameters become Postgres text as Neon's proxy makes them.
func TestSQLParamText(t *testing.T) {
	for _, c := range []struct {
		in   string
		want any // nil for NULL
	}{
		{`null`, nil},
		{`"a\"b"`, `a"b`},
		{`true`, "true"},
		{`-1.5e3`, "-1.5e3"},
		{`12345678901234567890`, "12345678901234567890"},
		{`{"b": 1, "a": [1, 2]}`, `{"b":1,"a":[1,2]}`},
		{`[1, "two", null, true, [3], {"k": "v"}, "NULL"]`, `{1,"two",NULL,true,{3},"{\"k\":\"v\"}","NULL"}`},
		{`["back\\slash", ""]`, `{"back\\slash",""}`},
	} {
		got, err := paramText(json.RawMessage(c.in))
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if c.want == nil {
			if got != nil {
				t.Errorf("%s: %q, want NULL", c.in, got)
			}
			continue
		}
		if string(got) != c.want {
			t.Errorf("%s: %s, want %s", c.in, got, c.want)
		}
	}
}
