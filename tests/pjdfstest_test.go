package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestPjdfstest runs pjdfstest, the POSIX file-system conformance suite,
// as root on a fresh mount. Every test file passes or is listed, with its
// reason, in testdata/pjdfstest.skip; a listed file that passes is an
// error too, so the list stays honest. NEONFS_TARGET=native runs it on the
// native file system for comparison (ext4 here: every file passes).
//
// The source comes from ../shared/tools/pjdfstest.tar.gz beside the
// checkout (or NEONFS_PJDFSTEST_TAR); without it the test skips. Files run
// a few at a time, each in its own directory: most of the suite's time is
// its sleeps (checking that ctime moves).
//
//	NEONFS_PJDFSTEST=regexp   run only the files whose path (chmod/02.t) matches
func TestPjdfstest(t *testing.T) {
	requireE2E(t)
	suite := buildPjdfstest(t)
	files, err := filepath.Glob(filepath.Join(suite, "tests", "*", "*.t"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files under %s/tests (%v)", suite, err)
	}
	if pat := os.Getenv("NEONFS_PJDFSTEST"); pat != "" {
		re, err := regexp.Compile(pat)
		if err != nil {
			t.Fatalf("NEONFS_PJDFSTEST=%q: %v", pat, err)
		}
		files = slices.DeleteFunc(files, func(f string) bool { return !re.MatchString(relTest(suite, f)) })
	}
	skips, err := readSkips(filepath.Join("testdata", "pjdfstest.skip"))
	if err != nil {
		t.Fatal(err)
	}

	tg := newTarget(t)
	root := filepath.Join(tg.Dir(), "pjdfstest")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	results := make([]tapResult, len(files))
	var wg sync.WaitGroup
	work := make(chan int)
	for range envInt(t, "NEONFS_PJDFSTEST_JOBS", 8) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				results[i] = runTapFile(root, suite, files[i])
			}
		}()
	}
	for i := range files {
		work <- i
	}
	close(work)
	wg.Wait()

	var asserts, todo, passedFiles, skipped int
	slowest := 0
	for i, r := range results {
		name := relTest(suite, files[i])
		asserts += r.passed
		todo += r.todo
		if r.took > results[slowest].took {
			slowest = i
		}
		reason, listed := skips[name]
		switch {
		case r.ok() && listed:
			t.Errorf("%s passes but testdata/pjdfstest.skip lists it (%s): remove it from the list", name, reason)
		case r.ok():
			passedFiles++
		case listed:
			skipped++
			t.Logf("%s: fails as listed in testdata/pjdfstest.skip (%s): %d of %d assertions pass", name, reason, r.passed, r.planned)
		default:
			t.Errorf("%s: %s\n%s", name, r.summary(), r.failures)
		}
	}
	for name := range skips {
		if !slices.ContainsFunc(files, func(f string) bool { return relTest(suite, f) == name }) && os.Getenv("NEONFS_PJDFSTEST") == "" {
			t.Errorf("testdata/pjdfstest.skip lists %s, which the suite does not have", name)
		}
	}
	t.Logf("pjdfstest on %s: %d of %d files pass (%d listed as skipped), %d assertions pass (and %d the suite marks TODO), took %v (slowest file %s: %v)",
		targetKind(), passedFiles, len(files), skipped, asserts, todo, time.Since(start).Round(time.Second),
		relTest(suite, files[slowest]), results[slowest].took.Round(time.Second))
}

