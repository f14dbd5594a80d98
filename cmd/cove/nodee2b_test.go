package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// A session-serving node's handler (nodeE2B) gives a call relayed for
// the E2B API to the node's own E2B API, which checks the API key and
// signs with the node's key (HOME/e2b.key, 0600), and any other call to
// cove's API.
func TestFakeNodeE2BHandler(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mgr, err := session.New(session.Config{Store: st, Driver: fake.New(), Images: fitImages{dir}, Dir: filepath.Join(dir, "sessions"),
		TemplateDir: filepath.Join(dir, "templates"), DefaultMemoryMiB: 64, Node: "node-n", Linked: true})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	coveAPI := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "cove api") })
	h, stop, err := nodeE2B(ctx, nodeE2BConfig{Home: dir, Node: "node-n", Sessions: mgr, Store: st,
		Authn: identity.NewAuthenticator(identity.AuthConfig{Store: st}), CoveAPI: coveAPI,
		Authorize: (&apiserver.PolicyGate{Policy: policy.New(), Records: st}).Authorize})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	call := func(api string) (int, string) {
		req := httptest.NewRequest("GET", "/sandboxes/s-1", nil)
		if api != "" {
			req.Header.Set(nodelink.HeaderAPI, api)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code, w.Body.String()
	}
	if code, body := call(""); code != http.StatusOK || body != "cove api" {
		t.Errorf("a call for cove's API: %d %q", code, body)
	}
	if code, body := call(nodelink.APIE2B); code != http.StatusUnauthorized || !strings.Contains(body, `"code":401`) {
		t.Errorf("a relayed E2B call with no API key: %d %s, want the E2B API's 401", code, body)
	}
	fi, err := os.Stat(filepath.Join(dir, "e2b.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the node's e2b.key: %v, %v; want it made, 0600", fi, err)
	}
}
