package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/e2b"
	"github.com/cove-dev/cove/internal/e2b/sdktest"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// e2bPoolTemplate is the cove template, on the debian image with a warm
// pool of one, that the E2B rows create sandboxes from "with a pool".
const e2bPoolTemplate = "e2b-pool"

// e2bRows measures the E2B-compatible API with the official SDK (issue
// 21's figures): Sandbox.create → the first commands.run result, with no
// warm pool ('base', the debian image booted) and with one (a cove
// template with a pool), the SDK's pause, connect → commands.run, and a
// commands.run round trip against cove's own exec of the same command on
// a session of the same image. n sandboxes each way, one at a time, runs
// round trips in each. key is an API token of an admin.
func e2bRows(ctx context.Context, home string, mgr *session.Manager, st *sqlite.Store, c *api.Client, key string, n, runs int, log *slog.Logger) ([]row, error) {
	k := make([]byte, 32)
	rand.Read(k)
	srv, err := e2b.New(e2b.Config{Sessions: mgr, Records: st, Key: k, BaseImage: "debian", Log: log,
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{Store: st}),
		Authorize:     (&apiserver.PolicyGate{Policy: policy.New(), Records: st}).Authorize})
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	hs := httptest.NewServer(srv)
	defer hs.Close()
	dir, err := os.MkdirTemp("", "covebench-e2b-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := sdktest.Prepare(filepath.Join(home, "cache"), dir, func(msg string) { fmt.Fprintln(os.Stderr, "bench:", msg) }); err != nil {
		return nil, err
	}
	sdk := func(template string) (e2bSamples, error) {
		var s e2bSamples
		cmd := exec.CommandContext(ctx, "node", "bench.mjs")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "E2B_API_URL="+hs.URL, "E2B_SANDBOX_URL="+hs.URL, "E2B_API_KEY="+key,
			"BENCH_TEMPLATE="+template, fmt.Sprintf("BENCH_N=%d", n), fmt.Sprintf("BENCH_RUNS=%d", runs))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return s, fmt.Errorf("e2b: node bench.mjs (%s): %v\n%s", template, err, stderr.Bytes())
		}
		if err := json.Unmarshal(out, &s); err != nil {
			return s, fmt.Errorf("e2b: bench.mjs printed %q: %w", out, err)
		}
		return s, nil
	}

	fmt.Fprintln(os.Stderr, "bench: e2b: sandboxes from 'base' (the debian image booted, no pool)")
	cold, err := sdk("base")
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(os.Stderr, "bench: e2b: a template with a warm pool")
	if _, err := c.CreateTemplate(ctx, api.CreateTemplateRequest{Name: e2bPoolTemplate, Image: "debian", Pool: 1}); err != nil {
		return nil, err
	}
	defer c.DeleteTemplate(context.WithoutCancel(ctx), e2bPoolTemplate)
	if err := waitPool(ctx, c, e2bPoolTemplate); err != nil {
		return nil, err
	}
	warm, err := sdk(e2bPoolTemplate)
	if err != nil {
		return nil, err
	}

	// cove's own exec of the same command, on a session of the same image.
	s, err := c.CreateSession(ctx, api.CreateSessionRequest{Image: "debian"})
	if err != nil {
		return nil, err
	}
	defer c.DeleteSession(context.WithoutCancel(ctx), s.ID)
	own := row{name: "cove API: exec round trip (bash -l -c true, debian)", unit: "ms"}
	for range n * runs {
		t := time.Now()
		res, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"/bin/bash", "-l", "-c", "true"}})
		if err != nil {
			return nil, err
		}
		if res.ExitCode != 0 {
			return nil, fmt.Errorf("e2b: cove exec of true exited %d", res.ExitCode)
		}
		own.samples = append(own.samples, ms(time.Since(t)))
	}
	run := row{name: "E2B SDK: commands.run round trip (true)", unit: "ms", samples: append(cold.Run, warm.Run...)}
	over := pct(run.samples, 0.5) - pct(own.samples, 0.5)
	return []row{
		{name: "E2B SDK: Sandbox.create('base') → first commands.run (no pool: debian booted)", unit: "ms", samples: cold.CreateToRun},
		{name: "E2B SDK: Sandbox.create(template with a warm pool) → first commands.run", unit: "ms", samples: warm.CreateToRun},
		{name: "E2B SDK: pause", unit: "ms", samples: append(cold.Pause, warm.Pause...)},
		{name: "E2B SDK: connect (resume) → commands.run", unit: "ms", samples: append(cold.ConnectToRun, warm.ConnectToRun...)},
		run,
		own,
		{name: "E2B compatibility layer: added to a command round trip (p50 difference)",
			cells: []string{fmt.Sprint(len(run.samples)), fmt.Sprintf("%.1f ms", over), "–", "–", "–"}},
	}, nil
}

// e2bSamples is what bench.mjs prints, in milliseconds.
type e2bSamples struct {
	CreateToRun  []float64 `json:"createToRun"`
	Run          []float64 `json:"run"`
	Pause        []float64 `json:"pause"`
	ConnectToRun []float64 `json:"connectToRun"`
}

// waitPool waits until template name's warm pool holds a ready clone.
func waitPool(ctx context.Context, c *api.Client, name string) error {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		t, err := c.GetTemplate(ctx, name)
		if err != nil {
			return err
		}
		if t.State == "failed" {
			return fmt.Errorf("e2b: template %s failed: %s", name, t.Error)
		}
		if t.State == "ready" && t.PoolReady > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("e2b: template %s's pool not ready after 10 minutes (%s, %d ready)", name, t.State, t.PoolReady)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
