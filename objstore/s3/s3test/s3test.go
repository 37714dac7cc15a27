// Package s3test runs a real S3 server (versitygw with its posix backend)
// for tests: an S3Store tested against a fake would only test the fake.
// The server can be stopped and started again on the same port and
// directory, so fault tests can take S3 away under a running store.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/neonfs/neonfs/objstore/s3"
)

// Version is the versitygw release the tests are written against.
const Version = "v1.8.0"

const installHint = "install it with `go install github.com/versity/versitygw/cmd/versitygw@" + Version +
	"` (or scripts/deps.sh), or point $NEONFS_VERSITYGW at the binary"

// Bucket is the bucket every server starts with.
const Bucket = "neonfs-test"

const startTimeout = 15 * time.Second

// Server is a versitygw process serving one directory on a fixed
// 127.0.0.1 port. Safe for concurrent use.
type Server struct {
	tb       testing.TB
	bin      string
	dir      string // posix backend root; the bucket is a subdirectory
	addr     string
	logPath  string
	credFile string
	access   string
	secret   string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start starts a server with a fresh bucket and returns its config and a
// function that stops it (also done at cleanup; calling both is fine).
func Start(t testing.TB) (cfg s3.Config, stop func()) {
	t.Helper()
	s := NewServer(t)
	return s.Config(), s.Stop
}

// NewServer starts a server with a fresh bucket in a t.TempDir(). It skips
// the test if versitygw is not installed, unless NEONFS_REQUIRE_S3=1, when
// it fails it. The server is stopped at cleanup.
func NewServer(t testing.TB) *Server {
	t.Helper()
	bin, err := findBinary()
	if err != nil {
		if os.Getenv("NEONFS_REQUIRE_S3") == "1" {
			t.Fatalf("s3test: %v (NEONFS_REQUIRE_S3=1)", err)
		}
		t.Skipf("s3test: %v", err)
	}
	tmp := t.TempDir()
	s := &Server{
		tb:       t,
		bin:      bin,
		dir:      filepath.Join(tmp, "root"),
		logPath:  filepath.Join(tmp, "versitygw.log"),
		credFile: filepath.Join(tmp, "credentials"),
		access:   "neonfs" + randomHex(7),
		secret:   randomHex(20),
	}
	if err := os.Mkdir(s.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	creds := fmt.Sprintf("# s3test root user\naccess_key_id=%s\nsecret_access_key=%s\n", s.access, s.secret)
	if err := os.WriteFile(s.credFile, []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	// Another process can take the free port between our probe and the
	// server's bind; a new port is then worth a second try.
	for try := 0; ; try++ {
		s.addr, err = freeAddr()
		if err == nil {
			err = s.Start()
		}
		if err == nil {
			break
		}
		if try == 2 {
			t.Fatalf("s3test: %v", err)
		}
	}
	if err := s.makeBucket(); err != nil {
		t.Fatalf("s3test: %v", err)
	}
	return s
}

// Config is the S3Config of the server's bucket, with a credentials file.
func (s *Server) Config() s3.Config {
	return s3.Config{
		Endpoint:        s.addr,
		Bucket:          Bucket,
		Region:          "us-east-1",
		CredentialsFile: s.credFile,
	}
}

// Addr is the server's host:port; it stays the same across restarts.
func (s *Server) Addr() string { return s.addr }

// Dir is the posix backend's root: the bucket's objects are files under
// Dir()/Bucket.
func (s *Server) Dir() string { return s.dir }

// Client is a plain S3 client for the server, for tests that tamper with
// objects behind a store's back.
func (s *Server) Client() *minio.Client {
	c, err := minio.New(s.addr, &minio.Options{
		Creds:  credentials.NewStaticV4(s.access, s.secret, ""),
		Region: "us-east-1",
	})
	if err != nil {
		s.tb.Fatalf("s3test: client: %v", err)
	}
	return c
}

// Start starts the server again after Stop, on the same port and
// directory, and waits until it answers. It is a no-op if it is running.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.bin, "--port", s.addr, "--quiet", "posix", s.dir)
	// Credentials go in the environment, not on the command line where
	// every user can read them; the rest of the environment is left out so
	// a VGW_* variable cannot change the server under test.
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
		"ROOT_ACCESS_KEY_ID=" + s.access,
		"ROOT_SECRET_ACCESS_KEY=" + s.secret,
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Do not outlive a test binary that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	if err := waitReady(s.addr, done); err != nil {
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("versitygw on %s: %w; log:\n%s", s.addr, err, tail(s.logPath))
	}
	s.cmd, s.done = cmd, done
	return nil
}

// Stop kills the server (SIGKILL: a crash, not a clean shutdown) and
// waits for it to exit. It is a no-op if it is not running.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd, s.done = nil, nil
}

func (s *Server) makeBucket() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := s.Client().MakeBucket(ctx, Bucket, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		return fmt.Errorf("create bucket %s on %s: %w", Bucket, s.addr, err)
	}
	return nil
}

// waitReady polls until the server answers HTTP (any status: an
// unauthenticated request is refused, which is an answer).
func waitReady(addr string, exited <-chan struct{}) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-exited:
			return errors.New("exited before answering")
		default:
		}
		resp, err := client.Get("http://" + addr + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer within %v: %w", startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// findBinary looks in $NEONFS_VERSITYGW, then PATH, then $GOPATH/bin.
func findBinary() (string, error) {
	if p := os.Getenv("NEONFS_VERSITYGW"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("$NEONFS_VERSITYGW: %w; %s", err, installHint)
		}
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		gopath = strings.TrimSpace(string(out))
	}
	if gopath == "" {
		if home, err := os.UserHomeDir(); err == nil {
			gopath = filepath.Join(home, "go")
		}
	}
	// GOPATH may be a list; go install writes to the first entry.
	gopath, _, _ = strings.Cut(gopath, string(os.PathListSeparator))
	p := filepath.Join(gopath, "bin", "versitygw")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("versitygw not found in $NEONFS_VERSITYGW, PATH or %s; %s", p, installHint)
	}
	return p, nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(bytes.TrimSpace(b))
}
