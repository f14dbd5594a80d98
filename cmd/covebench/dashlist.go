package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/browsertest"
	"github.com/cove-dev/cove/internal/dashboard"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// dashboardListRows measures the dashboard's sessions list holding n
// sessions, in Debian's headless chromium: a load of the signed-in page
// to the list shown; the time the page takes to build and swap the rows
// of one refresh (its 'cove:render' measure, the page's own script, not
// the layout and paint after it), a refresh being what a new session
// pushes (GET /v1/sessions/watch); and a new session's update latency,
// from the API's answer to its creation to its row in the page, pushed
// to the page by the server. The sessions are real
// API objects (a session manager, SQLite store and API server in
// process) on the fake VMM: n QEMU guests would not fit the machine, and
// the list reads only their records.
func dashboardListRows(ctx context.Context, n, loads, updates int) ([]row, error) {
	if !dashboard.Built(dashboard.Embedded()) {
		return nil, errors.New(dashboard.NotBuilt)
	}
	bin, err := browsertest.Find()
	if err != nil {
		return nil, fmt.Errorf("dashboard list: %w", err)
	}
	dir, err := os.MkdirTemp("", "covebench-dashlist-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	imgDir := filepath.Join(dir, "image")
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		return nil, err
	}
	for _, f := range []string{"rootfs.raw", "vmlinux", "initrd"} {
		if err := os.WriteFile(filepath.Join(imgDir, f), nil, 0o644); err != nil {
			return nil, err
		}
	}
	st, err := sqlite.Open(ctx, filepath.Join(dir, "state.db"))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	log := slog.New(slog.DiscardHandler)
	// Room for n + updates sessions of 64 MiB.
	capacity := store.NodeCapacity{VCPUs: 1024, MemoryMiB: int64(n+loads+updates+16) * 64, DiskBytes: 1 << 50, Accel: "tcg"}
	node, err := session.RegisterEmbeddedNode(ctx, st, "bench", capacity)
	if err != nil {
		return nil, err
	}
	mgr, err := session.New(session.Config{Store: st, Driver: fake.New(), Images: benchImages{imgDir}, Dir: filepath.Join(dir, "sessions"),
		TemplateDir: filepath.Join(dir, "templates"), DefaultMemoryMiB: 64, Node: node.ID, Log: log,
		// The fake VMM's guests take nothing: a host sized for the
		// list, not this machine's admission.
		Admission: session.Admission{HostCPUs: 4096, HostMemoryMiB: 1 << 20}})
	if err != nil {
		return nil, err
	}
	defer mgr.Close()
	defer mgr.StopAll(context.Background())
	ids := &identity.Directory{Store: st}
	if _, err := ids.AddUser(ctx, api.CreateUserRequest{Name: "bench", Kind: api.UserAdmin}); err != nil {
		return nil, fmt.Errorf("dashboard list: %w", err)
	}
	tok, err := ids.CreateToken(ctx, api.CreateTokenRequest{Name: "bench", User: "bench"})
	if err != nil {
		return nil, fmt.Errorf("dashboard list: %w", err)
	}
	apiSrv := apiserver.New(apiserver.Config{Sessions: mgr, Log: log, Nodes: mgr,
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{Store: st})})
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	h, err := dashboard.New(dashboard.Config{API: apiSrv.Handler(), Key: key})
	if err != nil {
		return nil, err
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	c := api.NewClient(srv.URL, tok.Secret)

	// n sessions, four at a time.
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	for range 4 {
		wg.Go(func() {
			for range next {
				_, err := c.CreateSession(ctx, api.CreateSessionRequest{IdleTimeout: "0s"})
				if err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if first != nil {
		return nil, fmt.Errorf("dashboard list: create the sessions: %w", first)
	}

	b, closeBrowser, err := openBrowser(ctx, bin, srv.URL, "dashboard list")
	if err != nil {
		return nil, err
	}
	defer closeBrowser()
	rowsShown := func(k int) string {
		return fmt.Sprintf(`document.querySelectorAll('#sessions tbody tr').length === %d`, k)
	}
	if err := b.signIn(tok.Secret); err != nil {
		return nil, err
	}
	if err := b.wait("the list, pushed", rowsShown(n)+` && document.getElementById('sessions').dataset.live === 'push'`); err != nil {
		return nil, err
	}
	var render []float64
	load, err := b.loads(loads)
	if err != nil {
		return nil, err
	}
	// Each refresh renders the whole list: read the measure of several,
	// each pushed by a session created.
	for range loads {
		if _, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](`(performance.clearMeasures('cove:render'), true)`)); err != nil {
			return nil, err
		}
		if _, err := c.CreateSession(ctx, api.CreateSessionRequest{IdleTimeout: "0s"}); err != nil {
			return nil, fmt.Errorf("dashboard list: create: %w", err)
		}
		if err := b.wait("a refresh", `performance.getEntriesByName('cove:render').length > 0`); err != nil {
			return nil, err
		}
		d, err := chromedp.Run(b.ctx, chromedp.Evaluate[float64](`performance.getEntriesByName('cove:render')[0].duration`))
		if err != nil {
			return nil, fmt.Errorf("dashboard list: read the measure: %w", err)
		}
		render = append(render, d)
	}
	var update []float64
	for range updates {
		s, err := c.CreateSession(ctx, api.CreateSessionRequest{IdleTimeout: "0s"})
		if err != nil {
			return nil, fmt.Errorf("dashboard list: create: %w", err)
		}
		t := time.Now()
		if err := b.wait("the new row", fmt.Sprintf(`!!document.querySelector('#sessions tbody tr[data-id=%q]')`, s.ID)); err != nil {
			return nil, err
		}
		update = append(update, ms(time.Since(t)))
	}
	name := fmt.Sprintf("dashboard list of %d sessions", n)
	return []row{
		{name: name + ": load → list shown (headless chromium)", samples: load, unit: "ms"},
		{name: name + ": one refresh's rows built and swapped (page script)", samples: render, unit: "ms"},
		{name: name + ": a new session → its row shown (pushed)", samples: update, unit: "ms"},
	}, nil
}
