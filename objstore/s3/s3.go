// Package s3 is the ObjectStore on an S3 bucket (minio-go): the network
// end of the object-store seam. Only the volume's wiring imports it;
// blockstore never does. It never imports blockstore, the volume or the fs:
// it moves objects, not what is in them.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/neonfs/neonfs/objstore"
)

// Config says where a Store keeps its objects.
type Config struct {
	Endpoint string // host:port, no scheme
	Bucket   string
	Prefix   string // objects live under Prefix + "/"; empty for the bucket root
	Region   string // empty: ask the server
	Secure   bool   // TLS
	// CredentialsFile holds access_key_id=... and secret_access_key=...
	// lines and must not be accessible by group or others. When empty, the
	// credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
	// (optionally) AWS_SESSION_TOKEN.
	CredentialsFile string
	// StagingDir holds streamed uploads (CreateTemp) on local disk; the
	// system's temporary directory when empty. Not part of the volume's
	// saved config: the opener chooses it.
	StagingDir string `json:"-"`
}

// String names the location; it never includes credentials.
func (c Config) String() string {
	u := "s3://" + c.Bucket
	if c.Prefix != "" {
		u += "/" + c.Prefix
	}
	return u + " at " + c.Endpoint
}

// ParseURL splits s3://bucket/some/prefix into its bucket and prefix
// (without a trailing '/'; empty for s3://bucket).
func ParseURL(url string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(url, "s3://")
	if !ok {
		return "", "", fmt.Errorf("S3 URL %q: must start with s3://", url)
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	// s3://key:secret@bucket is a common habit; echoing it back would
	// leak the secret.
	if strings.ContainsAny(bucket, "@:") {
		return "", "", errors.New("S3 URL: credentials or ports in the URL are not supported; give the endpoint and a credentials file separately")
	}
	if err := s3utils.CheckValidBucketNameStrict(bucket); err != nil {
		return "", "", fmt.Errorf("S3 URL %q: invalid bucket name %q: %w", url, bucket, err)
	}
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix != "" && !objstore.ValidName(prefix) {
		return "", "", fmt.Errorf("S3 URL %q: invalid prefix %q: components must be non-empty and not start with '.'", url, prefix)
	}
	return bucket, prefix, nil
}

// Store is an objstore.ObjectStore in an S3 bucket, under a key prefix. Object
// names follow DirStore's rules, so a volume can move between the two.
// Transient faults (network errors, 5xx, SlowDown, a request that does not
// finish in time) are retried with exponential backoff until the caller's
// context is done: a flush that waits out an S3 outage is better than a
// failed one. Safe for concurrent use.
type Store struct {
	client   *minio.Client
	core     minio.Core
	endpoint string
	bucket   string
	prefix   string   // "" or the configured prefix with a trailing "/"
	redact   []string // credentials, kept only to scrub them from errors
	staging  string   // Config.StagingDir
}

var _ objstore.ObjectStore = (*Store)(nil)

const (
	// s3RequestTimeout bounds a request that moves no object data, and the
	// wait for a response before the data starts to flow.
	s3RequestTimeout = 30 * time.Second
	// s3MinRate is the slowest transfer (bytes per second) not taken for a
	// hung server.
	s3MinRate = 1 << 20
	// s3PartSize splits big objects (layers are 100+ MiB) into parts
	// uploaded in parallel; smaller objects go in a single PUT.
	s3PartSize = 32 << 20
	// s3ConnectTimeout bounds New's bucket check when the caller's
	// context has no deadline, so a typo in the endpoint fails instead of
	// hanging.
	s3ConnectTimeout = 30 * time.Second

	s3BackoffMin = 50 * time.Millisecond
	s3BackoffMax = 5 * time.Second
)

// s3Timeout is the per-attempt time allowed to move n bytes.
func s3Timeout(n int64) time.Duration {
	return s3RequestTimeout + time.Duration(n/s3MinRate)*time.Second
}

// New connects to the bucket cfg names and checks that it exists
// and that the credentials may use it.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("S3 endpoint: empty (want host:port)")
	}
	if strings.Contains(cfg.Endpoint, "@") {
		// Not echoed: it may hold credentials.
		return nil, errors.New("S3 endpoint: credentials in the endpoint are not supported; use a credentials file or the environment")
	}
	if strings.Contains(cfg.Endpoint, "://") {
		return nil, fmt.Errorf("S3 endpoint %q: want host:port without a scheme (TLS is a separate setting)", cfg.Endpoint)
	}
	if _, _, err := net.SplitHostPort(cfg.Endpoint); err != nil {
		return nil, fmt.Errorf("S3 endpoint %q: want host:port: %w", cfg.Endpoint, err)
	}
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("S3 bucket %q: %w", cfg.Bucket, err)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if !objstore.ValidName(prefix) {
			return nil, fmt.Errorf("S3 prefix %q: components must be non-empty and not start with '.'", cfg.Prefix)
		}
		prefix += "/"
	}
	creds, err := loadS3Credentials(cfg.CredentialsFile)
	if err != nil {
		return nil, err
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(creds.accessKey, creds.secretKey, creds.sessionToken),
		Secure: cfg.Secure,
		Region: cfg.Region,
		// We retry ourselves, with a backoff that outlasts an outage.
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("S3 endpoint %s: %w", cfg.Endpoint, err)
	}
	s := &Store{
		client:   client,
		core:     minio.Core{Client: client},
		endpoint: cfg.Endpoint,
		bucket:   cfg.Bucket,
		prefix:   prefix,
		staging:  cfg.StagingDir,
	}
	if s.staging != "" {
		if err := os.MkdirAll(s.staging, 0o700); err != nil {
			return nil, fmt.Errorf("S3 staging directory: %w", err)
		}
	}
	// Scrub every credential long enough to be one; a 1-3 character test
	// key would otherwise garble every message it happens to occur in.
	for _, c := range []string{creds.accessKey, creds.secretKey, creds.sessionToken} {
		if len(c) >= 4 {
			s.redact = append(s.redact, c)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s3ConnectTimeout)
		defer cancel()
	}
	// A one-key listing rather than HEAD: a HEAD error has no body, so some
	// servers' "unknown access key" (versitygw answers 404) would read as
	// a missing bucket. It also checks the permission the store needs most.
	err = s.retry(ctx, "check bucket", "", func(ctx context.Context, _ *s3Attempt) error {
		for o := range client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, MaxKeys: 1}) {
			return o.Err
		}
		return nil
	})
	if err != nil {
		return nil, s.scrub(s.bucketErr(err))
	}
	return s, nil
}

