package daemon

import (
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })

	t.Setenv("GOGC", "")
	if got := TuneGC(); got != DefaultGCPercent {
		t.Fatalf("TuneGC without GOGC = %d, want %d", got, DefaultGCPercent)
	}
	if cur := debug.SetGCPercent(DefaultGCPercent); cur != DefaultGCPercent {
		t.Fatalf("GC target after TuneGC = %d, want %d", cur, DefaultGCPercent)
	}

	// An operator's GOGC (read by the runtime at start) is left alone.
	debug.SetGCPercent(80)
	t.Setenv("GOGC", "80")
	if got := TuneGC(); got != 80 {
		t.Fatalf("TuneGC with GOGC=80 = %d, want 80", got)
	}
	if cur := debug.SetGCPercent(80); cur != 80 {
		t.Fatalf("GC target after TuneGC with GOGC set = %d, want 80", cur)
	}
}
