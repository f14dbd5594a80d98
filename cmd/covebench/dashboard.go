package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/browsertest"
	"github.com/cove-dev/cove/internal/dashboard"
)

// dashboardKeysPerLine is how many keys are typed on one shell line
// before a new one starts (the line never wraps).
const dashboardKeysPerLine = 20

// dashboardRows measures the web dashboard (issue 22) in Debian's headless
// chromium: the first load of the signed-in page to its sessions list
// shown (the page's own performance mark, from the navigation's start),
// and a keystroke in its terminal to the key's echo on screen (from the
// page's keydown to the terminal's DOM showing it), against the same
// keystroke → echo over the exec WebSocket that 'cove exec -t' uses,
// timed from Go. One tiny session; loads page loads, keys keys each way.
func dashboardRows(ctx context.Context, c *api.Client, token string, apiCfg apiserver.Config, loads, keys int) ([]row, error) {
	if !dashboard.Built(dashboard.Embedded()) {
		return nil, errors.New(dashboard.NotBuilt)
	}
	bin, err := browsertest.Find()
	if err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	h, err := dashboard.New(dashboard.Config{API: apiserver.New(apiCfg).Handler(), Key: key})
	if err != nil {
		return nil, err
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	s, err := c.CreateSession(ctx, api.CreateSessionRequest{Image: "tiny"})
	if err != nil {
		return nil, fmt.Errorf("dashboard: create a session: %w", err)
	}
	defer c.DeleteSession(context.Background(), s.ID)

	b, closeBrowser, err := openBrowser(ctx, bin, srv.URL, "dashboard")
	if err != nil {
		return nil, err
	}
	defer closeBrowser()

	// Sign in once; each load then starts signed in, as a user's would.
	if err := b.signIn(token); err != nil {
		return nil, err
	}
	if err := b.wait("the sessions list", `performance.getEntriesByName('cove:list').length > 0`); err != nil {
		return nil, err
	}
	load, err := b.loads(loads)
	if err != nil {
		return nil, err
	}

	// The terminal: the page records the time from each keydown to the
	// first change of the terminal's screen that shows what was typed.
	if err := chromedp.Do(b.ctx, chromedp.Navigate(srv.URL+"/#/s/"+s.ID)); err != nil {
		return nil, err
	}
	if err := b.wait("the terminal", `document.getElementById('term-status').textContent === 'Connected.' && !!document.querySelector('#terminal .xterm-cursor')`); err != nil {
		return nil, err
	}
	const probe = `(() => {
	  window.__lat = []; window.__want = null; let t0 = 0;
	  document.addEventListener('keydown', () => { t0 = performance.now(); }, true);
	  const rows = document.querySelector('#terminal .xterm-rows');
	  new MutationObserver(() => {
	    const cur = rows.querySelector('.xterm-cursor');
	    const line = cur ? cur.parentElement.textContent.trimEnd() : '';
	    if (t0 && window.__want !== null && line.endsWith(window.__want)) {
	      window.__lat.push(performance.now() - t0); t0 = 0; window.__want = null;
	    }
	  }).observe(rows, {subtree: true, childList: true, characterData: true});
	  return true; })()`
	if _, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](probe)); err != nil {
		return nil, fmt.Errorf("dashboard: install the probe: %w", err)
	}
	press := func(r rune) error {
		return chromedp.Do(b.ctx, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			down := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyDown, Key: string(r), Text: string(r)}
			if r == '\r' {
				down.Key, down.Code, down.WindowsVirtualKeyCode = "Enter", "Enter", 13
			}
			if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, down); err != nil {
				return err
			}
			_, err := cdp.Call(ctx, t, input.DispatchKeyEvent, input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyUp,
				Key: down.Key, Code: down.Code, WindowsVirtualKeyCode: down.WindowsVirtualKeyCode})
			return err
		}))
	}
	if err := chromedp.Do(b.ctx, chromedp.Click(chromedp.ID("terminal"))); err != nil {
		return nil, err
	}
	var typed string
	for i := range keys {
		if i%dashboardKeysPerLine == 0 {
			// A new line: a comment, so Enter runs nothing.
			for _, r := range "\r#" {
				if err := press(r); err != nil {
					return nil, err
				}
			}
			typed = "#"
			time.Sleep(50 * time.Millisecond)
		}
		r := rune('a' + i%dashboardKeysPerLine)
		typed += string(r)
		if _, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](fmt.Sprintf(`(window.__want = %q, true)`, typed))); err != nil {
			return nil, err
		}
		if err := press(r); err != nil {
			return nil, err
		}
		if err := b.wait("the echo", fmt.Sprintf(`window.__lat.length === %d`, i+1)); err != nil {
			return nil, err
		}
	}
	page, err := chromedp.Run(b.ctx, chromedp.Evaluate[[]float64](`window.__lat`))
	if err != nil {
		return nil, err
	}

	ws, err := execWSEcho(ctx, c, s.ID, keys)
	if err != nil {
		return nil, err
	}
	return []row{
		{name: "dashboard: first load → sessions list shown (headless chromium)", samples: load, unit: "ms"},
		{name: "dashboard terminal: keystroke → echo on screen", samples: page, unit: "ms"},
		{name: "exec WebSocket (cove exec -t): keystroke → echo", samples: ws, unit: "ms"},
	}, nil
}

