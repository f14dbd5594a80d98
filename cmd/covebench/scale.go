package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/objstore"
)

// scaleConfig sizes make bench-scale (covebench -only scale).
type scaleConfig struct {
	storm     int // clones parked at once, then woken at once
	clones    int // clones parked one after another (a few at a time), then counted
	parallel  int // clones made and parked at once in the long run
	cacheSize int64
}

// scaleRows runs the storms and the long run of make bench-scale:
//
//   - storm: cfg.storm clones of one template, each after a small exec,
//     parked at once, then woken at once (an exec in each); the wall time
//     of each storm, each call's latency, and the bytes written to the
//     local disk per park (the block device's write counter across the
//     park storm, after a sync; the background uploads of the same parks
//     go to a store on the same disk and add their share: about 0.6 MiB
//     per clone) and per clone in all (its files made from the
//     template's: a copy on ext4, a reflink on XFS or btrfs);
//   - long run: cfg.clones clones of the template, made, given a small
//     exec and parked, cfg.parallel at a time; the time to park them all,
//     the bytes in the object store once all are stored, the local disk
//     the sessions hold against the cache bound, and a sample woken
//     back with their marker checked.
func scaleRows(ctx context.Context, c *api.Client, objs objstore.Store, sessDir string, cfg scaleConfig) ([]row, error) {
	const tmpl = "bench-scale"
	if _, err := c.CreateTemplate(ctx, api.CreateTemplateRequest{Name: tmpl}); err != nil {
		return nil, err
	}
	rows, err := stormRows(ctx, c, sessDir, tmpl, cfg.storm)
	if err != nil {
		return nil, err
	}
	long, err := longRows(ctx, c, objs, sessDir, tmpl, cfg)
	if err != nil {
		return nil, err
	}
	return append(rows, long...), nil
}

