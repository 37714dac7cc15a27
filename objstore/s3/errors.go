package s3

// Errors and retries: which S3 errors are transient, the retry loop with
// its per-attempt timeouts; loading credentials and scrubbing them from
// messages.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/neonfs/neonfs/objstore"
)

// objectErr turns the error of op on name into one that names the object
// and the endpoint and wraps objstore.ErrNotFound or objstore.ErrCorrupt where they apply.
func (s *Store) objectErr(op, name string, err error) error {
	if errors.Is(err, objstore.ErrCorrupt) || errors.Is(err, objstore.ErrNotFound) {
		return s.scrub(err) // already names the object
	}
	where := "s3://" + s.bucket + "/" + s.key(name) + " at " + s.endpoint
	var gu *s3GaveUpError
	switch {
	case errors.As(err, &gu) && gu.last == nil: // canceled before the first attempt
		return s.scrub(fmt.Errorf("%s object %s: %w", op, name, err))
	case errors.As(err, &gu):
		return s.scrub(fmt.Errorf("%s object %s: cannot reach S3 endpoint %s: %w", op, name, s.endpoint, err))
	case s3Code(err) == minio.NoSuchKey:
		return s.scrub(fmt.Errorf("%s object %s: %w: %w", op, name, objstore.ErrNotFound, err))
	case s3Code(err) == minio.NoSuchBucket:
		return s.scrub(fmt.Errorf("%s object %s: bucket %s does not exist at endpoint %s: %w", op, name, s.bucket, s.endpoint, err))
	case s3AccessDenied(err):
		return s.scrub(fmt.Errorf("%s object %s: access denied to bucket %s at endpoint %s: check credentials: %w", op, name, s.bucket, s.endpoint, err))
	case s3Code(err) == "InvalidRange":
		return s.scrub(fmt.Errorf("%s object %s: range beyond the end of the object: %w: %w", op, name, objstore.ErrCorrupt, err))
	}
	return s.scrub(fmt.Errorf("%s object %s (%s): %w", op, name, where, err))
}

func s3AccessDenied(err error) bool {
	switch s3Code(err) {
	case minio.AccessDenied, "InvalidAccessKeyId", "SignatureDoesNotMatch", "XAdminUserNotFound":
		return true
	}
	return s3StatusCode(err) == http.StatusForbidden
}

func s3Code(err error) string {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return er.Code
	}
	return ""
}

func s3StatusCode(err error) int {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return er.StatusCode
	}
	return 0
}

// s3Transient reports whether a failed request is worth repeating.
func s3Transient(err error) bool {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		switch er.Code {
		case minio.NoSuchKey, minio.NoSuchBucket, minio.AccessDenied, minio.InvalidArgument,
			"InvalidAccessKeyId", "SignatureDoesNotMatch", "XAdminUserNotFound", "InvalidRange", "InvalidBucketName":
			return false
		case "SlowDown", "SlowDownRead", "SlowDownWrite", "InternalError", "ServiceUnavailable",
			"RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled":
			return true
		}
		return er.StatusCode >= 500 || er.StatusCode == http.StatusTooManyRequests || er.StatusCode == http.StatusRequestTimeout
	}
	if errors.Is(err, errS3AttemptTimeout) {
		return true
	}
	return s3NetworkError(err)
}

// s3NetworkError reports whether err is a connection-level failure that
// may go away (refused, reset, cut off, timed out), as opposed to a
// misconfiguration such as TLS against a plain-text server.
func s3NetworkError(err error) bool {
	var (
		cv *tls.CertificateVerificationError
		rh tls.RecordHeaderError
		ua x509.UnknownAuthorityError
		he x509.HostnameError
		ci x509.CertificateInvalidError
	)
	if errors.As(err, &cv) || errors.As(err, &rh) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) ||
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return false
	}
	if errors.Is(err, context.Canceled) {
		return false // the caller gave up; retry decides on the caller's ctx
	}
	var ne net.Error // includes *url.Error, *net.OpError, *net.DNSError
	return errors.As(err, &ne) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

var errS3AttemptTimeout = errors.New("S3 request timed out")

// s3Attempt is one try of a request. Its deadline can be pushed back once
// the size of the transfer is known or while data keeps flowing, so a hung
// server is caught without cutting off a big but healthy transfer.
type s3Attempt struct {
	timer *time.Timer
}

func (a *s3Attempt) extend(d time.Duration) { a.timer.Reset(d) }

// s3GaveUpError is returned when the caller's context ended while
// transient faults were being retried.
type s3GaveUpError struct {
	attempts int
	elapsed  time.Duration
	ctxErr   error
	last     error
}

func (e *s3GaveUpError) Error() string {
	if e.last == nil {
		return e.ctxErr.Error()
	}
	return fmt.Sprintf("gave up after %d attempts in %v: %v; last error: %v",
		e.attempts, e.elapsed.Round(time.Millisecond), e.ctxErr, e.last)
}

func (e *s3GaveUpError) Unwrap() []error {
	if e.last == nil {
		return []error{e.ctxErr}
	}
	return []error{e.ctxErr, e.last}
}

func (s *Store) retry(ctx context.Context, op, name string, fn func(context.Context, *s3Attempt) error) error {
	return s.retryTimeout(ctx, op, name, s3RequestTimeout, fn)
}

