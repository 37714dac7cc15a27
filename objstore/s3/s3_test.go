package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/neonfs/neonfs/objstore/objstoretest"

	"github.com/minio/minio-go/v7"

	"github.com/neonfs/neonfs/blockstore"
	"github.com/neonfs/neonfs/objstore"
	"github.com/neonfs/neonfs/objstore/s3"
	"github.com/neonfs/neonfs/objstore/s3/s3test"
)

func newS3Store(t *testing.T, cfg s3.Config) *s3.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := s3.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestS3StoreConformance(t *testing.T) {
	srv := s3test.NewServer(t)
	for _, prefix := range []string{"", "vol1/objects"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			cfg := srv.Config()
			cfg.Prefix = prefix
			if prefix == "" {
				cfg.Prefix = "root" // the other run's objects must not show
			}
			objstoretest.Run(t, newS3Store(t, cfg))
		})
	}
	// The keys really are under the prefix, and the prefix ends at a '/'.
	cfg := srv.Config()
	cfg.Prefix = "vol1"
	got, err := newS3Store(t, cfg).List(context.Background(), "objects/list/a")
	if err != nil || len(got) != 3 || got[0].Name != "objects/list/a" {
		t.Fatalf("List under parent prefix = %v, %v", got, err)
	}
	cfg.Prefix = "vol"
	if got, err := newS3Store(t, cfg).List(context.Background(), ""); err != nil || len(got) != 0 {
		t.Fatalf("store with prefix vol sees %d objects of prefix vol1 (%v)", len(got), err)
	}
}

func TestS3StoreEmptyPrefix(t *testing.T) {
	srv := s3test.NewServer(t)
	s := newS3Store(t, srv.Config())
	ctx := context.Background()
	if err := s.Put(ctx, "layers/x", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client().StatObject(ctx, s3test.Bucket, "layers/x", minio.StatObjectOptions{}); err != nil {
		t.Fatalf("object not at the bucket root: %v", err)
	}
}

func TestParseS3URL(t *testing.T) {
	tests := []struct {
		url, bucket, prefix string
		fail                bool
	}{
		{url: "s3://bucket", bucket: "bucket"},
		{url: "s3://bucket/", bucket: "bucket"},
		{url: "s3://my.bucket-1/some/prefix", bucket: "my.bucket-1", prefix: "some/prefix"},
		{url: "s3://bucket/some/prefix/", bucket: "bucket", prefix: "some/prefix"},
		{url: "http://bucket/x", fail: true},
		{url: "bucket/x", fail: true},
		{url: "s3://", fail: true},
		{url: "s3:///prefix", fail: true},
		{url: "s3://Bad_Bucket/x", fail: true},
		{url: "s3://bucket//x", fail: true},
		{url: "s3://bucket/../x", fail: true},
		{url: "s3://bucket/.hidden", fail: true},
	}
	for _, tt := range tests {
		b, p, err := s3.ParseURL(tt.url)
		if tt.fail {
			if err == nil {
				t.Errorf("ParseS3URL(%q) = %q, %q; want an error", tt.url, b, p)
			}
			continue
		}
		if err != nil || b != tt.bucket || p != tt.prefix {
			t.Errorf("ParseS3URL(%q) = %q, %q, %v; want %q, %q", tt.url, b, p, err, tt.bucket, tt.prefix)
		}
	}
	// A URL with credentials in it is refused without echoing them.
	_, _, err := s3.ParseURL("s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/x")
	if err == nil || strings.Contains(err.Error(), "wJalrXUtnFEMI") {
		t.Fatalf("URL with credentials: %v", err)
	}
}

// closedAddr is a 127.0.0.1 address nothing listens on.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func writeCredentials(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "s3-credentials")
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // WriteFile's mode is masked by umask
		t.Fatal(err)
	}
	return p
}

const (
	knownAccess = "AKIANEONFSKNOWNKEY01"
	knownSecret = "neonfsKnownSecret/0123456789abcdefghijKL"
)

