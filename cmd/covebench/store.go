package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/s3test"
)

// storeObjects is the object store of the store section: a real S3
// server (SeaweedFS, s3test) on loopback, as the figures ask, and
// a way to open further empty stores on it (for the throughput rows); its
// stop func ends it.
func storeObjects(ctx context.Context) (*benchObjects, error) {
	srv, err := s3test.Start(ctx, os.Stderr)
	if err != nil {
		return nil, fmt.Errorf("store: S3 server: %w", err)
	}
	for k, v := range srv.Env() {
		os.Setenv(k, v)
	}
	o := &benchObjects{stop: srv.Stop}
	o.fresh = func(ctx context.Context) (*cas.Store, error) {
		st, _, err := openCAS(ctx, srv.URL(fmt.Sprintf("bench-%d", time.Now().UnixNano())))
		return st, err
	}
	if o.cas, o.objs, err = openCAS(ctx, srv.URL(fmt.Sprintf("bench-%d", time.Now().UnixNano()))); err != nil {
		srv.Stop()
		return nil, err
	}
	return o, nil
}

// benchObjects is the object store the manager uploads to, and more.
type benchObjects struct {
	cas   *cas.Store
	objs  objstore.Store                            // what cas holds its objects in
	fresh func(context.Context) (*cas.Store, error) // opens another, empty store
	stop  func()
}

// openCAS opens a content-addressed store over the object store at url.
func openCAS(ctx context.Context, url string) (*cas.Store, objstore.Store, error) {
	objs, err := objstore.Open(ctx, url)
	if err != nil {
		return nil, nil, err
	}
	st, err := cas.New(cas.Config{Objects: objs})
	return st, objs, err
}