// retryTimeout runs fn, each attempt first limited to timeout, until it
// succeeds, fails with an error that repeating will not fix (returned as
// is), or ctx is done (an *s3GaveUpError).
func (s *Store) retryTimeout(ctx context.Context, op, name string, timeout time.Duration, fn func(context.Context, *s3Attempt) error) error {
	start := time.Now()
	backoff := s3BackoffMin
	var last error
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return &s3GaveUpError{attempts: attempt - 1, elapsed: time.Since(start), ctxErr: err, last: last}
		}
		actx, cancel := context.WithCancelCause(ctx)
		a := &s3Attempt{timer: time.AfterFunc(timeout, func() { cancel(errS3AttemptTimeout) })}
		err := fn(actx, a)
		a.timer.Stop()
		timedOut := errors.Is(context.Cause(actx), errS3AttemptTimeout)
		cancel(nil)
		if err == nil {
			if attempt > 1 {
				slog.Info("s3 request succeeded after retries", "op", op, "object", name,
					"endpoint", s.endpoint, "attempts", attempt, "elapsed", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		if timedOut {
			err = fmt.Errorf("%w: %w", errS3AttemptTimeout, err)
		}
		if ctx.Err() != nil {
			// An attempt cut short by the caller's deadline says less than
			// the failure that made us retry.
			if last == nil || !errors.Is(err, ctx.Err()) {
				last = err
			}
			return &s3GaveUpError{attempts: attempt, elapsed: time.Since(start), ctxErr: ctx.Err(), last: last}
		}
		if !s3Transient(err) {
			return err
		}
		last = err
		if attempt == 1 || attempt%10 == 0 {
			slog.Warn("s3 request failed, retrying", "op", op, "object", name, "endpoint", s.endpoint,
				"attempt", attempt, "err", s.scrub(err).Error())
		}
		// Up to half random, so that many callers failing together do
		// not retry in lockstep.
		sleep := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(sleep)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		backoff = min(2*backoff, s3BackoffMax)
	}
}

// redactedError carries an error whose message contained a credential.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// scrub removes credentials from err's message. The secret key never goes
// on the wire, but the access key does, and a server may echo it back.
func (s *Store) scrub(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	redacted := msg
	for _, c := range s.redact {
		redacted = strings.ReplaceAll(redacted, c, "[REDACTED]")
	}
	if redacted == msg {
		return err
	}
	return &redactedError{msg: redacted, err: err}
}

type s3Credentials struct {
	accessKey, secretKey, sessionToken string
}

// loadS3Credentials reads file, or the environment if file is empty.
// Errors never quote a value.
func loadS3Credentials(file string) (s3Credentials, error) {
	if file == "" {
		c := s3Credentials{
			accessKey:    os.Getenv("AWS_ACCESS_KEY_ID"),
			secretKey:    os.Getenv("AWS_SECRET_ACCESS_KEY"),
			sessionToken: os.Getenv("AWS_SESSION_TOKEN"),
		}
		if c.accessKey == "" || c.secretKey == "" {
			return s3Credentials{}, errors.New("S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give a credentials file")
		}
		return c, nil
	}
	f, err := os.Open(file)
	if err != nil {
		return s3Credentials{}, fmt.Errorf("S3 credentials file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return s3Credentials{}, fmt.Errorf("S3 credentials file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return s3Credentials{}, fmt.Errorf("S3 credentials file %s: not a regular file", file)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return s3Credentials{}, fmt.Errorf("S3 credentials file %s has mode %#o: it must not be accessible by group or others (chmod 600 %s)", file, perm, file)
	}
	var c s3Credentials
	seen := map[string]bool{}
	sc := bufio.NewScanner(io.LimitReader(f, 64<<10))
	for line := 1; sc.Scan(); line++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return s3Credentials{}, fmt.Errorf("S3 credentials file %s line %d: want key=value", file, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		var dst *string
		switch k {
		case "access_key_id":
			dst = &c.accessKey
		case "secret_access_key":
			dst = &c.secretKey
		case "session_token":
			dst = &c.sessionToken
		default:
			// A line such as a bare secret with an '=' in it must not be
			// echoed, so the key is quoted only if it looks like one.
			if len(k) <= 32 && strings.Trim(k, "abcdefghijklmnopqrstuvwxyz_") == "" {
				return s3Credentials{}, fmt.Errorf("S3 credentials file %s line %d: unknown key %q (want access_key_id, secret_access_key, session_token)", file, line, k)
			}
			return s3Credentials{}, fmt.Errorf("S3 credentials file %s line %d: unknown key (want access_key_id, secret_access_key, session_token)", file, line)
		}
		if seen[k] {
			return s3Credentials{}, fmt.Errorf("S3 credentials file %s line %d: %s given twice", file, line, k)
		}
		seen[k] = true
		*dst = v
	}
	if err := sc.Err(); err != nil {
		return s3Credentials{}, fmt.Errorf("S3 credentials file %s: %w", file, err)
	}
	if c.accessKey == "" || c.secretKey == "" {
		return s3Credentials{}, fmt.Errorf("S3 credentials file %s: want both access_key_id and secret_access_key", file)
	}
	return c, nil
}
