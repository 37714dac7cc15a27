package tests

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// nodeDriverDir holds driver.mjs and the serverless driver installed by
// scripts/deps.sh (npm ci).
func nodeDriverDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("node")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node not installed")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@neondatabase", "serverless")); err != nil {
		if os.Getenv("NEONFS_REQUIRE_NODE") != "" {
			t.Fatalf("the serverless driver is not installed in %s (scripts/deps.sh runs npm ci there): %v", dir, err)
		}
		t.Skipf("the serverless driver is not installed in %s: run scripts/deps.sh", dir)
	}
	return dir
}

// Neon's serverless driver, unmodified, run by Node against an endpoint
// that is suspended when it starts: a Pool query over the WebSocket (which
// wakes it), a transaction of 50 inserts on one client, neon() over HTTP
// and a transaction there, and a wrong password refused on both paths with
// Postgres's 28P01.
func TestServerlessDriver(t *testing.T) {
	requireE2E(t)
	requirePostgres(t)
	if targetKind() != "neonfs" {
		t.Skip("endpoints are neonfs's")
	}
	nodeDir := nodeDriverDir(t)
	dir := testDir(t, "serverless")
	c := volumeCLI{bin: neonfsBinary(t), data: filepath.Join(dir, "volume")}
	runDir := filepath.Join(dir, "run")
	if out, err := exec.Command(c.bin, "init", "--data", c.data).CombinedOutput(); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	logPath := filepath.Join(dir, "serve.log")
	startServe(t, c, runDir, logPath)

	httpAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	c.refused(t, "--http", "endpoint", "create", "main", "--http", "nonsense")
	var rep struct {
		ConnString   string `json:"connection_string"`
		WebSocketURL string `json:"websocket_url"`
		SQLOverHTTP  string `json:"sql_over_http_url"`
	}
	c.json(t, &rep, "endpoint", "create", "main", "--http", httpAddr, "--suspend-after", "5s")
	if rep.WebSocketURL != "ws://"+httpAddr+"/v2" || rep.SQLOverHTTP != "http://"+httpAddr+"/sql" {
		t.Errorf("endpoint create --http answered %+v", rep)
	}
	if e := endpointState(t, c, "main"); e.State != "suspended" {
		t.Fatalf("a new endpoint is %s", e.State)
	}
	// The first start (initdb) outside the driver's timings, then suspend.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, rep.ConnString)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, tailFile(logPath, 2000))
	}
	conn.Close(ctx)
	waitFor(t, time.Minute, "the endpoint to suspend", func() bool { return endpointState(t, c, "main").State == "suspended" })
	before := endpointState(t, c, "main").ColdStarts

	cmd := exec.Command("node", filepath.Join(nodeDir, "driver.mjs"))
	cmd.Dir = nodeDir
	cmd.Env = append(os.Environ(), "DATABASE_URL="+rep.ConnString, "NEONFS_HTTP="+httpAddr)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	done := make(chan struct{})
	var out []byte
	go func() { out, err = cmd.Output(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("driver.mjs hung; stderr:\n%s\nserve log:\n%s", stderr.String(), tailFile(logPath, 3000))
	}
	if err != nil {
		t.Fatalf("driver.mjs: %v\nstdout: %s\nstderr:\n%s\nserve log:\n%s", err, out, stderr.String(), tailFile(logPath, 3000))
	}
	var got struct {
		PoolAnswer      int            `json:"poolAnswer"`
		FirstRowMs      int            `json:"firstRowMs"`
		WSCount         int            `json:"wsCount"`
		HTTPRow         map[string]any `json:"httpRow"`
		HTTPTxInsert    int            `json:"httpTxInsert"`
		HTTPTxCount     int            `json:"httpTxCount"`
		HTTPBadPassword string         `json:"httpBadPassword"`
		WSBadPassword   string         `json:"wsBadPassword"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("driver.mjs printed %q: %v", out, err)
	}
	t.Logf("driver: %s", out)
	if got.PoolAnswer != 42 || got.WSCount != 50 {
		t.Errorf("over the WebSocket: answer %d, %d rows; want 42, 50", got.PoolAnswer, got.WSCount)
	}
	if got.HTTPRow["seven"] != float64(7) || got.HTTPRow["x"] != "x" || got.HTTPRow["nothing"] != nil || got.HTTPRow["n"] != float64(50) {
		t.Errorf("over HTTP: row %v", got.HTTPRow)
	}
	if got.HTTPTxInsert != 51 || got.HTTPTxCount != 51 {
		t.Errorf("HTTP transaction: inserted %d, counted %d; want 51, 51", got.HTTPTxInsert, got.HTTPTxCount)
	}
	if got.HTTPBadPassword != "28P01" || got.WSBadPassword != "28P01" {
		t.Errorf("a wrong password: HTTP %q, WebSocket %q; want 28P01 both", got.HTTPBadPassword, got.WSBadPassword)
	}
	if after := endpointState(t, c, "main").ColdStarts; after != before+1 {
		t.Errorf("the driver's session woke the endpoint %d times, want once", after-before)
	}
	if strings.Contains(readFile(t, logPath), "wrong-password") {
		t.Error("the daemon's log holds a client's password")
	}
}
