package main

// The dashboard's fit (issue 22), in Debian's headless chromium: every
// action reachable with Tab and Enter and each focused element visibly
// marked, text at WCAG AA contrast, and no sideways scroll at a phone's
// width. The pages read real API objects: the session manager, a SQLite
// store and the API server in process, on the fake VMM (the layout needs
// the sessions' records, not their guests; TestDashboard boots real VMs).
// Screenshots go to the test's artifact directory.

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/browsertest"
	"github.com/cove-dev/cove/internal/dashboard"
	"github.com/cove-dev/cove/internal/identity"
	cimage "github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// fitImages gives the manager any image name, with empty files: the fake
// driver's guests read none of them.
type fitImages struct{ dir string }

func (f fitImages) Get(_ context.Context, name string) (cimage.Image, error) {
	return cimage.Image{Manifest: cimage.Manifest{Name: name}, RootFS: filepath.Join(f.dir, "rootfs.raw")}, nil
}

func (f fitImages) Kernel(context.Context, func(string)) (cimage.Kernel, error) {
	return cimage.Kernel{Version: "fake", Vmlinux: filepath.Join(f.dir, "vmlinux")}, nil
}

func (f fitImages) Initramfs(cimage.Kernel) (string, error) {
	return filepath.Join(f.dir, "initrd"), nil
}

// fitRig is the dashboard in front of the real API server and session
// manager on the fake VMM, with an admin's token.
type fitRig struct {
	url   string
	token string
	mgr   *session.Manager
	srv   *httptest.Server
}

func newFitRig(t *testing.T) *fitRig {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		testenv.Skipf(t, "qemu-img not found (install qemu-utils): the manager makes each session's disk overlay with it")
	}
	if !dashboard.Built(dashboard.Embedded()) {
		testenv.Skipf(t, "%s", dashboard.NotBuilt)
	}
	ctx := t.Context()
	dir := t.TempDir()
	imgDir := filepath.Join(dir, "image")
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"rootfs.raw", "vmlinux", "initrd"} {
		if err := os.WriteFile(filepath.Join(imgDir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err := sqlite.Open(ctx, filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	node, err := session.RegisterEmbeddedNode(ctx, st, "fit", store.NodeCapacity{VCPUs: 8, MemoryMiB: 4096, DiskBytes: 1 << 40, Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := session.New(session.Config{Store: st, Driver: fake.New(), Images: fitImages{imgDir}, Dir: filepath.Join(dir, "sessions"),
		TemplateDir: filepath.Join(dir, "templates"), DefaultMemoryMiB: 64, Node: node.ID, Log: log,
		Admission: session.Admission{HostCPUs: 64, HostMemoryMiB: 1 << 16}})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if ts, err := mgr.ListTemplates(ctx); err == nil {
			for _, tp := range ts {
				_ = mgr.DeleteTemplate(ctx, tp.Name)
			}
		}
		mgr.StopAll(ctx)
		mgr.Close()
		st.Close()
	})
	ids := &identity.Directory{Store: st}
	if _, err := ids.AddUser(ctx, api.CreateUserRequest{Name: "ada", Kind: api.UserAdmin}); err != nil {
		t.Fatal(err)
	}
	tok, err := ids.CreateToken(ctx, api.CreateTokenRequest{Name: "fit", User: "ada"})
	if err != nil {
		t.Fatal(err)
	}
	apiH := apiserver.New(apiserver.Config{Sessions: mgr, Log: log, Nodes: mgr, Identities: ids,
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{Store: st})}).Handler()
	h, err := newDashboard(t.TempDir(), apiH, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fitRig{url: srv.URL + "/", token: tok.Secret, mgr: mgr, srv: srv}
}

// press sends one key as a person types it: keyDown and keyUp, with the
// modifiers given (a bit field: Shift is 8).
func press(key string, code int64, mods int64) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		down := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeRawKeyDown, Key: key, Code: key,
			WindowsVirtualKeyCode: code, NativeVirtualKeyCode: code, Modifiers: mods}
		if key == "Enter" {
			down.Type, down.Text = input.DispatchKeyEventTypeKeyDown, "\r"
		}
		if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, down); err != nil {
			return err
		}
		up := down
		up.Type, up.Text = input.DispatchKeyEventTypeKeyUp, ""
		_, err := cdp.Call(ctx, t, input.DispatchKeyEvent, up)
		return err
	})
}

// typeText types text into the focused element, a keyDown (with its
// text) and a keyUp per key.
func typeText(text string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for _, r := range text {
			down := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyDown, Key: string(r), Text: string(r)}
			if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, down); err != nil {
				return err
			}
			up := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyUp, Key: string(r)}
			if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, up); err != nil {
				return err
			}
		}
		return nil
	})
}

