package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/s3test"
)

// storeObjects is the object store of the store section: a real S3
// server (SeaweedFS, s3test) on loopback, as the figures ask; its
// stop func ends it.
func storeObjects(ctx context.Context) (*cas.Store, func(), error) {
	srv, err := s3test.Start(ctx, os.Stderr)
	if err != nil {
		return nil, nil, fmt.Errorf("store: S3 server: %w", err)
	}
	for k, v := range srv.Env() {
		os.Setenv(k, v)
	}
	objs, err := objstore.Open(ctx, srv.URL(fmt.Sprintf("bench-%d", time.Now().UnixNano())))
	if err != nil {
		srv.Stop()
		return nil, nil, err
	}
	st, err := cas.New(cas.Config{Objects: objs})
	if err != nil {
		srv.Stop()
		return nil, nil, err
	}
	return st, srv.Stop, nil
}

// storeRows measures snapshots off the host: the bytes a parked clone of
// tiny (512 MiB) adds to the store after one small exec, those a second
// park adds after another, and the wake from the store with the
// session's local files gone (a cold cache) until its first exec
// answers. The template version is uploaded before the first clone's
// snapshot and is not counted.
func storeRows(ctx context.Context, c *api.Client, sessDir string, n int) ([]row, error) {
	if _, err := c.CreateTemplate(ctx, api.CreateTemplateRequest{Name: "bench-store"}); err != nil {
		return nil, err
	}
	first := row{name: "store bytes added: parked clone of tiny after one small exec", unit: "MiB", target: 16}
	second := row{name: "store bytes added: its second park after a small exec", unit: "MiB", target: 16}
	wake := row{name: "wake from the store (local files gone) → first exec, tiny", unit: "ms", target: 1500}
	park := row{name: "park of a clone, with uploads to the store on (its own starts after it)", unit: "ms", target: 150}
	upload := row{name: "park returned → stored (upload in the background, polled every 50 ms)", unit: "ms"}
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
	return []row{first, second, park, upload, wake}, nil
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