func (s *Store) bucketErr(err error) error {
	var gu *s3GaveUpError
	if errors.As(err, &gu) {
		return fmt.Errorf("cannot reach S3 endpoint %s: %w", s.endpoint, err)
	}
	if s3Code(err) == minio.NoSuchBucket {
		return fmt.Errorf("bucket %s does not exist at endpoint %s", s.bucket, s.endpoint)
	}
	if s3AccessDenied(err) {
		return fmt.Errorf("access denied to bucket %s at endpoint %s: check credentials: %w", s.bucket, s.endpoint, err)
	}
	if s3NetworkError(err) {
		return fmt.Errorf("cannot reach S3 endpoint %s: %w", s.endpoint, err)
	}
	return fmt.Errorf("check bucket %s at endpoint %s: %w", s.bucket, s.endpoint, err)
}

// String names the store's location; it never includes credentials.
func (s *Store) String() string {
	return "s3://" + s.bucket + "/" + s.prefix + " at " + s.endpoint
}

// GoString keeps %#v (which would print every field) from reaching the
// credentials.
func (s *Store) GoString() string { return "Store(" + s.String() + ")" }

// LogValue keeps slog from printing the struct.
func (s *Store) LogValue() slog.Value { return slog.StringValue(s.String()) }

func (s *Store) key(name string) string { return s.prefix + name }

func (s *Store) checkName(op, name string) error {
	if !objstore.ValidName(name) {
		return fmt.Errorf("%s object %q: invalid object name", op, name)
	}
	return nil
}

// Put uploads data and returns once the server has acknowledged it.
// Objects are immutable, so retrying a PUT whose reply was lost is safe.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	if err := s.checkName("put", name); err != nil {
		return err
	}
	return s.upload(ctx, name, int64(len(data)), func() io.Reader { return bytes.NewReader(data) })
}