// js runs a JavaScript statement in the page.
func js(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool]("("+expr+", true)")(ctx, t)
		return err
	})
}

var (
	keyTab      = press("Tab", 9, 0)
	keyShiftTab = press("Tab", 9, 8)
	keyEnter    = press("Enter", 13, 0)
	keyEscape   = press("Escape", 27, 0)
)

// fitJS is the page-side half of the checks: focused() describes the
// focused element and whether it shows a focus indicator (an outline or
// a box-shadow, its colour at 3:1 against what is behind it; the
// terminal's is on its box, around xterm.js's hidden input), and
// contrast() lists the visible text below WCAG AA against its effective
// background (4.5:1, large text 3:1) and the controls whose border is
// below 3:1 (a button or field is seen by its border).
const fitJS = `window.__fit = (() => {
  const parse = (c) => {
    const m = /rgba?\(([^)]+)\)/.exec(c || '');
    if (!m) return null;
    const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const blend = (top, bot) => { const a = top[3]; return [0, 1, 2].map((i) => top[i] * a + bot[i] * (1 - a)).concat(1); };
  const bgOf = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let bg = [255, 255, 255, 1];
    for (let i = layers.length - 1; i >= 0; i--) bg = blend(layers[i], bg);
    return bg;
  };
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const shown = (el) => {
    if (!el.getClientRects().length) return false;
    for (let e = el; e; e = e.parentElement) {
      const cs = getComputedStyle(e);
      if (cs.visibility !== 'visible' || parseFloat(cs.opacity) === 0) return false;
    }
    return true;
  };
  const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + ' "' + (el.textContent || el.value || el.getAttribute('aria-label') || '').trim().slice(0, 30) + '"';
  return {
    focused() {
      const el = document.activeElement;
      if (!el || el === document.body || el === document.documentElement) return { name: 'body', ring: false, why: 'nothing focused' };
      const box = el.closest('.xterm') ? document.getElementById('terminal') : el;
      const cs = getComputedStyle(box);
      let ring = false, why = '';
      if (cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) >= 2) {
        const r = ratio(blend(parse(cs.outlineColor), bgOf(box.parentElement)), bgOf(box.parentElement));
        ring = r >= 3;
        why = 'outline ' + cs.outlineStyle + ' ' + cs.outlineWidth + ' ' + cs.outlineColor + ' at ' + r.toFixed(2) + ':1';
      } else if (cs.boxShadow && cs.boxShadow !== 'none') {
        ring = true;
        why = 'box-shadow ' + cs.boxShadow;
      } else why = 'no outline, no box-shadow';
      return { name: name(el), ring, why, terminal: box !== el };
    },
    contrast() {
      const bad = [];
      for (const el of document.querySelectorAll('body *')) {
        if (!shown(el) || el.closest(':disabled')) continue;
        const cs = getComputedStyle(el);
        const bg = bgOf(el);
        if (/^(INPUT|SELECT|BUTTON|TEXTAREA)$/.test(el.tagName) && parseFloat(cs.borderTopWidth) > 0) {
          const behind = bgOf(el.parentElement);
          const own = bg;
          const r = Math.max(ratio(blend(parse(cs.borderTopColor), behind), behind), ratio(own, behind));
          if (r < 3) bad.push(name(el) + ': border ' + cs.borderTopColor + ' on ' + behind.slice(0, 3).join(',') + ' at ' + r.toFixed(2) + ':1 (UI components need 3:1)');
        }
        if (!Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
        const fg = blend(parse(cs.color), bg);
        const size = parseFloat(cs.fontSize), bold = parseInt(cs.fontWeight, 10) >= 700;
        const need = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
        const r = ratio(fg, bg);
        if (r < need) bad.push(name(el) + ': ' + cs.color + ' on rgb(' + bg.slice(0, 3).map(Math.round).join(',') + ') at ' + r.toFixed(2) + ':1, needs ' + need);
      }
      return bad;
    },
  };
})(), true`

// focusInfo is what fitJS's focused() says of the focused element.
type focusInfo struct {
	Name     string `json:"name"`
	Ring     bool   `json:"ring"`
	Why      string `json:"why"`
	Terminal bool   `json:"terminal"`
}

