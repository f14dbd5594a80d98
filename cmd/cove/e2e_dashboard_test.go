package main_test

// The dashboard through a real browser: Debian's chromium, headless,
// driven by chromedp against a real 'cove server' booting real VMs. The
// screenshots of each main page go to the test's artifact directory:
// kept with 'go test -artifacts -outputdir DIR' (DIR/TestDashboard…),
// else removed with the test.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"github.com/cove-dev/cove/internal/browsertest"
	"github.com/cove-dev/cove/internal/dashboard"
	"github.com/cove-dev/cove/internal/testenv"
)

// jsWait polls a JavaScript expression in the page until it is true.
func jsWait(ctx context.Context, what, expr string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s (%s): %w (last error %v)", what, expr, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// shot saves a screenshot of the page as NAME.png under the test's
// artifact directory.
func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(t.ArtifactDir(), name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	t.Logf("screenshot: %s", p)
}

// termHasLine is true once a row of the terminal reads exactly text.
func termHasLine(text string) string {
	b, _ := json.Marshal(text)
	return `Array.from(document.querySelectorAll('#terminal .xterm-rows > div')).some(d => d.textContent.trim() === ` + string(b) + `)`
}

func stateIs(state string) string {
	return `document.getElementById('s-state').textContent === '` + state + `'`
}

// TestDashboard: an engineer signs in with a token, creates a session and
// sees it in the list, runs 'echo hi' in its terminal, parks it from the
// page and wakes it by typing, uploads and downloads a file and signs
// out; another engineer's session never reaches the browser, a WebSocket
// from another origin is refused, and the page's CSP blocks inline script.
// The templates page lists; the audit and nodes pages say the policy
// refuses the engineer, and show the admin the log (entries verified
// against the signed checkpoint) and the node (cordon, uncordon).
func TestDashboard(t *testing.T) {
	t.Parallel()
	bin := browsertest.Chromium(t)
	e := newE2E(t)
	e.startServer()
	t.Cleanup(func() { // before newE2E's, which finds no QEMU left then
		for id := range e.seen {
			e.run(nil, "rm", id)
		}
		if err := e.stopServer(syscall.SIGTERM); err != nil { // it stops its spare QEMUs
			t.Errorf("stop the server: %v", err)
		}
	})

	page, err := http.Get("http://" + e.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	page.Body.Close()
	if page.StatusCode == http.StatusServiceUnavailable {
		testenv.Skipf(t, "%s", dashboard.NotBuilt)
	}
	if csp := page.Header.Get("Content-Security-Policy"); page.StatusCode != 200 || !strings.Contains(csp, "script-src 'self';") {
		t.Fatalf("GET /: %d, Content-Security-Policy %q", page.StatusCode, csp)
	}

	e.userToken() // the CLI signs in as the first admin
	token := func(user string) string {
		e.ok(nil, "user", "add", user, "--kind", "engineer")
		lines := strings.Split(strings.TrimSpace(e.ok(nil, "token", "create", "--name", "dash", "--user", user)), "\n")
		return lines[len(lines)-1]
	}
	ann, ben := token("ann"), token("ben")
	out, errOut, code := e.runAs(ben, nil, "session", "create")
	if code != 0 {
		t.Fatalf("ben's session: %s", errOut)
	}
	bens := strings.TrimSpace(out)
	e.seen[bens] = true

	downloads := t.TempDir()
	ctx := browsertest.Tab(t, bin, downloads)
	base := "http://" + e.addr + "/"
	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			shot(t, ctx, "failed")
			t.Fatalf("%s: %v%s", what, err, e.serverLog())
		}
	}
	wait := func(what, expr string, limit time.Duration) {
		t.Helper()
		if err := jsWait(ctx, what, expr, limit); err != nil {
			shot(t, ctx, "failed")
			body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("%v\npage text:\n%s%s", err, body, e.serverLog())
		}
	}

	// Sign in: a wrong token is refused with the API's reason.
	step("open the page", chromedp.Navigate(base), chromedp.WaitVisible(chromedp.ID("signin-token")))
	shot(t, ctx, "signin")
	step("a wrong token", chromedp.SendKeys(chromedp.ID("signin-token"), "cove_wrong"), chromedp.Click(chromedp.ID("signin-submit")))
	wait("the refusal", `!document.getElementById('signin-error').hidden && document.getElementById('signin-error').textContent.includes('invalid')`, 30*time.Second)
	evalIn[string](t, ctx, `document.getElementById('signin-token').value = ''`)
	step("sign in", chromedp.SendKeys(chromedp.ID("signin-token"), ann), chromedp.Click(chromedp.ID("signin-submit")))
	wait("the sessions list", `!document.getElementById('view-list').hidden && document.getElementById('who').textContent.includes('ann')`, 30*time.Second)

	// The CSP blocks an inline script the page's DOM would run.
	injected := evalIn[bool](t, ctx, `(() => { const s = document.createElement('script'); s.textContent = 'window.__inline = true'; document.body.appendChild(s); return window.__inline === true; })()`)
	if injected {
		t.Fatal("an inline script ran: the Content-Security-Policy does not block it")
	}

	// Create a session from the page; it appears in the list.
	step("create", chromedp.SendKeys(chromedp.ID("create-name"), "tiny"), chromedp.Click(chromedp.ID("create-submit")))
	wait("the session view", `location.hash.startsWith('#/s/')`, 3*time.Minute)
	hash := evalIn[string](t, ctx, `location.hash`)
	id := strings.TrimPrefix(hash, "#/s/")
	e.seen[id] = true
	step("back to the list", chromedp.Navigate(base+"#/"))
	wait("the session in the list", `!!document.querySelector('#sessions tr[data-id="`+id+`"] td[data-state="running"]')`, time.Minute)
	shot(t, ctx, "sessions")
	// At a phone's width the page does not scroll sideways (the table
	// scrolls in its own box).
	step("phone width", chromedp.EmulateViewport(390, 844))
	wait("no sideways scroll", `document.documentElement.scrollWidth <= window.innerWidth`, 30*time.Second)
	shot(t, ctx, "sessions-phone")
	step("laptop width", chromedp.EmulateViewport(1280, 900))

	// Ben's session never reaches ann's browser: not in the page, not in
	// what the API answers the page's cookie, not on its own page.
	listed := evalIn[string](t, ctx, `fetch('/v1/sessions').then(r => r.text())`, chromedp.EvalAwaitPromise)
	text := evalIn[string](t, ctx, `document.documentElement.outerHTML`)
	if !strings.Contains(listed, id) || strings.Contains(listed, bens) || strings.Contains(text, bens) {
		t.Fatalf("ann's browser: list %s (page has ben's %s: %v), want ann's %s only", listed, bens, strings.Contains(text, bens), id)
	}
	step("ben's session page", chromedp.Navigate(base+"#/s/"+bens))
	wait("a refusal", `document.getElementById('banner').textContent.length > 0 && document.getElementById('s-detail').textContent === ''`, 30*time.Second)
	banner := evalIn[string](t, ctx, `document.getElementById('banner').textContent`)
	t.Logf("ben's session as ann: %q", banner)

	// The terminal: echo hi.
	step("open the session", chromedp.Navigate(base+"#/s/"+id))
	wait("the terminal", `document.getElementById('term-status').textContent === 'Connected.' && document.querySelector('#terminal .xterm-rows') !== null`, time.Minute)
	step("type", chromedp.Click(chromedp.ID("terminal")), typeKeys("echo hi\r"))
	wait("hi", termHasLine("hi"), time.Minute)
	wait("running", stateIs("running"), 30*time.Second)
	shot(t, ctx, "session")

	// Park from the page; the shell's stream stays, paused.
	step("park", chromedp.Click(chromedp.ID("s-park")))
	wait("parked", stateIs("parked"), 3*time.Minute)
	wait("the terminal paused", `document.getElementById('term-status').textContent.includes('typing wakes it')`, time.Minute)
	shot(t, ctx, "parked")
	// Typing into the parked session's terminal wakes it.
	step("type into the parked session", chromedp.Click(chromedp.ID("terminal")), typeKeys("echo woke\r"))
	wait("woke", termHasLine("woke"), 3*time.Minute)
	wait("running again", stateIs("running"), time.Minute)

	// Upload a file, see it listed, download it.
	content := fmt.Sprintf("dashboard upload %d\n", time.Now().UnixNano())
	local := filepath.Join(t.TempDir(), "up.txt")
	if err := os.WriteFile(local, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	step("upload", chromedp.SetUploadFiles(chromedp.ID("upload-file"), []string{local}), chromedp.Click(chromedp.ID("upload-submit")))
	wait("uploaded", `document.getElementById('banner').textContent === 'Uploaded /tmp/up.txt.'`, time.Minute)
	wait("listed", `Array.from(document.querySelectorAll('#files a')).some(a => a.textContent === 'up.txt')`, 30*time.Second)
	shot(t, ctx, "files")

	// The pages the policy limits, as the engineer ann: the templates
	// are listed; a session's commands, the audit log and the nodes are
	// admins' (audit.read, nodes.admin), and each page says so.
	wait("the commands refused", `document.getElementById('commands').textContent.includes('does not let you read the audit log')`, 30*time.Second)
	step("templates", chromedp.Navigate(base+"#/templates"))
	wait("the templates page", `!document.getElementById('view-templates').hidden && document.getElementById('t-error').hidden && (document.querySelectorAll('#templates tbody tr').length > 0 || !document.getElementById('t-empty').hidden)`, 30*time.Second)
	shot(t, ctx, "templates")
	step("audit as ann", chromedp.Navigate(base+"#/audit"))
	wait("the audit log refused", `!document.getElementById('a-error').hidden && document.getElementById('a-error').textContent.startsWith('Not allowed')`, 30*time.Second)
	shot(t, ctx, "audit-refused")
	step("nodes as ann", chromedp.Navigate(base+"#/nodes"))
	wait("the nodes refused", `!document.getElementById('n-error').hidden && document.getElementById('n-error').textContent.startsWith('Not allowed')`, 30*time.Second)
	step("back to the session", chromedp.Navigate(base+"#/s/"+id))
	wait("the terminal again", `document.getElementById('term-status').textContent === 'Connected.'`, time.Minute)
	step("download", chromedp.Click(chromedp.Search(`//table[@id="files"]//a[text()="up.txt"]`)))
	var got []byte
	deadline := time.Now().Add(time.Minute)
	for {
		got, err = os.ReadFile(filepath.Join(downloads, "up.txt"))
		if err == nil && string(got) == content || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if string(got) != content {
		t.Fatalf("downloaded %q (%v), want %q", got, err, content)
	}

	// A WebSocket with ann's cookie from another origin is refused, and
	// so is one without an Origin.
	cookie := signInHTTP(t, e.addr, ann)
	for _, origin := range []string{"http://evil.example", ""} {
		h := http.Header{"Cookie": {cookie}}
		if origin != "" {
			h.Set("Origin", origin)
		}
		c, resp, err := websocket.Dial(context.Background(), "ws://"+e.addr+"/v1/sessions/"+id+"/exec/ws", &websocket.DialOptions{HTTPHeader: h})
		if err == nil {
			c.CloseNow()
			t.Fatalf("a WebSocket from origin %q with ann's cookie was accepted", origin)
		}
		if resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("a WebSocket from origin %q: %v (%v), want 403", origin, err, resp)
		}
	}

	// A server restart: the page says it cannot reach the server, then
	// goes on signed in (the cookie is sealed with HOME/dashboard.key);
	// the terminal, cut, opens a new shell at the next key.
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Fatalf("stop the server: %v", err)
	}
	wait("the server unreachable", `document.getElementById('banner').textContent.includes('cannot be reached')`, time.Minute)
	wait("the terminal cut", `document.getElementById('term-status').textContent.includes('Press a key')`, time.Minute)
	shot(t, ctx, "unreachable")
	e.startServer()
	wait("back", `document.getElementById('banner').hidden && `+stateIs("running"), 2*time.Minute)
	step("type after the restart", chromedp.Click(chromedp.ID("terminal")), typeKeys("echo back\r"))
	wait("back in a new shell", termHasLine("back"), 2*time.Minute)

	// The session removed while its page is open: the page says so.
	e.ok(nil, "rm", id)
	wait("gone", `document.getElementById('banner').textContent.includes('no longer exists')`, time.Minute)
	shot(t, ctx, "removed")

	// Sign out: the page says so, and its cookie reaches the API no more.
	step("sign out", chromedp.Click(chromedp.ID("signout")))
	wait("the sign-in form", `!document.getElementById('view-signin').hidden && document.getElementById('signin-error').textContent === 'Signed out.'`, 30*time.Second)
	status := evalIn[int](t, ctx, `fetch('/v1/sessions').then(r => r.status)`, chromedp.EvalAwaitPromise)
	if status != http.StatusUnauthorized {
		t.Fatalf("GET /v1/sessions after sign-out: %d, want 401", status)
	}
	shot(t, ctx, "signedout")

	// The admin: the audit log filtered by ann's session, each entry
	// verified against the signed checkpoint; the nodes, cordoned and
	// uncordoned from the page.
	// Signed out on the removed session's page: back to the list first,
	// so that the sign-in lands there.
	step("to the list", chromedp.Navigate(base+"#/"))
	wait("the sign-in form again", `!document.getElementById('view-signin').hidden`, 30*time.Second)
	evalIn[string](t, ctx, `document.getElementById('signin-token').value = ''`)
	step("sign in as the admin", chromedp.SendKeys(chromedp.ID("signin-token"), e.userToken()), chromedp.Click(chromedp.ID("signin-submit")))
	wait("the admin's list", `!document.getElementById('view-list').hidden`, 30*time.Second)
	step("audit", chromedp.Navigate(base+"#/audit"))
	step("filter by session", chromedp.SendKeys(chromedp.ID("audit-session"), id), chromedp.Click(chromedp.Search(`//form[@id="audit-form"]//button`)))
	wait("the session's entries, verified", `Array.from(document.querySelectorAll('#audit tbody tr')).some(tr => tr.textContent.includes('session.pty')) && Array.from(document.querySelectorAll('#audit td.verify')).some(td => td.dataset.verified === 'yes') && !Array.from(document.querySelectorAll('#audit td.verify')).some(td => td.textContent.startsWith('NOT'))`, time.Minute)
	shot(t, ctx, "audit")
	step("nodes", chromedp.Navigate(base+"#/nodes"))
	wait("the node", `document.querySelectorAll('#nodes tbody tr').length > 0 && document.getElementById('n-error').hidden`, 30*time.Second)
	step("cordon", chromedp.Click(chromedp.Search(`//table[@id="nodes"]//button[text()="Cordon"]`)))
	wait("cordoned", `!!document.querySelector('#nodes td[data-state="cordoned"]')`, 30*time.Second)
	shot(t, ctx, "nodes")
	step("uncordon", chromedp.Click(chromedp.Search(`//table[@id="nodes"]//button[text()="Uncordon"]`)))
	wait("uncordoned", `!document.querySelector('#nodes td[data-state="cordoned"]')`, 30*time.Second)

}