// buildPjdfstest builds the suite once per source archive into a cache
// directory and returns the directory holding the pjdfstest binary and
// tests/.
func buildPjdfstest(t *testing.T) string {
	t.Helper()
	tarball := os.Getenv("NEONFS_PJDFSTEST_TAR")
	if tarball == "" {
		repo, err := repoRoot()
		if err != nil {
			t.Fatal(err)
		}
		// Beside the checkout, as on the project's machines; CI may clone
		// elsewhere on the same machine.
		tarball = filepath.Join(repo, "..", "shared", "tools", "pjdfstest.tar.gz")
		if _, err := os.Stat(tarball); err != nil {
			if _, err := os.Stat("/work/shared/tools/pjdfstest.tar.gz"); err == nil {
				tarball = "/work/shared/tools/pjdfstest.tar.gz"
			}
		}
	}
	data, err := os.ReadFile(tarball)
	if os.IsNotExist(err) {
		t.Skipf("pjdfstest source %s is absent (it comes with this project's CI machines; set NEONFS_PJDFSTEST_TAR to run the suite elsewhere)", tarball)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"autoreconf", "automake", "make", "cc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("building pjdfstest needs %s, which is missing: run scripts/deps.sh (as make test does)", tool)
		}
	}
	sum := sha256.Sum256(data)
	cache := filepath.Join(os.TempDir(), "neonfs-pjdfstest-"+hex.EncodeToString(sum[:6]))
	if _, err := os.Stat(filepath.Join(cache, "pjdfstest")); err == nil {
		return cache
	}
	build := t.TempDir()
	steps := [][]string{
		{"tar", "xzf", tarball, "-C", build},
		{"sh", "-c", "cd pjdfstest && autoreconf -ifs && ./configure && make pjdfstest"},
	}
	for _, s := range steps {
		cmd := exec.Command(s[0], s[1:]...)
		cmd.Dir = build
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build pjdfstest (%s): %v\n%s", strings.Join(s, " "), err, tail(out, 3000))
		}
	}
	// Tests run as other users (pjdfstest -u 65534) and must read it all.
	if err := os.Chmod(build, 0o755); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(cache)
	if err := exec.Command("cp", "-a", filepath.Join(build, "pjdfstest"), cache).Run(); err != nil {
		t.Fatalf("copy pjdfstest to %s: %v", cache, err)
	}
	return cache
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func relTest(suite, file string) string {
	r, err := filepath.Rel(filepath.Join(suite, "tests"), file)
	if err != nil {
		return file
	}
	return r
}

// readSkips reads "FILE REASON..." lines; # starts a comment.
func readSkips(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, reason, _ := strings.Cut(line, " ")
		if strings.TrimSpace(reason) == "" {
			return nil, fmt.Errorf("%s:%d: %s has no reason", path, n, name)
		}
		out[name] = strings.TrimSpace(reason)
	}
	return out, sc.Err()
}

// tapResult is one test file's outcome.
type tapResult struct {
	planned, passed, failed, todo int
	exit                          error
	took                          time.Duration
	failures                      string // the "not ok" lines and what the file printed otherwise
}

func (r tapResult) ok() bool {
	return r.exit == nil && r.failed == 0 && r.planned > 0 && r.passed+r.todo == r.planned
}

func (r tapResult) summary() string {
	s := fmt.Sprintf("%d of %d assertions pass, %d fail", r.passed, r.planned, r.failed)
	if r.exit != nil {
		s += fmt.Sprintf(" (exit: %v)", r.exit)
	}
	return s
}

var tapPlan = regexp.MustCompile(`^1\.\.(\d+)`)

// runTapFile runs one pjdfstest file in its own directory under root and
// reads its TAP output. "not ok ... # TODO" is an expected failure the
// suite itself marks, as prove counts it.
func runTapFile(root, suite, file string) tapResult {
	var r tapResult
	dir := filepath.Join(root, strings.NewReplacer("/", "_", ".t", "").Replace(relTest(suite, file)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		r.exit = err
		return r
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", file)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	r.exit = cmd.Run()
	r.took = time.Since(start)
	var other strings.Builder
	for line := range strings.Lines(out.String()) {
		switch {
		case tapPlan.MatchString(line):
			r.planned, _ = strconv.Atoi(tapPlan.FindStringSubmatch(line)[1])
		case strings.HasPrefix(line, "ok "):
			if strings.Contains(line, "# TODO") {
				r.todo++
			} else {
				r.passed++
			}
		case strings.HasPrefix(line, "not ok "):
			if strings.Contains(line, "# TODO") {
				r.todo++
			} else {
				r.failed++
				other.WriteString(line)
			}
		default:
			other.WriteString(line)
		}
	}
	r.failures = other.String()
	return r
}