// stormRows parks n clones at once and wakes them at once.
func stormRows(ctx context.Context, c *api.Client, sessDir, tmpl string, n int) ([]row, error) {
	if n <= 0 {
		return nil, nil
	}
	ids := make([]string, n)
	made, err := diskWritten(sessDir)
	if err != nil {
		return nil, err
	}
	if err := forEach(n, 8, func(i int) error {
		s, err := c.CreateSession(ctx, api.CreateSessionRequest{Template: tmpl})
		if err != nil {
			return err
		}
		ids[i] = s.ID
		_, err = c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("echo storm-%d > /root/marker", i)}})
		return err
	}); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "bench: storm: %d clones running\n", n)
	parkWall := row{name: fmt.Sprintf("storm: %d clones parked at once, wall", n), unit: "ms"}
	parkOne := row{name: "storm: each park's latency", unit: "ms"}
	written := row{name: "storm: bytes written to the local disk per park", unit: "MiB"}
	lifetime := row{name: "storm: bytes written to the local disk per clone, made, exec'd and parked", unit: "MiB"}
	wakeWall := row{name: fmt.Sprintf("storm: the %d woken at once (an exec each), wall", n), unit: "ms"}
	wakeOne := row{name: "storm: each wake → exec latency", unit: "ms"}

	// What the clones wrote until now (their files, copied from the
	// template's) goes to the disk first, so that the park storm's count
	// is what the parks write.
	syscall.Sync()
	w0, err := diskWritten(sessDir)
	if err != nil {
		return nil, err
	}
	lat, wall, err := timedAtOnce(n, func(i int) error {
		_, err := c.ParkSession(ctx, ids[i])
		return err
	})
	if err != nil {
		return nil, err
	}
	w1, err := diskWritten(sessDir)
	if err != nil {
		return nil, err
	}
	parkWall.samples, parkOne.samples = []float64{wall}, lat
	written.samples = []float64{float64(w1-w0) / float64(n) / (1 << 20)}
	lifetime.samples = []float64{float64(w1-made) / float64(n) / (1 << 20)}
	fmt.Fprintf(os.Stderr, "bench: storm: parked in %.0f ms, %.1f MiB written per park, %.1f MiB per clone in all\n", wall, written.samples[0], lifetime.samples[0])

	lat, wall, err = timedAtOnce(n, func(i int) error {
		res, err := c.Exec(ctx, ids[i], api.ExecRequest{Argv: []string{"cat", "/root/marker"}})
		if err != nil {
			return err
		}
		if want := fmt.Sprintf("storm-%d\n", i); string(res.Stdout) != want {
			return fmt.Errorf("storm: session %s woke with marker %q, want %q", ids[i], res.Stdout, want)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	wakeWall.samples, wakeOne.samples = []float64{wall}, lat
	fmt.Fprintf(os.Stderr, "bench: storm: woken in %.0f ms\n", wall)
	if err := forEach(n, 8, func(i int) error { return c.DeleteSession(ctx, ids[i]) }); err != nil {
		return nil, err
	}
	return []row{parkWall, parkOne, written, lifetime, wakeWall, wakeOne}, nil
}

// longRows makes, execs and parks cfg.clones clones, cfg.parallel at a
// time, and measures what they cost.
func longRows(ctx context.Context, c *api.Client, objs objstore.Store, sessDir, tmpl string, cfg scaleConfig) ([]row, error) {
	n := cfg.clones
	if n <= 0 {
		return nil, nil
	}
	ids := make([]string, n)
	cycle := row{name: "long run: clone → exec → park, each", unit: "ms"}
	var mu sync.Mutex
	start := time.Now()
	var done int
	if err := forEach(n, cfg.parallel, func(i int) error {
		t0 := time.Now()
		s, err := c.CreateSession(ctx, api.CreateSessionRequest{Template: tmpl})
		if err != nil {
			return err
		}
		ids[i] = s.ID
		if _, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("echo long-%d > /root/marker", i)}}); err != nil {
			return err
		}
		if _, err := c.ParkSession(ctx, s.ID); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		cycle.samples = append(cycle.samples, ms(time.Since(t0)))
		if done++; done%50 == 0 || done == n {
			local, _ := allocated(sessDir)
			fmt.Fprintf(os.Stderr, "bench: long run: %d/%d parked in %v; local session files %.0f MiB\n",
				done, n, time.Since(start).Round(time.Second), float64(local)/(1<<20))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	parkAll := time.Since(start)
	for i, id := range ids {
		if _, err := waitStored(ctx, c, id); err != nil {
			return nil, err
		}
		if (i+1)%200 == 0 {
			fmt.Fprintf(os.Stderr, "bench: long run: %d/%d stored\n", i+1, n)
		}
	}
	storedAll := time.Since(start)
	var storeBytes, objects int64
	if err := objs.List(ctx, "", func(o objstore.Info) error {
		storeBytes += o.Size
		objects++
		return nil
	}); err != nil {
		return nil, err
	}
	local, err := allocated(sessDir)
	if err != nil {
		return nil, err
	}
	bound := "unbounded"
	if cfg.cacheSize > 0 {
		bound = fmt.Sprintf("--cache-size %.0f MiB", float64(cfg.cacheSize)/(1<<20))
	}
	rows := []row{
		cycle,
		{name: fmt.Sprintf("long run: %d clones made and parked, %d at a time", n, cfg.parallel), cells: cells(fmt.Sprintf("%.1f min", parkAll.Minutes()), fmt.Sprintf("all stored after %.1f min", storedAll.Minutes()))},
		{name: fmt.Sprintf("long run: bytes in the object store, %d clones and their template", n), cells: cells(fmt.Sprintf("%.2f GiB in %d objects", float64(storeBytes)/(1<<30), objects), "target ≤ 16 GiB")},
		{name: "long run: local disk held by session files (allocated blocks)", cells: cells(fmt.Sprintf("%.2f GiB", float64(local)/(1<<30)), bound)},
	}
	// Wake a sample back: the oldest ones first, evicted where a cache
	// bound is set.
	wake := row{name: "long run: wake → first exec of the oldest clones", unit: "ms"}
	for i := 0; i < min(n, 10); i++ {
		t0 := time.Now()
		res, err := c.Exec(ctx, ids[i], api.ExecRequest{Argv: []string{"cat", "/root/marker"}})
		if err != nil {
			return nil, err
		}
		if want := fmt.Sprintf("long-%d\n", i); string(res.Stdout) != want {
			return nil, fmt.Errorf("long run: session %s woke with marker %q, want %q", ids[i], res.Stdout, want)
		}
		wake.samples = append(wake.samples, ms(time.Since(t0)))
	}
	rows = append(rows, wake)
	fmt.Fprintf(os.Stderr, "bench: long run: removing %d sessions\n", n)
	if err := forEach(n, 8, func(i int) error { return c.DeleteSession(ctx, ids[i]) }); err != nil {
		return nil, err
	}
	return rows, nil
}

// cells fills a row's columns after its name with a result and a note.
func cells(result, note string) []string { return []string{"1", result, "–", note, "–"} }

// forEach runs fn(0..n-1), at most par at once, and returns the first
// error (the rest still run to their end).
func forEach(n, par int, fn func(int) error) error {
	sem := make(chan struct{}, max(par, 1))
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(i); err != nil {
				once.Do(func() { first = err })
			}
		}()
	}
	wg.Wait()
	return first
}

// timedAtOnce starts fn(0..n-1) all at once and returns each one's
// latency and the wall time until the last ended, in ms.
func timedAtOnce(n int, fn func(int) error) ([]float64, float64, error) {
	lat := make([]float64, n)
	start := time.Now()
	err := forEach(n, n, func(i int) error {
		t0 := time.Now()
		err := fn(i)
		lat[i] = ms(time.Since(t0))
		return err
	})
	return lat, ms(time.Since(start)), err
}

// diskWritten is the bytes written so far to the block device that holds
// dir (its stat file's sectors written; a partition counts as its own).
func diskWritten(dir string) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return 0, err
	}
	major, minor := (st.Dev>>8)&0xfff|(st.Dev>>32)&^0xfff, st.Dev&0xff|(st.Dev>>12)&^0xff
	p := fmt.Sprintf("/sys/dev/block/%d:%d/stat", major, minor)
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("bytes written to the disk of %s: %w", dir, err)
	}
	f := strings.Fields(string(b))
	if len(f) < 7 {
		return 0, fmt.Errorf("%s: %q: too few fields", p, b)
	}
	sectors, err := strconv.ParseInt(f[6], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", p, err)
	}
	return sectors * 512, nil
}

// allocated is the disk space the files under dir take (their allocated
// blocks: a RAM file's holes take none).
func allocated(dir string) (int64, error) {
	var sum int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil // removed under the walk
			}
			return err
		}
		var st syscall.Stat_t
		if d.Type().IsRegular() && syscall.Lstat(p, &st) == nil {
			sum += st.Blocks * 512
		}
		return nil
	})
	return sum, err
}