// uploadRows measures upload throughput and its CPU cost: the files of
// parked session dir (RAM file, device state, disk overlay) put into an
// empty store n times, on S3 (fresh) and on file:// (under tmp), so that
// every chunk is hashed, compressed and sent. MB/s counts the data read
// (a RAM file's holes are skipped, not read); CPU is this process's user
// and system time, which is cove's side of an upload (the S3 server runs
// apart).
func uploadRows(ctx context.Context, fresh func(context.Context) (*cas.Store, error), tmp, dir string, n int) ([]row, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []cas.Source
	for _, e := range ents {
		if e.Type().IsRegular() {
			files = append(files, cas.Source{Name: e.Name(), Path: filepath.Join(dir, e.Name())})
		}
	}
	var rows []row
	for _, backend := range []string{"S3", "file://"} {
		rate := row{name: "upload throughput to an empty " + backend + " store (a parked tiny session's data)", unit: "MB/s"}
		cpu := row{name: "CPU per MB uploaded to " + backend + " (hash, zstd, send)", unit: "ms"}
		ratio := row{name: "bytes sent / data read, " + backend + " (zstd)", unit: "%"}
		for i := 0; i < n; i++ {
			var st *cas.Store
			if backend == "S3" {
				st, err = fresh(ctx)
			} else {
				st, _, err = openCAS(ctx, "file://"+filepath.Join(tmp, fmt.Sprintf("upload-%d", i)))
			}
			if err != nil {
				return nil, err
			}
			cpu0, t0 := cpuTime(), time.Now()
			_, stats, err := st.Upload(ctx, files, nil)
			if err != nil {
				return nil, err
			}
			wall, used := time.Since(t0), cpuTime()-cpu0
			mb := float64(stats.BytesRead) / 1e6
			rate.samples = append(rate.samples, mb/wall.Seconds())
			cpu.samples = append(cpu.samples, ms(used)/mb)
			ratio.samples = append(ratio.samples, 100*float64(stats.BytesAdded)/float64(stats.BytesRead))
			fmt.Fprintf(os.Stderr, "bench: upload %s %d/%d: %.0f MB read in %v, %.0f MB/s, CPU %v\n", backend, i+1, n, mb, wall.Round(time.Millisecond), mb/wall.Seconds(), used.Round(time.Millisecond))
		}
		rows = append(rows, rate, cpu, ratio)
	}
	return rows, nil
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// storeRows measures snapshots off the host: the bytes a parked clone of
// tiny (512 MiB) adds to the store after one small exec, those a second
// park adds after another, and the wake from the store with the
// session's local files gone (a cold cache) until its first exec
// answers. The template version is uploaded before the first clone's
// snapshot and is not counted.
func storeRows(ctx context.Context, c *api.Client, sessDir string, n int, fresh func(context.Context) (*cas.Store, error)) ([]row, error) {
	if _, err := c.CreateTemplate(ctx, api.CreateTemplateRequest{Name: "bench-store"}); err != nil {
		return nil, err
	}
	first := row{name: "store bytes added: parked clone of tiny after one small exec", unit: "MiB", target: 16}
	second := row{name: "store bytes added: its second park after a small exec", unit: "MiB", target: 16}
	wake := row{name: "wake from the store (local files gone) → first exec, tiny", unit: "ms", target: 1500}
	park := row{name: "park of a clone, with uploads to the store on (its own starts after it)", unit: "ms", target: 150}
	upload := row{name: "park returned → stored (upload in the background, polled every 50 ms)", unit: "ms"}
	var throughput []row
	for i := 0; i < n; i++ {
		s, err := c.CreateSession(ctx, api.CreateSessionRequest{Template: "bench-store"})
		if err != nil {
			return nil, err
		}
		for j, r := range []*row{&first, &second} {
			cmd := fmt.Sprintf("echo %d-%d > /root/marker", i, j)
			if _, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"sh", "-c", cmd}}); err != nil {
				return nil, err
			}
			t0 := time.Now()
			if _, err := c.ParkSession(ctx, s.ID); err != nil {
				return nil, err
			}
			parked := time.Now()
			park.samples = append(park.samples, ms(parked.Sub(t0)))
			st, err := waitStored(ctx, c, s.ID)
			if err != nil {
				return nil, err
			}
			upload.samples = append(upload.samples, ms(time.Since(parked)))
			r.samples = append(r.samples, float64(st.StoredBytes)/(1<<20))
			if j == 0 {
				continue
			}
			if i == 0 {
				// The throughput rows use the first clone's files, parked
				// and stored (the background upload is done).
				tmp, err := os.MkdirTemp(filepath.Dir(sessDir), "upload-bench-")
				if err != nil {
					return nil, err
				}
				throughput, err = uploadRows(ctx, fresh, tmp, filepath.Join(sessDir, s.ID), max(n/2, 3))
				os.RemoveAll(tmp)
				if err != nil {
					return nil, err
				}
			}
			if err := os.RemoveAll(filepath.Join(sessDir, s.ID)); err != nil {
				return nil, err
			}
			t0 = time.Now()
			res, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"cat", "/root/marker"}})
			if err != nil {
				return nil, err
			}
			if want := fmt.Sprintf("%d-%d\n", i, j); string(res.Stdout) != want {
				return nil, fmt.Errorf("store: woken from the store, the marker is %q, want %q", res.Stdout, want)
			}
			wake.samples = append(wake.samples, ms(time.Since(t0)))
		}
		fmt.Fprintf(os.Stderr, "bench: store %d/%d: %.1f MiB, %.1f MiB, wake %.0f ms\n", i+1, n,
			first.samples[i], second.samples[i], wake.samples[i])
		if err := c.DeleteSession(ctx, s.ID); err != nil {
			return nil, err
		}
	}
	if err := c.DeleteTemplate(ctx, "bench-store"); err != nil {
		return nil, err
	}
	return append([]row{first, second, park, upload, wake}, throughput...), nil
}

// waitStored polls session id until its snapshot is stored.
func waitStored(ctx context.Context, c *api.Client, id string) (api.Session, error) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		s, err := c.GetSession(ctx, id)
		if err != nil {
			return s, err
		}
		if s.Stored {
			return s, nil
		}
		if s.State != api.StateParked || time.Now().After(deadline) {
			return s, fmt.Errorf("store: session %s is %s, not stored (%s)", id, s.State, s.Error)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