// TestDashboardFit: the sign-in is done by keyboard alone; on the
// sessions list, a session's page and the templates, audit and nodes
// pages, Tab reaches every action and each focused element shows a focus
// indicator; a list row's link opens the session with Enter and a row's
// button keeps the focus when the list is rebuilt; Esc then Tab leaves
// the terminal (which takes Tab for the shell), both ways; a template's
// good build log shows, and its pool, set by keyboard, fills; every
// visible text is at WCAG AA contrast and every control's border at 3:1;
// at 375×740 no page scrolls sideways.
func TestDashboardFit(t *testing.T) {
	bin := browsertest.Chromium(t)
	rig := newFitRig(t)
	ctx := t.Context()
	running, err := rig.mgr.Create(ctx, "ada", api.CreateSessionRequest{Image: "tiny", Agent: "claude", IdleTimeout: "0s"})
	if err != nil {
		t.Fatal(err)
	}
	parked, err := rig.mgr.Create(ctx, "ada", api.CreateSessionRequest{Image: "tiny", IdleTimeout: "0s"})
	if err == nil {
		_, err = rig.mgr.ParkUntil(ctx, parked.ID, []string{"webhook:ci"}, time.Hour)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rig.mgr.CreateTemplate(ctx, "ada", api.CreateTemplateRequest{Name: "py", Image: "tiny", Setup: []string{"true"}}); err != nil {
		t.Fatal(err)
	}

	bctx := browsertest.Tab(t, bin, "")
	do := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(bctx, time.Minute)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	wait := func(what, expr string) {
		t.Helper()
		if err := jsWaitFit(bctx, expr); err != nil {
			body, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("waiting for %s (%s): %v\npage text:\n%s", what, expr, err, body)
		}
	}
	snap := func(name string) {
		t.Helper()
		png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err == nil {
			err = os.WriteFile(filepath.Join(t.ArtifactDir(), name+".png"), png, 0o644)
		}
		if err != nil {
			t.Errorf("screenshot %s: %v", name, err)
		}
	}
	focused := func() focusInfo {
		t.Helper()
		f, err := chromedp.Run(bctx, chromedp.Evaluate[focusInfo](`window.__fit.focused()`))
		if err != nil {
			t.Fatalf("the focused element: %v", err)
		}
		return f
	}
	// tabs presses key up to n times, checks each focused element shows
	// its focus, and returns their names in order; it stops early once
	// done says so of the focused element's name.
	tabs := func(page string, key chromedp.Action[chromedp.Void], n int, done func(string) bool) []string {
		t.Helper()
		var seen []string
		for range n {
			do(page+": a key", key)
			f := focused()
			if !f.Ring {
				snap("nofocus-" + page)
				t.Errorf("%s: %s is focused with no visible indicator (%s)", page, f.Name, f.Why)
			}
			seen = append(seen, f.Name)
			if done != nil && done(f.Name) {
				break
			}
		}
		return seen
	}
	reached := func(page string, seen []string, want ...string) {
		t.Helper()
		for _, w := range want {
			found := false
			for _, s := range seen {
				found = found || strings.Contains(s, w)
			}
			if !found {
				t.Errorf("%s: Tab never reached %s; it went through:\n  %s", page, w, strings.Join(seen, "\n  "))
			}
		}
	}
	contrast := func(page string) {
		t.Helper()
		bad, err := chromedp.Run(bctx, chromedp.Evaluate[[]string](`window.__fit.contrast()`))
		if err != nil {
			t.Fatalf("%s: contrast: %v", page, err)
		}
		if len(bad) > 0 {
			t.Errorf("%s: below WCAG AA contrast:\n  %s", page, strings.Join(bad, "\n  "))
		}
	}
	phone := func(page string) {
		t.Helper()
		do(page+": phone width", chromedp.EmulateViewport(375, 740))
		ok := jsWaitFit(bctx, `document.scrollingElement.scrollWidth <= window.innerWidth`) == nil
		snap(page + "-phone")
		if !ok {
			wide, _ := chromedp.Run(bctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.table-wrap')).slice(0, 8).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + '.' + e.className + ' right ' + Math.round(e.getBoundingClientRect().right))`))
			t.Errorf("%s at 375×740 scrolls sideways; wider than the screen: %v", page, wide)
		}
		contrast(page + " (phone)")
		do(page+": laptop width", chromedp.EmulateViewport(1280, 900))
	}
	inject := func() {
		t.Helper()
		if _, err := chromedp.Run(bctx, chromedp.Evaluate[bool](fitJS)); err != nil {
			t.Fatalf("the checks' script: %v", err)
		}
	}

	// Sign in with the keyboard alone: Tab to the token field, type it,
	// Enter.
	do("open the page", chromedp.Navigate(rig.url))
	wait("the sign-in form", `!document.getElementById('view-signin').hidden`)
	inject()
	contrast("sign-in")
	phone("signin")
	seen := tabs("sign-in", keyTab, 20, func(n string) bool { return strings.Contains(n, "#signin-token") })
	reached("sign-in", seen, "#signin-token")
	do("type the token", typeText(rig.token), keyEnter)
	wait("the sessions list", `!document.getElementById('view-list').hidden && document.querySelectorAll('#sessions tbody tr').length === 2`)
	snap("sessions")
	contrast("sessions")
	phone("sessions")

	// The list, from the top: every control, each row's link and buttons.
	do("reload", chromedp.Navigate("about:blank"), chromedp.Navigate(rig.url+"#/"))
	wait("the list again", `document.querySelectorAll('#sessions tbody tr').length === 2`)
	inject()
	link := fmt.Sprintf(`a "%s"`, running.ID)
	removes := 0
	seen = tabs("sessions", keyTab, 60, func(n string) bool {
		if strings.Contains(n, `button "Remove"`) {
			removes++
		}
		return removes == 2
	})
	reached("sessions", seen, "#nav-sessions", "#nav-templates", "#nav-audit", "#nav-nodes", "#signout",
		"select#create-kind", "input#create-name", "input#create-agent", "button#create-submit", "input#filter",
		link, `button "Park"`, `button "Wake"`, `button "Remove"`)
	// A row's button keeps the focus when the list is built anew (a
	// session created elsewhere is pushed to the page).
	do("to the first row's link", js(`document.querySelector('#sessions tbody a').focus()`), keyShiftTab, keyTab, keyTab)
	before := focused()
	if _, err := rig.mgr.Create(ctx, "ada", api.CreateSessionRequest{Image: "tiny", IdleTimeout: "0s"}); err != nil {
		t.Fatal(err)
	}
	wait("the third session's row", `document.querySelectorAll('#sessions tbody tr').length === 3`)
	if after := focused(); after.Name != before.Name || !after.Ring {
		t.Errorf("the list's refresh moved the focus from %s to %s (%s)", before.Name, after.Name, after.Why)
	}
	// Enter on a row's link opens the session.
	do("to the running session's link", js(fmt.Sprintf(`document.querySelector('#sessions tr[data-id=%q] a').focus()`, running.ID)), keyShiftTab, keyTab)
	if f := focused(); !strings.Contains(f.Name, running.ID) {
		t.Fatalf("focus on %s, want the link of %s", f.Name, running.ID)
	}
	do("open it with Enter", keyEnter)
	wait("the session's page", fmt.Sprintf(`location.hash === '#/s/%s' && !document.getElementById('view-session').hidden && document.getElementById('s-state').textContent === 'running'`, running.ID))

	// The session's page opens in the terminal, which takes Tab for the
	// shell: Esc then Shift+Tab leaves it backwards, Esc then Tab forwards.
	wait("the terminal focused", `!!document.activeElement.closest('#terminal')`)
	inject()
	if f := focused(); !f.Ring || !f.Terminal {
		t.Errorf("the terminal has the focus with no visible indicator: %+v", f)
	}
	do("Tab in the terminal", keyTab)
	if f := focused(); !f.Terminal {
		t.Errorf("Tab alone left the terminal for %s: the shell's completion needs it", f.Name)
	}
	do("Esc, Shift+Tab", keyEscape)
	seen = tabs("session (backwards)", keyShiftTab, 12, func(n string) bool { return strings.Contains(n, "#signout") })
	reached("session (backwards)", seen, "#s-remove", "#s-wake", "#s-park", "#signout")
	do("back into the terminal", chromedp.Click(chromedp.ID("terminal")), keyEscape)
	seen = tabs("session (forwards)", keyTab, 12, func(n string) bool { return strings.Contains(n, "#commands-refresh") })
	reached("session (forwards)", seen, "#files-path", "#upload-file", "#upload-submit", "#commands-refresh")
	snap("session")
	contrast("session")
	phone("session")

	// The other pages: templates (a row's name opens its versions and
	// build log), audit, nodes.
	for _, p := range []struct {
		page, hash, ready string
		want              []string
	}{
		{"templates", "#/templates", `document.querySelectorAll('#templates tbody tr').length > 0`, []string{`button "py"`, "input#pool-py", `button "Set pool"`, `button "Rebuild"`}},
		{"audit", "#/audit", `!document.getElementById('a-error').hidden || document.querySelectorAll('#audit tbody tr').length > 0`, []string{"input#audit-session", "input#audit-actor", `button "Filter"`}},
		{"nodes", "#/nodes", `document.querySelectorAll('#nodes tbody tr').length > 0`, []string{`button "Cordon"`, `button "Drain"`}},
	} {
		do(p.page, chromedp.Navigate(rig.url+p.hash))
		wait(p.page, p.ready)
		inject()
		seen := tabs(p.page, keyTab, 40, func(n string) bool { return strings.Contains(n, p.want[len(p.want)-1]) })
		reached(p.page, seen, p.want...)
		if p.page == "templates" {
			// A good build's log shows; the pool is sized from the page
			// by keyboard, and fills.
			do("open py's versions", js(`document.querySelector('#templates tbody button').focus()`), keyEnter)
			wait("py's versions and build log", `!document.getElementById('t-detail').hidden && document.querySelectorAll('#versions tbody tr').length > 0 && document.getElementById('t-log').textContent.includes('== v1 (ready)\n$ true\n(exit 0)')`)
			do("size py's pool", js(`document.getElementById('pool-py').focus()`), js(`document.getElementById('pool-py').select()`), typeText("2"), keyEnter)
			wait("py's pool filled", `document.querySelector('#templates tr[data-name="py"]').textContent.includes('2 of 2 warm')`)
			if tp, err := rig.mgr.GetTemplate(ctx, "py"); err != nil || tp.Pool != 2 {
				t.Errorf("py after the page set its pool: %+v, %v; want pool 2", tp, err)
			}
		}
		snap(p.page)
		contrast(p.page)
		phone(p.page)
	}
}

// TestDashboardListPushed: the sessions list follows GET
// /v1/sessions/watch: once the page says it is live, a session created
// and one removed elsewhere show without the page asking for the list
// (no GET /v1/sessions among its requests); when the stream is cut, the
// page says it polls and a session created then still shows, and the
// stream comes back.
func TestDashboardListPushed(t *testing.T) {
	bin := browsertest.Chromium(t)
	rig := newFitRig(t)
	ctx := t.Context()
	first, err := rig.mgr.Create(ctx, "ada", api.CreateSessionRequest{Image: "tiny", IdleTimeout: "0s"})
	if err != nil {
		t.Fatal(err)
	}
	bctx := browsertest.Tab(t, bin, "")
	wait := func(what, expr string) {
		t.Helper()
		if err := jsWaitFit(bctx, expr); err != nil {
			body, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("waiting for %s (%s): %v\npage text:\n%s", what, expr, err, body)
		}
	}
	row := func(id string) string { return fmt.Sprintf(`!!document.querySelector('#sessions tr[data-id=%q]')`, id) }
	// polls counts the page's GET /v1/sessions so far.
	const polls = `performance.getEntriesByType('resource').filter(e => new URL(e.name).pathname === '/v1/sessions').length`
	if err := chromedp.Do(bctx, chromedp.Navigate(rig.url)); err != nil {
		t.Fatal(err)
	}
	wait("the sign-in form", `!document.getElementById('view-signin').hidden`)
	if err := chromedp.Do(bctx, chromedp.SendKeys(chromedp.ID("signin-token"), rig.token), chromedp.Click(chromedp.ID("signin-submit"))); err != nil {
		t.Fatal(err)
	}
	wait("the list, live", row(first.ID)+` && document.getElementById('sessions').dataset.live === 'push' && document.getElementById('count').textContent.endsWith('live')`)
	before, err := chromedp.Run(bctx, chromedp.Evaluate[int](polls))
	if err != nil {
		t.Fatal(err)
	}
	second, err := rig.mgr.Create(ctx, "ada", api.CreateSessionRequest{Image: "tiny", IdleTimeout: "0s"})
	if err != nil {
		t.Fatal(err)
	}
	wait("the new session, pushed", row(second.ID)+` && document.querySelector('#sessions tr[data-id="`+second.ID+`"] td[data-state="running"]') !== null`)
	if err := rig.mgr.Delete(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	wait("the removed session gone", `!`+row(first.ID))
	if after, err := chromedp.Run(bctx, chromedp.Evaluate[int](polls)); err != nil || after != before {
		t.Errorf("the page asked for the list %d times while it was pushed (%v)", after-before, err)
	}

	// The stream cut: the page polls, then follows the stream again.
	rig.srv.CloseClientConnections()
	wait("polling", `document.getElementById('sessions').dataset.live === 'poll' && document.getElementById('count').textContent.endsWith('every 2 s')`)
	third, err := rig.mgr.Create(ctx, "ada", api.CreateSessionRequest{Image: "tiny", IdleTimeout: "0s"})
	if err != nil {
		t.Fatal(err)
	}
	wait("the session created meanwhile", row(third.ID))
	wait("live again", `document.getElementById('sessions').dataset.live === 'push'`)
}

// jsWaitFit polls a JavaScript expression until it is true, for up to a
// minute.
func jsWaitFit(ctx context.Context, expr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