func TestS3BadEndpoint(t *testing.T) {
	addr := closedAddr(t)
	creds := writeCredentials(t, "access_key_id="+knownAccess+"\nsecret_access_key="+knownSecret+"\n", 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err := s3.New(ctx, s3.Config{Endpoint: addr, Bucket: "bucket1", CredentialsFile: creds})
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("NewS3Store took %v with a 1 s context", d)
	}
	if err == nil || !strings.Contains(err.Error(), "cannot reach S3 endpoint "+addr) {
		t.Fatalf("err = %v, want cannot reach S3 endpoint %s", err, addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v does not wrap ECONNREFUSED and the deadline", err)
	}
	for _, ep := range []string{"", "http://" + addr, "no-port"} {
		if _, err := s3.New(ctx, s3.Config{Endpoint: ep, Bucket: "bucket1", CredentialsFile: creds}); err == nil {
			t.Errorf("endpoint %q accepted", ep)
		}
	}
}

func TestS3MissingBucket(t *testing.T) {
	srv := s3test.NewServer(t)
	cfg := srv.Config()
	cfg.Bucket = "no-such-bucket"
	_, err := s3.New(context.Background(), cfg)
	want := "bucket no-such-bucket does not exist at endpoint " + srv.Addr()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

func TestS3Credentials(t *testing.T) {
	srv := s3test.NewServer(t)
	good, err := os.ReadFile(srv.Config().CredentialsFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("mode", func(t *testing.T) {
		for _, tt := range []struct {
			mode os.FileMode
			ok   bool
		}{{0o600, true}, {0o400, true}, {0o644, false}, {0o640, false}, {0o604, false}, {0o660, false}} {
			cfg := srv.Config()
			cfg.CredentialsFile = writeCredentials(t, string(good), tt.mode)
			_, err := s3.New(context.Background(), cfg)
			if tt.ok {
				if err != nil {
					t.Errorf("mode %#o: %v", tt.mode, err)
				}
				continue
			}
			if err == nil {
				t.Errorf("mode %#o accepted", tt.mode)
				continue
			}
			if want := fmt.Sprintf("%s has mode %#o", cfg.CredentialsFile, tt.mode); !strings.Contains(err.Error(), want) {
				t.Errorf("mode %#o: err = %v, want it to say %q", tt.mode, err, want)
			}
		}
	})
	t.Run("env", func(t *testing.T) {
		var access, secret string
		for _, l := range strings.Split(string(good), "\n") {
			if v, ok := strings.CutPrefix(l, "access_key_id="); ok {
				access = v
			}
			if v, ok := strings.CutPrefix(l, "secret_access_key="); ok {
				secret = v
			}
		}
		cfg := srv.Config()
		cfg.CredentialsFile = ""
		t.Setenv("AWS_ACCESS_KEY_ID", access)
		t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
		t.Setenv("AWS_SESSION_TOKEN", "")
		if _, err := s3.New(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		if _, err := s3.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
			t.Fatalf("no secret in the environment: %v", err)
		}
	})
	t.Run("wrong", func(t *testing.T) {
		cfg := srv.Config()
		cfg.CredentialsFile = writeCredentials(t, "access_key_id="+knownAccess+"\nsecret_access_key="+knownSecret+"\n", 0o600)
		_, err := s3.New(context.Background(), cfg)
		want := "access denied to bucket " + cfg.Bucket
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "check credentials") {
			t.Fatalf("err = %v, want %q ... check credentials", err, want)
		}
	})
}

// TestS3SecretsNeverInErrors collects every error and string a store with
// known credentials can produce while failing and checks none holds them.
func TestS3SecretsNeverInErrors(t *testing.T) {
	srv := s3test.NewServer(t)
	goodCreds, err := os.ReadFile(srv.Config().CredentialsFile)
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	var logs bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { slog.SetDefault(old) })

	known := "access_key_id=" + knownAccess + "\nsecret_access_key=" + knownSecret + "\n"
	files := []string{
		known,
		"access_key_id " + knownAccess + "\nsecret_access_key " + knownSecret + "\n", // no '='
		"secret_access_key=" + knownSecret + "\n",                                    // no access key
		knownSecret + "=" + knownAccess + "\n",                                       // pasted values only
		"secret_acess_key=" + knownSecret + "\n",                                     // typo
		"access_key_id=" + knownAccess + "\naccess_key_id=" + knownSecret + "\n",
	}
	cfgs := []s3.Config{}
	for _, f := range files {
		cfg := srv.Config()
		cfg.CredentialsFile = writeCredentials(t, f, 0o600)
		cfgs = append(cfgs, cfg)
	}
	loose := srv.Config()
	loose.CredentialsFile = writeCredentials(t, known, 0o644)
	cfgs = append(cfgs, loose)
	unreachable := cfgs[0]
	unreachable.Endpoint = closedAddr(t)
	missing := cfgs[0]
	missing.Bucket = "no-such-bucket"
	cfgs = append(cfgs, unreachable, missing)
	for _, cfg := range cfgs {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := s3.New(ctx, cfg)
		cancel()
		if err == nil {
			t.Fatalf("NewS3Store(%v) succeeded", cfg)
		}
		texts = append(texts, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", cfg))
	}

	// A working store whose server goes away, with the same known keys
	// (the server is started with them), failing every operation.
	cfg := srv.Config()
	s := newS3Store(t, cfg)
	texts = append(texts, s.String(), fmt.Sprintf("%v %+v %#v %s", s, s, s, s))
	slog.Info("store", "store", s)
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = s.Get(ctx, "x")
	texts = append(texts, err.Error())
	for _, txt := range append(texts, logs.String()) {
		for _, secret := range []string{knownAccess, knownSecret} {
			if strings.Contains(txt, secret) {
				t.Errorf("credential %q in %q", secret, txt)
			}
		}
		for _, l := range strings.Split(string(goodCreds), "\n") {
			_, v, _ := strings.Cut(l, "=")
			if len(v) > 8 && strings.Contains(txt, v) {
				t.Errorf("server credential in %q", txt)
			}
		}
	}
}

// faultProxy stands between a store and the server: it counts requests
// and response bytes, and can answer requests itself.
type faultProxy struct {
	srv       *httptest.Server
	requests  atomic.Int64
	respBytes atomic.Int64
	// inject, if set, answers a request instead of the server when it
	// returns true.
	inject atomic.Pointer[func(w http.ResponseWriter, r *http.Request) bool]
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	p := &faultProxy{}
	// Director keeps the client's Host header, which the request
	// signature covers.
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	rp.ModifyResponse = func(resp *http.Response) error {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: &p.respBytes}
		return nil
	}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		if f := p.inject.Load(); f != nil && (*f)(w, r) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *faultProxy) addr() string { return strings.TrimPrefix(p.srv.URL, "http://") }

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingBody) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func TestS3GetRangeIsRanged(t *testing.T) {
	srv := s3test.NewServer(t)
	p := newFaultProxy(t, srv.Addr())
	cfg := srv.Config()
	cfg.Endpoint = p.addr()
	s := newS3Store(t, cfg)
	ctx := context.Background()
	data := objstoretest.RandomBytes(8 << 20)
	if err := s.Put(ctx, "big", data); err != nil {
		t.Fatal(err)
	}
	p.respBytes.Store(0)
	got, err := s.GetRange(ctx, "big", 5<<20, 8192)
	if err != nil || !bytes.Equal(got, data[5<<20:5<<20+8192]) {
		t.Fatalf("GetRange: %v", err)
	}
	if n := p.respBytes.Load(); n > 64<<10 {
		t.Fatalf("GetRange of 8 KiB moved %d bytes", n)
	}
}

