package snapshot

import (
	"testing"
	"time"
)

func TestTimeline(t *testing.T) {
	base := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC).UnixNano()
	ms := int64(time.Millisecond)
	var tl Timeline
	// Three entries in one 10 ms bucket, a gap, a clock step back, a replay.
	for _, p := range []TimePoint{{1, base}, {2, base + 3*ms}, {3, base + 5*ms}, {4, base + 50*ms}, {5, base + 40*ms}, {4, base + 90*ms}, {6, base + 200*ms}} {
		tl.Add(p.LSN, p.Time)
	}
	at := func(off int64) time.Time { return time.Unix(0, base+off) }
	for _, tc := range []struct {
		off  int64
		want uint64
		err  bool
	}{
		{-ms, 0, true},
		{5 * ms, 3, false},
		{49 * ms, 3, false},
		{50 * ms, 5, false}, // 5's clock stepped back: clamped to 4's time
		{199 * ms, 5, false},
		{time.Hour.Nanoseconds(), 6, false},
	} {
		got, err := tl.LSNAt(at(tc.off))
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("LSNAt(+%v) = %d, %v; want %d (error %v)", time.Duration(tc.off), got, err, tc.want, tc.err)
		}
	}
	if tm, ok := tl.TimeOf(4); !ok || !tm.Equal(at(50*ms)) {
		t.Errorf("TimeOf(4) = %v, %v", tm, ok)
	}
	if _, ok := tl.TimeOf(7); ok {
		t.Error("TimeOf past the end is ok")
	}
	dec, rest, err := DecodeTimeline(tl.AppendBinary(nil))
	if err != nil || len(rest) != 0 || dec.Len() != tl.Len() {
		t.Fatalf("round trip: %v, %d left, %d points vs %d", err, len(rest), dec.Len(), tl.Len())
	}
	for i, p := range dec.points {
		if p != tl.points[i] {
			t.Errorf("point %d = %v, want %v", i, p, tl.points[i])
		}
	}
}

// History older than an hour keeps one point per second, so a week of
// constant commits stays small.
func TestTimelineCoarsens(t *testing.T) {
	var tl Timeline
	step := int64(20 * time.Millisecond)
	n := int64(3 * time.Hour / time.Duration(step))
	for i := range n {
		tl.Add(uint64(i+1), i*step)
	}
	if tl.Len() > int(n)/2 {
		t.Errorf("%d of %d points kept: not coarsened", tl.Len(), n)
	}
	// Any time still maps to an LSN at or before it.
	for _, off := range []int64{int64(time.Minute), int64(90 * time.Minute), n*step - 1} {
		lsn, err := tl.LSNAt(time.Unix(0, off))
		if err != nil || int64(lsn-1)*step > off {
			t.Errorf("LSNAt(%v) = %d (%v): after the time", time.Duration(off), lsn, err)
		}
		if off-int64(lsn-1)*step > int64(time.Second)+step {
			t.Errorf("LSNAt(%v) = %d: more than a second early", time.Duration(off), lsn)
		}
	}
}

func FuzzDecodeTimeline(f *testing.F) {
	var tl Timeline
	tl.Add(3, 100)
	tl.Add(9, int64(time.Second))
	f.Add(tl.AppendBinary(nil))
	f.Add([]byte("NTL1\x05"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dec, _, err := DecodeTimeline(b)
		if err != nil {
			return
		}
		for i := 1; i < len(dec.points); i++ {
			if dec.points[i].LSN <= dec.points[i-1].LSN || dec.points[i].Time < dec.points[i-1].Time {
				t.Fatalf("decoded points not ascending: %v", dec.points)
			}
		}
	})
}