// signInHTTP signs in to the dashboard with token as a page would and
// returns the Cookie header that carries the sign-in.
func signInHTTP(t *testing.T, addr, token string) string {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+addr+"/dash/signin", strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "http://"+addr)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	for _, c := range resp.Cookies() {
		if c.Name == dashboard.CookieName {
			return c.Name + "=" + c.Value
		}
	}
	t.Fatalf("sign-in: %d %s: no cookie", resp.StatusCode, b.String())
	return ""
}

// typeKeys types text into the focused element as a person would: one
// keyDown (with its text) and one keyUp per key. (chromedp.KeyEvent also
// sends a char event, which xterm.js takes as a second key press.)
func typeKeys(text string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for _, r := range text {
			down := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyDown, Key: string(r), Text: string(r)}
			if r == '\r' {
				down.Key, down.Code, down.WindowsVirtualKeyCode = "Enter", "Enter", 13
			}
			if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, down); err != nil {
				return err
			}
			up := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyUp, Key: down.Key, Code: down.Code, WindowsVirtualKeyCode: down.WindowsVirtualKeyCode}
			if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, up); err != nil {
				return err
			}
		}
		return nil
	})
}

// evalIn evaluates a JavaScript expression in the page.
func evalIn[T any](t *testing.T, ctx context.Context, expr string, opts ...chromedp.EvaluateOption) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, opts...))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}
