package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/audit"
)

// auditRows measures the audit log on the API path: a second API server
// over the same sessions with the log on (as 'cove server' always has it),
// an exec through it against the same exec through the plain one, audited
// calls per second from concurrent clients on several sessions, an
// inclusion proof through the API, and an offline Verify of the log.
func auditRows(ctx context.Context, home string, plain *api.Client, token string, cfg apiserver.Config, execs int) ([]row, error) {
	// tessera's own progress lines (klog) would land in the table.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	dir := filepath.Join(home, "audit-bench")
	os.RemoveAll(dir)
	os.Remove(audit.DefaultKeyPath(dir))
	l, err := audit.Open(ctx, dir, audit.Options{})
	if err != nil {
		return nil, err
	}
	closed := false
	defer func() {
		if !closed {
			_ = l.Close(context.Background())
		}
	}()
	cfg.Audit, cfg.AuditLog = l, l
	srv := httptest.NewServer(apiserver.New(cfg).Handler())
	defer srv.Close()
	audited := api.NewClient(srv.URL, token)

	var ids []string
	for i := 0; i < 4; i++ {
		s, err := audited.CreateSession(ctx, api.CreateSessionRequest{})
		if err != nil {
			return nil, err
		}
		ids = append(ids, s.ID)
	}
	defer func() {
		for _, id := range ids {
			_ = plain.DeleteSession(context.Background(), id)
		}
	}()

	// One exec, alternately through each server, on the same session.
	rp := row{name: "exec round trip (true), audit log off", unit: "ms"}
	ra := row{name: "exec round trip (true), audited (announcement + outcome)", unit: "ms"}
	for i := 0; i < execs+5; i++ {
		for _, r := range []struct {
			c   *api.Client
			row *row
		}{{plain, &rp}, {audited, &ra}} {
			t0 := time.Now()
			if _, err := r.c.Exec(ctx, ids[0], api.ExecRequest{Argv: []string{"true"}}); err != nil {
				return nil, err
			}
			if i >= 5 {
				r.row.samples = append(r.row.samples, ms(time.Since(t0)))
			}
		}
	}
	ra.note = fmt.Sprintf("+%.1f ms", pct(ra.samples, 0.5)-pct(rp.samples, 0.5))
	ra.targetText = "+ ≤ 2 ms"

	// Audited calls per second: 16 clients stat / on 4 sessions.
	var n atomic.Int64
	var wg sync.WaitGroup
	var firstErr error
	var once sync.Once
	stop := time.Now().Add(10 * time.Second)
	start := time.Now()
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if _, err := audited.Stat(ctx, ids[w%len(ids)], "/"); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	rps := float64(n.Load()) / time.Since(start).Seconds()
	rr := row{name: "audited API calls (file stat), 16 clients on 4 sessions", cells: []string{"1", fmt.Sprintf("%.0f/s", rps), "–", "–", "–"}}

	size, err := l.Size(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := l.WaitCheckpoint(ctx, size); err != nil {
		return nil, err
	}
	pr := row{name: "inclusion proof through the API (GET /v1/audit/proof)", unit: "ms"}
	for i := 0; i < 100; i++ {
		t0 := time.Now()
		if _, err := audited.AuditProof(ctx, rand.Uint64N(size)); err != nil {
			return nil, err
		}
		pr.samples = append(pr.samples, ms(time.Since(t0)))
	}

	key := l.VerifierKey()
	if err := l.Close(ctx); err != nil {
		return nil, err
	}
	closed = true
	t0 := time.Now()
	rep, err := audit.Verify(ctx, dir, key, "")
	if err != nil {
		return nil, err
	}
	perM := time.Since(t0).Seconds() / float64(rep.Size) * 1e6
	vr := row{name: fmt.Sprintf("cove audit verify, per million entries (a %d-entry log)", rep.Size), cells: []string{"1", fmt.Sprintf("%.1f s", perM), "–", "–", "–"}}
	return []row{rp, ra, rr, pr, vr}, nil
}
