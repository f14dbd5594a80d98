package audit

import (
	"context"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkAppend: one appender; ns/op is the latency of a durable append
// (p50 and p95 reported too).
func BenchmarkAppend(b *testing.B) {
	ctx := context.Background()
	l := openTest(b, filepath.Join(b.TempDir(), "audit"), Options{})
	e := testEntry("bench")
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t0 := time.Now()
		if _, err := l.Append(ctx, e); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	reportPercentiles(b, lat)
}

// BenchmarkAppendParallel: 32 appenders at once; appends/s is the sustained
// rate with batching.
func BenchmarkAppendParallel(b *testing.B) {
	ctx := context.Background()
	l := openTest(b, filepath.Join(b.TempDir(), "audit"), Options{})
	e := testEntry("bench")
	b.SetParallelism((32 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	var mu sync.Mutex
	var lat []time.Duration
	t0 := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			s := time.Now()
			if _, err := l.Append(ctx, e); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(s))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "appends/s")
	reportPercentiles(b, lat)
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*95/100].Microseconds())/1000, "p95-ms")
}

const benchLogSize = 20000

// benchLog builds a closed log of benchLogSize entries once per benchmark.
func benchLog(b *testing.B) (string, string) {
	dir := filepath.Join(b.TempDir(), "audit")
	return dir, buildLog(b, dir, benchLogSize, 64)
}

// BenchmarkInclusionProof: one proof against the latest checkpoint of a
// log of benchLogSize entries.
func BenchmarkInclusionProof(b *testing.B) {
	ctx := context.Background()
	dir, _ := benchLog(b)
	l := openTest(b, dir, Options{})
	i := uint64(0)
	for b.Loop() {
		if _, err := l.InclusionProof(ctx, i%benchLogSize); err != nil {
			b.Fatal(err)
		}
		i += 7919
	}
}

// BenchmarkVerify: Verify of a log of benchLogSize entries; ns/entry is the
// figure to multiply by a million.
func BenchmarkVerify(b *testing.B) {
	ctx := context.Background()
	dir, vkey := benchLog(b)
	t0 := time.Now()
	n := 0
	for b.Loop() {
		if _, err := Verify(ctx, dir, vkey, ""); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(time.Since(t0).Nanoseconds())/float64(n*benchLogSize), "ns/entry")
}