// upload PUTs size bytes from body (a fresh reader for every attempt).
func (s *Store) upload(ctx context.Context, name string, size int64, body func() io.Reader) error {
	err := s.retryTimeout(ctx, "put", name, s3Timeout(size), func(ctx context.Context, _ *s3Attempt) error {
		_, err := s.client.PutObject(ctx, s.bucket, s.key(name), body(), size, minio.PutObjectOptions{
			ContentType: "application/octet-stream",
			PartSize:    s3PartSize,
		})
		return err
	})
	if err != nil {
		return s.objectErr("put", name, err)
	}
	return nil
}

// stagePrefix names the local files of streamed uploads (CreateTemp).
const stagePrefix = "neonfs-s3-upload-"

// CreateTemp returns a file in the local staging directory (the system's
// temporary directory unless Config.StagingDir names one).
func (s *Store) CreateTemp(ctx context.Context, name string) (*os.File, error) {
	if err := s.checkName("put", name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("put object %s: %w", name, err)
	}
	f, err := os.CreateTemp(s.staging, stagePrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("put object %s: stage in %s: %w", name, s.stagingDir(), err)
	}
	return f, nil
}

func (s *Store) stagingDir() string {
	if s.staging == "" {
		return os.TempDir()
	}
	return s.staging
}

// PutFile uploads f's content as name, retried like Put (each attempt reads
// the file afresh), then closes and removes f.
func (s *Store) PutFile(ctx context.Context, name string, f *os.File) error {
	defer objstore.DiscardTemp(f)
	if err := s.checkName("put", name); err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("put object %s: %w", name, err)
	}
	size := fi.Size()
	return s.upload(ctx, name, size, func() io.Reader { return io.NewSectionReader(f, 0, size) })
}

// Forget does nothing: the store keeps no local copies.
func (s *Store) Forget(string) {}

// RemoveStaleTemps deletes staged uploads a crash cut short.
func (s *Store) RemoveStaleTemps(age time.Duration) (n int, bytes int64, err error) {
	dir := s.stagingDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, fmt.Errorf("remove stale staged uploads in %s: %w", dir, err)
	}
	for _, e := range ents {
		if e.IsDir() || !strings.HasPrefix(e.Name(), stagePrefix) {
			continue
		}
		fi, err := e.Info()
		if err != nil || time.Since(fi.ModTime()) < age {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err == nil {
			n++
			bytes += fi.Size()
		}
	}
	return n, bytes, nil
}

func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	if err := s.checkName("get", name); err != nil {
		return nil, err
	}
	var out []byte
	err := s.retry(ctx, "get", name, func(ctx context.Context, a *s3Attempt) error {
		body, info, _, err := s.core.GetObject(ctx, s.bucket, s.key(name), minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		defer body.Close()
		if info.Size < 0 {
			a.extend(s3RequestTimeout)
			out, err = io.ReadAll(body)
			return err
		}
		a.extend(s3Timeout(info.Size))
		b := make([]byte, info.Size)
		if _, err := io.ReadFull(body, b); err != nil {
			return err // cut off mid-body: the server went away, retry
		}
		out = b
		return nil
	})
	if err != nil {
		return nil, s.objectErr("get", name, err)
	}
	return out, nil
}

// GetRange fetches only the range, with an HTTP Range request.
func (s *Store) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	return s.ReadRange(ctx, name, off, n, nil)
}