// execWSEcho times keys single keystrokes over a PTY on the exec
// WebSocket, each from its send to its echo.
func execWSEcho(ctx context.Context, c *api.Client, id string, keys int) ([]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	conn, err := c.ExecInteractive(ctx, id, api.ExecRequest{Argv: []string{"/bin/sh"}, TTY: true, Rows: 24, Cols: 80})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	until := func(want string) error {
		var got strings.Builder
		for !strings.Contains(got.String(), want) {
			ev, err := conn.Recv()
			if err != nil {
				return fmt.Errorf("exec ws: waiting for %q: %w", want, err)
			}
			got.Write(ev.Data)
		}
		return nil
	}
	if err := until("# "); err != nil {
		return nil, err
	}
	var out []float64
	for i := range keys {
		if i%dashboardKeysPerLine == 0 {
			if err := conn.Send(api.ExecEvent{Type: api.EventStdin, Data: []byte("\r#")}); err != nil {
				return nil, err
			}
			if err := until("# #"); err != nil { // the prompt, then the "#" echoed
				return nil, err
			}
		}
		r := string(rune('a' + i%dashboardKeysPerLine))
		start := time.Now()
		if err := conn.Send(api.ExecEvent{Type: api.EventStdin, Data: []byte(r)}); err != nil {
			return nil, err
		}
		if err := until(r); err != nil {
			return nil, err
		}
		out = append(out, ms(time.Since(start)))
	}
	return out, nil
}

// browser is a headless chromium on the dashboard at url, for the bench
// section named in its errors.
type browser struct {
	ctx     context.Context
	url     string
	section string
}

// openBrowser starts chromium (bin; see browsertest.Start); stop ends it.
func openBrowser(ctx context.Context, bin, url, section string) (b *browser, stop func(), err error) {
	tab, stop, err := browsertest.Start(ctx, bin, browsertest.Options{})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", section, err)
	}
	return &browser{ctx: tab, url: url, section: section}, stop, nil
}

// wait waits up to two minutes for the page's expr to be true.
func (b *browser) wait(what, expr string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ok, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: waiting for %s: %v", b.section, what, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// signIn signs in with token through the page's form.
func (b *browser) signIn(token string) error {
	if err := chromedp.Do(b.ctx, chromedp.Navigate(b.url+"/"), chromedp.WaitVisible(chromedp.ID("signin-token")),
		chromedp.SendKeys(chromedp.ID("signin-token"), token), chromedp.Click(chromedp.ID("signin-submit"))); err != nil {
		return fmt.Errorf("%s: sign in: %w", b.section, err)
	}
	return nil
}

// loads loads the page n times, signed in, and returns each load's time
// to the sessions list shown (the page's cove:list mark), in ms.
func (b *browser) loads(n int) ([]float64, error) {
	var load []float64
	for range n {
		if err := chromedp.Do(b.ctx, chromedp.Navigate("about:blank"), chromedp.Navigate(b.url+"/")); err != nil {
			return nil, fmt.Errorf("%s: load: %w", b.section, err)
		}
		if err := b.wait("the sessions list", `performance.getEntriesByName('cove:list').length > 0`); err != nil {
			return nil, err
		}
		t, err := chromedp.Run(b.ctx, chromedp.Evaluate[float64](`performance.getEntriesByName('cove:list')[0].startTime`))
		if err != nil {
			return nil, fmt.Errorf("%s: read the mark: %w", b.section, err)
		}
		load = append(load, t)
	}
	return load, nil
}
