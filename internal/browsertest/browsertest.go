// Package browsertest starts a headless chromium under chromedp: how the
// dashboard's tests (cmd/cove) and covebench's dashboard rows drive the
// web dashboard. Each browser has a profile of its own, made here and
// removed when it stops.
package browsertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"

	"github.com/cove-dev/cove/internal/testenv"
)

// names are the browsers looked for on PATH, in order: Debian's first.
var names = []string{"chromium", "chromium-browser", "google-chrome"}

// ErrNoChromium is Find's error when no browser is on PATH.
var ErrNoChromium = errors.New("no chromium on PATH (make deps installs Debian's)")

// Find returns the path of the first of chromium, chromium-browser and
// google-chrome on PATH, or ErrNoChromium.
func Find() (string, error) {
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", ErrNoChromium
}

// Options say how to start a browser. The zero value starts one that
// logs nothing and refuses downloads.
type Options struct {
	// Downloads, if set, is the directory the browser saves downloads
	// to; without it the browser's default applies.
	Downloads string
	// Logf, if set, gets chromedp's log of the browser's protocol
	// errors.
	Logf func(format string, args ...any)
}

// Start starts bin headless at 1280×900 (no sandbox: CI runs as root;
// no GPU) with a fresh profile, and opens its tab on about:blank. It
// returns the tab's context, which later calls run under: the tab lives
// until stop, or until ctx ends. stop ends the browser and removes its
// profile.
func Start(ctx context.Context, bin string, o Options) (tab context.Context, stop func(), err error) {
	profile, err := os.MkdirTemp("", "cove-chromium-")
	if err != nil {
		return nil, nil, fmt.Errorf("browsertest: profile: %w", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.UserDataDir(profile),
		chromedp.NoSandbox, chromedp.WindowSize(1280, 900), chromedp.Flag("disable-gpu", true))
	actx, cancelA := chromedp.NewExecAllocator(ctx, opts...)
	var copts []chromedp.ContextOption
	if o.Logf != nil {
		copts = append(copts, chromedp.WithLogf(o.Logf))
	}
	tab, cancelB := chromedp.NewContext(actx, copts...)
	stop = func() {
		cancelB()
		cancelA()
		os.RemoveAll(profile)
	}
	if o.Downloads != "" {
		_, err = chromedp.CallBrowser(tab, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
			Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: o.Downloads})
	}
	if err == nil {
		// The first action makes the tab, which lives as long as the
		// context of that call: the tab's own, with no timeout.
		err = chromedp.Do(tab, chromedp.Navigate("about:blank"))
	}
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("browsertest: start %s: %w", bin, err)
	}
	return tab, stop, nil
}

// Chromium returns Find's browser, or skips t (fails it under CI: see
// testenv) when there is none. A test calls it before it sets up what
// the browser is for.
func Chromium(t testing.TB) string {
	t.Helper()
	bin, err := Find()
	if err != nil {
		testenv.Skipf(t, "%v", err)
	}
	return bin
}

// Tab starts bin as Start does for test t, its log going to t.Logf and
// its downloads to downloads ("": none), and returns its tab's context.
// The browser stops when t ends; one that does not start fails t.
func Tab(t testing.TB, bin, downloads string) context.Context {
	t.Helper()
	tab, stop, err := Start(context.Background(), bin, Options{Downloads: downloads, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return tab
}