// ReadRange is GetRange into buf's capacity when it is big enough.
func (s *Store) ReadRange(ctx context.Context, name string, off, n int64, buf []byte) ([]byte, error) {
	if err := s.checkName("get", name); err != nil {
		return nil, err
	}
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("get object %s: invalid range offset %d length %d", name, off, n)
	}
	if n > math.MaxInt64-off {
		return nil, fmt.Errorf("get object %s: range [%d, %d+%d) beyond any object: %w", name, off, off, n, objstore.ErrCorrupt)
	}
	if n == 0 {
		// An empty Range is not expressible; the object must still reach off.
		size, err := s.Size(ctx, name)
		if err != nil {
			return nil, err
		}
		if off > size {
			return nil, fmt.Errorf("get object %s: range [%d, %d+0) beyond size %d: %w", name, off, off, size, objstore.ErrCorrupt)
		}
		return []byte{}, nil
	}
	var out []byte
	err := s.retry(ctx, "get", name, func(ctx context.Context, a *s3Attempt) error {
		var opts minio.GetObjectOptions
		if err := opts.SetRange(off, off+n-1); err != nil {
			return err
		}
		body, info, h, err := s.core.GetObject(ctx, s.bucket, s.key(name), opts)
		if err != nil {
			return err
		}
		defer body.Close()
		start, total, ok := parseContentRange(h.Get("Content-Range"))
		switch {
		case !ok && off != 0:
			return errors.New("server ignored the Range header (no Content-Range in the reply)")
		case ok && start != off:
			return fmt.Errorf("asked for bytes from %d, server sent from %d", off, start)
		}
		// Checked before allocating, so a corrupted length read from a
		// layer cannot allocate more than the server sends.
		if info.Size < n {
			if !ok {
				total = info.Size
			}
			return fmt.Errorf("get object %s: range [%d, %d+%d) beyond size %d: %w", name, off, off, n, total, objstore.ErrCorrupt)
		}
		a.extend(s3Timeout(n))
		b := objstore.RangeBuffer(buf, n)
		if _, err := io.ReadFull(body, b); err != nil {
			return err // cut off mid-body: the server went away, retry
		}
		out = b
		return nil
	})
	if err != nil {
		return nil, s.objectErr("get", name, err)
	}
	return out, nil
}

// parseContentRange parses "bytes first-last/total" (total may be "*").
func parseContentRange(v string) (start, total int64, ok bool) {
	v, ok = strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, false
	}
	r, t, ok := strings.Cut(v, "/")
	if !ok {
		return 0, 0, false
	}
	first, _, ok := strings.Cut(r, "-")
	if !ok {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	total = -1
	if t != "*" {
		if total, err = strconv.ParseInt(t, 10, 64); err != nil {
			return 0, 0, false
		}
	}
	return start, total, true
}

func (s *Store) Size(ctx context.Context, name string) (int64, error) {
	if err := s.checkName("stat", name); err != nil {
		return 0, err
	}
	var size int64
	err := s.retry(ctx, "stat", name, func(ctx context.Context, _ *s3Attempt) error {
		info, err := s.client.StatObject(ctx, s.bucket, s.key(name), minio.StatObjectOptions{})
		size = info.Size
		return err
	})
	if err != nil {
		return 0, s.objectErr("stat", name, err)
	}
	return size, nil
}

// Delete removes the object. S3 does not report deleting a missing
// object, but DirStore does (objstore.ErrNotFound), and GC relies on one behaviour
// for both, so Delete checks first; deletes are rare (GC only), so the
// extra request is cheap.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := s.checkName("delete", name); err != nil {
		return err
	}
	if _, err := s.Size(ctx, name); err != nil {
		return fmt.Errorf("delete object %s: %w", name, err)
	}
	err := s.retry(ctx, "delete", name, func(ctx context.Context, _ *s3Attempt) error {
		return s.client.RemoveObject(ctx, s.bucket, s.key(name), minio.RemoveObjectOptions{})
	})
	if err != nil {
		return s.objectErr("delete", name, err)
	}
	return nil
}

// List returns the objects whose names start with prefix, sorted by name.
// Keys under the store prefix that are not valid object names (left by
// other tools) are skipped, as DirStore skips dot files.
func (s *Store) List(ctx context.Context, prefix string) ([]objstore.ObjectInfo, error) {
	var out []objstore.ObjectInfo
	err := s.retry(ctx, "list", prefix, func(ctx context.Context, a *s3Attempt) error {
		out = out[:0]
		opts := minio.ListObjectsOptions{Prefix: s.key(prefix), Recursive: true}
		for o := range s.client.ListObjectsIter(ctx, s.bucket, opts) {
			if o.Err != nil {
				return o.Err
			}
			a.extend(s3RequestTimeout) // a long listing is fine while pages keep coming
			name, ok := strings.CutPrefix(o.Key, s.prefix)
			if !ok || !objstore.ValidName(name) {
				continue
			}
			out = append(out, objstore.ObjectInfo{Name: name, Size: o.Size})
		}
		return nil
	})
	if err != nil {
		return nil, s.scrub(fmt.Errorf("list objects %q in %s: %w", prefix, s, err))
	}
	// S3 lists in UTF-8 binary order already; sorting guards against
	// servers that do not.
	slices.SortFunc(out, func(a, b objstore.ObjectInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
