package durable

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestPacedWriter(t *testing.T) {
	tests := []struct {
		name   string
		pace   bool
		writes []int // sizes of successive Writes
	}{
		{"nothing", true, []int{0}},
		{"small unpaced", false, []int{1, 100}},
		{"one chunk", true, []int{PaceChunk}},
		{"chunks and a tail, paced", true, []int{2*PaceChunk + 5, 7}},
		{"chunks and a tail, unpaced", false, []int{2*PaceChunk + 5, 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := os.Create(filepath.Join(t.TempDir(), "f"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			w := &PacedWriter{F: f, Pace: tt.pace}
			var want []byte
			for i, n := range tt.writes {
				data := bytes.Repeat([]byte{byte(i + 1)}, n)
				if got, err := w.Write(data); err != nil || got != n {
					t.Fatalf("Write(%d bytes) = %d, %v", n, got, err)
				}
				want = append(want, data...)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("file holds %d bytes, not the %d written", len(got), len(want))
			}
		})
	}
}
