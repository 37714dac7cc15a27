package hist

import (
	"reflect"
	"sync"
	"testing"
	"time"
)

func TestTimingsConcurrent(t *testing.T) {
	var tm Timings
	if s := tm.Snapshot(); len(s) != 0 {
		t.Fatalf("zero value: %v", s)
	}
	names := []string{"WRITE", "FSYNC", "GETATTR"}
	const workers, each = 8, 1000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				// Every worker adds every name, new ones included, in its own order.
				tm.Add(names[(w+i)%len(names)], time.Millisecond)
			}
		}()
	}
	wg.Wait()
	tm.Add("SETATTR", -time.Second) // a clock step back counts, with no time
	got := tm.Snapshot()
	var total uint64
	for _, e := range got {
		total += e.Count
		if e.Name != "SETATTR" && e.Seconds != float64(e.Count)/1000 {
			t.Errorf("%s: %d events, %v s", e.Name, e.Count, e.Seconds)
		}
	}
	if total != workers*each+1 {
		t.Errorf("counted %d events, want %d", total, workers*each+1)
	}
	var order []string
	for _, e := range got {
		order = append(order, e.Name)
	}
	if want := []string{"FSYNC", "GETATTR", "SETATTR", "WRITE"}; !reflect.DeepEqual(order, want) {
		t.Errorf("names %v, want %v", order, want)
	}
	if got[2] != (Timing{Name: "SETATTR", Count: 1}) {
		t.Errorf("SETATTR %+v", got[2])
	}
}

// BenchmarkTimingsAdd: one FUSE request's cost of being counted, with as
// many goroutines as -cpu says, all on the same few names.
func BenchmarkTimingsAdd(b *testing.B) {
	var tm Timings
	names := []string{"WRITE", "FSYNC", "GETATTR", "SETATTR"}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			tm.Add(names[i%len(names)], time.Microsecond)
			i++
		}
	})
}

// BenchmarkTimingsAddOneName: the worst case, every goroutine on one
// name's counters (Postgres's backends all writing).
func BenchmarkTimingsAddOneName(b *testing.B) {
	var tm Timings
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tm.Add("WRITE", time.Microsecond)
		}
	})
}
