package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Timeline maps commit times to LSNs, so a branch can be taken "at 14:05"
// or "15 minutes ago". Every log entry carries its proposal time; the
// timeline keeps the last LSN of each fine bucket for recent history and
// of each coarse bucket beyond, so its size grows with hours of history,
// not with the commit rate.
type Timeline struct {
	points []TimePoint // ascending in both LSN and time
}

// TimePoint says: entry LSN was proposed at Time (unix nanoseconds), and so
// was nothing after it in the same bucket.
type TimePoint struct {
	LSN  uint64
	Time int64
}

const (
	fineBucket   = int64(10 * time.Millisecond)
	coarseBucket = int64(time.Second)
	fineWindow   = int64(time.Hour)
)

// Add records that entry lsn was proposed at t. Entries arrive in LSN
// order; a clock step backwards is clamped so times stay monotonic.
func (tl *Timeline) Add(lsn uint64, t int64) {
	n := len(tl.points)
	if n > 0 {
		last := &tl.points[n-1]
		if lsn <= last.LSN {
			return // replayed
		}
		t = max(t, last.Time)
		if t/fineBucket == last.Time/fineBucket {
			last.LSN, last.Time = lsn, t
			return
		}
	}
	tl.points = append(tl.points, TimePoint{LSN: lsn, Time: t})
	// Coarsen history older than fineWindow now and then (amortised).
	if len(tl.points)%4096 == 0 {
		tl.coarsen(t - fineWindow)
	}
}

// coarsen keeps one point per coarseBucket for points older than before.
func (tl *Timeline) coarsen(before int64) {
	out := tl.points[:0]
	for i, p := range tl.points {
		if p.Time < before && i+1 < len(tl.points) {
			next := tl.points[i+1]
			if next.Time < before && next.Time/coarseBucket == p.Time/coarseBucket {
				continue // the next point is later in the same bucket
			}
		}
		out = append(out, p)
	}
	tl.points = out
}

// ErrNoHistory is wrapped when a time precedes everything recorded.
var ErrNoHistory = errors.New("no history at that time")

// LSNAt returns the newest recorded LSN proposed at or before t. The answer
// is exact to the bucket: it may be up to one bucket older than t.
func (tl *Timeline) LSNAt(t time.Time) (uint64, error) {
	ns := t.UnixNano()
	i := sort.Search(len(tl.points), func(i int) bool { return tl.points[i].Time > ns })
	if i == 0 {
		if len(tl.points) == 0 {
			return 0, fmt.Errorf("%w: the timeline is empty", ErrNoHistory)
		}
		return 0, fmt.Errorf("%w: %s is before the first recorded entry (%s)", ErrNoHistory,
			t.UTC().Format(time.RFC3339Nano), time.Unix(0, tl.points[0].Time).UTC().Format(time.RFC3339Nano))
	}
	return tl.points[i-1].LSN, nil
}

// TimeOf returns when entry lsn was proposed, to bucket precision (the time
// of the first recorded point at or after it); ok is false past the end.
func (tl *Timeline) TimeOf(lsn uint64) (time.Time, bool) {
	i := sort.Search(len(tl.points), func(i int) bool { return tl.points[i].LSN >= lsn })
	if i == len(tl.points) {
		return time.Time{}, false
	}
	return time.Unix(0, tl.points[i].Time).UTC(), true
}

// Len is the number of points kept.
func (tl *Timeline) Len() int { return len(tl.points) }

// Clone returns a copy.
func (tl *Timeline) Clone() *Timeline {
	return &Timeline{points: append([]TimePoint(nil), tl.points...)}
}

const timelineMagic = "NTL1"

// AppendBinary encodes the timeline as deltas.
func (tl *Timeline) AppendBinary(b []byte) []byte {
	b = append(b, timelineMagic...)
	b = binary.AppendUvarint(b, uint64(len(tl.points)))
	var lsn uint64
	var t int64
	for _, p := range tl.points {
		b = binary.AppendUvarint(b, p.LSN-lsn)
		b = binary.AppendVarint(b, p.Time-t)
		lsn, t = p.LSN, p.Time
	}
	return b
}

// DecodeTimeline decodes AppendBinary's output and returns the rest of b.
func DecodeTimeline(b []byte) (*Timeline, []byte, error) {
	bad := func(what string) (*Timeline, []byte, error) {
		return nil, nil, fmt.Errorf("decode timeline: %s", what)
	}
	if len(b) < len(timelineMagic) || string(b[:len(timelineMagic)]) != timelineMagic {
		return bad("bad magic")
	}
	b = b[len(timelineMagic):]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return bad("bad length")
	}
	b = b[k:]
	tl := &Timeline{points: make([]TimePoint, 0, n)}
	var lsn uint64
	var t int64
	for range n {
		dl, k := binary.Uvarint(b)
		if k <= 0 {
			return bad("bad LSN")
		}
		b = b[k:]
		dt, k := binary.Varint(b)
		if k <= 0 {
			return bad("bad time")
		}
		b = b[k:]
		if dl == 0 && len(tl.points) > 0 || dt < 0 {
			return bad("not ascending")
		}
		lsn, t = lsn+dl, t+dt
		tl.points = append(tl.points, TimePoint{LSN: lsn, Time: t})
	}
	return tl, b, nil
}
