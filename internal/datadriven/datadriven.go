// Package datadriven runs tests written as text files, in the manner of
// cockroachdb/datadriven: each case is a command line, a "----" line and
// the output expected, ended by a blank line. Cases in one file run in
// order against shared state, so a file reads as a script. Run the tests
// with -update to rewrite the expected output from what the code does.
package datadriven

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the expected output of data-driven tests")

// Case is one command of a file.
type Case struct {
	Pos  string // file:line, for messages
	Cmd  string // the command's first word
	Args []string
	Line string // the whole command line
}

// RunFile runs every case of path through do, which returns the output
// (its trailing newline is added if missing).
func RunFile(t *testing.T, path string, do func(t *testing.T, c Case) string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	var out strings.Builder
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			out.WriteString(line + "\n")
			continue
		}
		pos := fmt.Sprintf("%s:%d", path, i+1)
		if i+1 >= len(lines) || lines[i+1] != "----" {
			t.Fatalf("%s: command %q is not followed by a ---- line", pos, trimmed)
		}
		var want strings.Builder
		j := i + 2
		for ; j < len(lines) && lines[j] != ""; j++ {
			want.WriteString(lines[j] + "\n")
		}
		fields := strings.Fields(trimmed)
		got := do(t, Case{Pos: pos, Cmd: fields[0], Args: fields[1:], Line: trimmed})
		if got != "" && !strings.HasSuffix(got, "\n") {
			got += "\n"
		}
		if got != want.String() && !*update {
			t.Errorf("%s: %s\ngot:\n%swant:\n%s", pos, trimmed, got, want.String())
		}
		out.WriteString(line + "\n----\n" + got)
		if j < len(lines) {
			out.WriteString("\n")
		}
		i = j
	}
	if *update {
		if err := os.WriteFile(path, []byte(strings.TrimSuffix(out.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Arg returns the value of key=value among args, and whether it is there.
func (c Case) Arg(key string) (string, bool) {
	for _, a := range c.Args {
		if k, v, ok := strings.Cut(a, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}
