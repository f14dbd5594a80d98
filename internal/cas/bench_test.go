package cas_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/s3test"
)

const (
	benchSize = 512 << 20 // a guest's RAM file
	benchData = 110 << 20 // the pages it touched
)

// benchRAM writes a RAM-like file: 512 MiB, sparse, with about 110 MiB of
// random data in page-aligned runs of 4 KiB to 1 MiB at random places.
func benchRAM(b *testing.B) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "mem")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(benchSize); err != nil {
		b.Fatal(err)
	}
	src := rand.NewChaCha8([32]byte{1})
	rng := rand.New(src)
	buf := make([]byte, 1<<20)
	written := make([]bool, benchSize/4096)
	var total int64
	for total < benchData {
		pages := 1 + rng.IntN(256)
		first := rng.IntN(len(written) - pages)
		src.Read(buf[:pages*4096])
		if _, err := f.WriteAt(buf[:pages*4096], int64(first)*4096); err != nil {
			b.Fatal(err)
		}
		for p := first; p < first+pages; p++ {
			if !written[p] {
				written[p] = true
				total += 4096
			}
		}
	}
	return path
}

// cpuTime is the process's user and system time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchBackends gives each sub-benchmark a function that opens an empty
// store (a new directory, or a new prefix of the S3 server), and one that
// reads the S3 server's CPU time (0 for file://).
func benchBackends(b *testing.B, fn func(b *testing.B, open func() objstore.Store, serverCPU func() time.Duration)) {
	n := 0
	b.Run("file", func(b *testing.B) {
		fn(b, func() objstore.Store {
			n++
			s, err := objstore.Open(context.Background(), "file://"+filepath.Join(b.TempDir(), fmt.Sprint(n)))
			if err != nil {
				b.Fatal(err)
			}
			return s
		}, func() time.Duration { return 0 })
	})
	b.Run("s3", func(b *testing.B) {
		srv := s3test.Shared(b)
		srv.Setenv(b)
		fn(b, func() objstore.Store {
			n++
			s, err := objstore.Open(context.Background(), srv.URL(fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), n)))
			if err != nil {
				b.Fatal(err)
			}
			return s
		}, func() time.Duration {
			d, err := srv.CPUTime()
			if err != nil {
				b.Fatal(err)
			}
			return d
		})
	})
}

// BenchmarkUpload uploads a RAM-like file into an empty store: MB/s of
// data (the touched pages) and CPU time per MB of data.
func BenchmarkUpload(b *testing.B) {
	mem := benchRAM(b)
	benchBackends(b, func(b *testing.B, open func() objstore.Store, serverCPU func() time.Duration) {
		var elapsed, cpu, srvCPU time.Duration
		var st cas.Stats
		for b.Loop() {
			b.StopTimer()
			s, err := cas.New(cas.Config{Objects: open()})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			start, c0, s0 := time.Now(), cpuTime(), serverCPU()
			_, st, err = s.Upload(context.Background(), []cas.Source{{Name: "mem", Path: mem}}, nil)
			if err != nil {
				b.Fatal(err)
			}
			elapsed += time.Since(start)
			cpu += cpuTime() - c0
			srvCPU += serverCPU() - s0
		}
		mb := float64(st.BytesRead) / 1e6 * float64(b.N)
		b.ReportMetric(mb/elapsed.Seconds(), "data-MB/s")
		b.ReportMetric(float64(cpu.Milliseconds())/mb, "cpu-ms/MB")
		b.ReportMetric(float64(srvCPU.Milliseconds())/mb, "server-cpu-ms/MB")
		b.ReportMetric(float64(st.BytesAdded)/(1<<20), "MiB-added")
	})
}

// BenchmarkRestore restores that file from the store into an empty
// directory, with no seed: every chunk fetched and verified.
func BenchmarkRestore(b *testing.B) {
	mem := benchRAM(b)
	benchBackends(b, func(b *testing.B, open func() objstore.Store, serverCPU func() time.Duration) {
		s, err := cas.New(cas.Config{Objects: open()})
		if err != nil {
			b.Fatal(err)
		}
		m, st, err := s.Upload(context.Background(), []cas.Source{{Name: "mem", Path: mem}}, nil)
		if err != nil {
			b.Fatal(err)
		}
		var elapsed, cpu, srvCPU time.Duration
		for b.Loop() {
			b.StopTimer()
			dst := b.TempDir()
			b.StartTimer()
			start, c0, s0 := time.Now(), cpuTime(), serverCPU()
			if _, err := s.Restore(context.Background(), m, dst, cas.RestoreOptions{}); err != nil {
				b.Fatal(err)
			}
			elapsed += time.Since(start)
			cpu += cpuTime() - c0
			srvCPU += serverCPU() - s0
			b.StopTimer()
			os.RemoveAll(dst)
			b.StartTimer()
		}
		mb := float64(st.BytesRead) / 1e6 * float64(b.N)
		b.ReportMetric(mb/elapsed.Seconds(), "data-MB/s")
		b.ReportMetric(float64(cpu.Milliseconds())/mb, "cpu-ms/MB")
		b.ReportMetric(float64(srvCPU.Milliseconds())/mb, "server-cpu-ms/MB")
	})
}
