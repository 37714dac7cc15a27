package hist

import (
	"reflect"
	"testing"
)

func TestBuckets(t *testing.T) {
	h := New(0.1, 0.01, 1) // unsorted on purpose
	for _, v := range []float64{0.001, 0.01, 0.05, 0.1, 0.5, 2, 3} {
		h.Observe(v)
	}
	s := h.Snapshot()
	if want := []uint64{2, 2, 1, 2}; !reflect.DeepEqual(s.Counts, want) {
		t.Errorf("counts %v, want %v", s.Counts, want)
	}
	if s.Count != 7 || s.Sum < 5.66 || s.Sum > 5.67 {
		t.Errorf("count %d sum %v", s.Count, s.Sum)
	}
	if want := map[float64]uint64{0.01: 2, 0.1: 4, 1: 5}; !reflect.DeepEqual(s.Cumulative(), want) {
		t.Errorf("cumulative %v, want %v", s.Cumulative(), want)
	}
}