// s3Error answers like an S3 server refusing a request.
func s3Error(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>injected</Message></Error>`, code)
}

func TestS3RetriesTransientErrors(t *testing.T) {
	srv := s3test.NewServer(t)
	p := newFaultProxy(t, srv.Addr())
	cfg := srv.Config()
	cfg.Endpoint = p.addr()
	s := newS3Store(t, cfg)
	ctx := context.Background()
	if err := s.Put(ctx, "obj", []byte("payload")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		status int
		code   string
	}{{503, "SlowDown"}, {500, "InternalError"}, {503, "ServiceUnavailable"}, {502, "BadGateway"}} {
		t.Run(tt.code, func(t *testing.T) {
			var left atomic.Int64
			left.Store(3)
			f := func(w http.ResponseWriter, r *http.Request) bool {
				if left.Add(-1) < 0 {
					return false
				}
				s3Error(w, tt.status, tt.code)
				return true
			}
			p.inject.Store(&f)
			defer p.inject.Store(nil)
			p.requests.Store(0)
			got, err := s.Get(ctx, "obj")
			if err != nil || string(got) != "payload" {
				t.Fatalf("Get = %q, %v", got, err)
			}
			if n := p.requests.Load(); n != 4 {
				t.Fatalf("%d requests, want 3 failures and a success", n)
			}
		})
	}
	// Errors that will not go away are returned at once.
	for _, tt := range []struct {
		status int
		code   string
	}{{403, "AccessDenied"}, {404, "NoSuchBucket"}, {400, "InvalidArgument"}} {
		t.Run(tt.code, func(t *testing.T) {
			f := func(w http.ResponseWriter, r *http.Request) bool { s3Error(w, tt.status, tt.code); return true }
			p.inject.Store(&f)
			defer p.inject.Store(nil)
			p.requests.Store(0)
			_, err := s.Get(ctx, "obj")
			if err == nil || !strings.Contains(err.Error(), "get object obj") {
				t.Fatalf("err = %v", err)
			}
			if n := p.requests.Load(); n != 1 {
				t.Fatalf("%d requests for a non-transient error", n)
			}
		})
	}
	p.requests.Store(0)
	if _, err := s.Get(ctx, "missing"); !errors.Is(err, objstore.ErrNotFound) || p.requests.Load() != 1 {
		t.Fatalf("missing object: %v after %d requests", err, p.requests.Load())
	}
}

// TestS3PutSurvivesRestart takes the server away under a Put and brings it
// back: the Put must wait it out, not fail.
func TestS3PutSurvivesRestart(t *testing.T) {
	srv := s3test.NewServer(t)
	s := newS3Store(t, srv.Config())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	down := 1500 * time.Millisecond
	if !testing.Short() {
		down = 4 * time.Second
	}
	srv.Stop()
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(down)
		restarted <- srv.Start()
	}()
	data := objstoretest.RandomBytes(3 << 20)
	start := time.Now()
	if err := s.Put(ctx, "layers/during-outage", data); err != nil {
		t.Fatalf("Put across a restart: %v", err)
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < down {
		t.Fatalf("Put returned after %v, before the server was back (%v)", d, down)
	}
	if got, err := s.Get(ctx, "layers/during-outage"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get after restart: %v", err)
	}
}

func TestS3GivesUpWithContext(t *testing.T) {
	srv := s3test.NewServer(t)
	s := newS3Store(t, srv.Config())
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := s.Put(ctx, "layers/x", []byte("x"))
	for _, want := range []string{"put object layers/x", srv.Addr()} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %v, want it to name %q", err, want)
		}
	}
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("err = %v, want it to wrap the deadline and the last error", err)
	}
}

// TestS3Layer writes a layer through Store into S3, reads it back from a
// second store (another node), then corrupts it behind the store's back.
func TestS3Layer(t *testing.T) {
	srv := s3test.NewServer(t)
	cfg := srv.Config()
	cfg.Prefix = "vol"
	objs := newS3Store(t, cfg)
	ctx := context.Background()

	w := blockstore.NewStore(objs, 1<<20)
	var entries []blockstore.Entry
	for i := range 64 {
		e := blockstore.Entry{Key: blockstore.BlockKey(1, 7, uint64(i))}
		e.Value = blockstore.BlockValue(bytes.Repeat([]byte{byte(i + 1)}, blockstore.BlockSize))
		entries = append(entries, e)
	}
	w.Apply(10, entries)
	w.Freeze(10)
	meta, ok, err := w.WriteLayer(ctx, 10)
	if err != nil || !ok {
		t.Fatalf("WriteLayer: ok=%v err=%v", ok, err)
	}

	r := blockstore.NewStore(newS3Store(t, cfg), 1<<20)
	r.AddLayer(meta)
	lineage := []blockstore.ReadPoint{{Branch: 1, MaxLSN: 10}}
	for i := range 64 {
		v, found, err := r.Get(ctx, blockstore.BlockKey(1, 7, uint64(i)), lineage)
		if err != nil || !found || !bytes.Equal(v.Value.Data, entries[i].Value.Data) {
			t.Fatalf("block %d: found=%v err=%v", i, found, err)
		}
	}
	l, err := blockstore.OpenLayer(ctx, objs, meta.Name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l.Meta().Keys != 64 {
		t.Fatalf("layer has %d keys", l.Meta().Keys)
	}

	good, err := objs.Get(ctx, meta.Name)
	if err != nil {
		t.Fatal(err)
	}
	overwrite := func(b []byte) {
		t.Helper()
		_, err := srv.Client().PutObject(ctx, s3test.Bucket, cfg.Prefix+"/"+meta.Name, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	wantCorrupt := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, objstore.ErrCorrupt) || !strings.Contains(err.Error(), meta.Name) {
			t.Fatalf("%s: err = %v, want ErrCorrupt naming %s", what, err, meta.Name)
		}
	}

	// A flipped byte in a record: the layer opens, the read fails.
	bad := bytes.Clone(good)
	bad[10] ^= 0x40 // inside the first record (block 0)
	overwrite(bad)
	l, err = blockstore.OpenLayer(ctx, objs, meta.Name, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = l.Get(ctx, blockstore.BlockKey(1, 7, 0), 10)
	wantCorrupt("read of a flipped record", err)

	// A flipped byte in the footer and a truncated object: open fails.
	bad = bytes.Clone(good)
	bad[len(bad)-10] ^= 0x01
	overwrite(bad)
	_, err = blockstore.OpenLayer(ctx, objs, meta.Name, nil)
	wantCorrupt("open with a flipped footer", err)
	overwrite(good[:len(good)/2])
	_, err = blockstore.OpenLayer(ctx, objs, meta.Name, nil)
	wantCorrupt("open of a truncated object", err)
	// A reader that opened the layer before it was truncated reads past
	// the new end: GetRange reports the short object as corrupt.
	overwrite(good)
	l, err = blockstore.OpenLayer(ctx, objs, meta.Name, nil)
	if err != nil {
		t.Fatal(err)
	}
	overwrite(good[:100])
	_, _, err = l.Get(ctx, blockstore.BlockKey(1, 7, 63), 10)
	wantCorrupt("read past a truncation", err)
}

// TestS3BigObject puts an object bigger than a part, so it goes up as a
// multipart upload, as a layer does.
func TestS3BigObject(t *testing.T) {
	if testing.Short() {
		t.Skip("40 MiB upload")
	}
	srv := s3test.NewServer(t)
	s := newS3Store(t, srv.Config())
	ctx := context.Background()
	data := bytes.Repeat(objstoretest.RandomBytes(1<<20), 40)
	data[len(data)-1] ^= 1 // parts must not be confused with one another
	if err := s.Put(ctx, "layers/big", data); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "layers/big")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get of a multipart object: equal=%v, %v", bytes.Equal(got, data), err)
	}
	if size, err := s.Size(ctx, "layers/big"); err != nil || size != int64(len(data)) {
		t.Fatalf("Size = %d, %v", size, err)
	}
}
