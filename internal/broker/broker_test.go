package broker_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/broker"
	"github.com/cove-dev/cove/internal/egress"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// world is a real store, a real proxy behind the broker on a loopback
// listener (each accepted connection is served for the session the test
// names, as the session manager does for a guest's stream), and an HTTPS
// upstream that answers as example.com and says which credential came.
type world struct {
	st      *sqlite.Store
	b       *broker.Broker
	up      *httptest.Server
	port    string
	caPool  *x509.CertPool
	serveAs atomic.Pointer[func(net.Conn)] // how the listener serves a connection (setServe)
	proxy   *url.URL
	creds   map[string][]egress.Credential // by owner
	// upstreamSaw, if set, is called with each request the upstream gets.
	upstreamSaw atomic.Pointer[func(*http.Request)]
}

func newWorld(t *testing.T, authorize func(context.Context, store.Session, egress.Target, bool, string) (bool, string)) *world {
	return newAuditedWorld(t, authorize, nil)
}

// newAuditedWorld is newWorld with the broker's decisions going to the
// audit log aud, as cove server wires it (nil: none).
func newAuditedWorld(t *testing.T, authorize func(context.Context, store.Session, egress.Target, bool, string) (bool, string), aud broker.Auditor) *world {
	t.Helper()
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	w := &world{st: st, creds: map[string][]egress.Credential{}}
	w.up = httptest.NewTLSServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if saw := w.upstreamSaw.Load(); saw != nil {
			(*saw)(r)
		}
		fmt.Fprintf(rw, "auth=%q", r.Header.Get("Authorization"))
	}))
	t.Cleanup(w.up.Close)
	u, _ := url.Parse(w.up.URL)
	w.port = u.Port()
	roots := x509.NewCertPool()
	roots.AddCert(w.up.Certificate())
	ca, err := egress.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w.caPool = x509.NewCertPool()
	w.caPool.AppendCertsFromPEM(ca.CertPEM())
	var d net.Dialer
	pcfg := egress.Config{CA: ca, UpstreamRoots: roots, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, u.Host)
		}}
	if aud != nil {
		pcfg.OnDecision = broker.AuditDenials(aud, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}
	proxy, err := egress.New(pcfg)
	if err != nil {
		t.Fatal(err)
	}
	operator, _ := egress.ParseRule("operator.example.com")
	w.b = broker.New(broker.Config{Proxy: proxy, CA: ca, Store: st, Credentials: w, Operator: egress.Rules{operator},
		Authorize: authorize, Audit: aud, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go (*w.serveAs.Load())(c)
		}
	}()
	w.proxy, _ = url.Parse("http://" + ln.Addr().String())
	return w
}

// setServe sets how the listener serves the connections accepted next.
func (w *world) setServe(fn func(net.Conn)) { w.serveAs.Store(&fn) }

// For implements broker.Credentials.
func (w *world) For(_ context.Context, owner, template string) ([]egress.Credential, error) {
	return append(append([]egress.Credential(nil), w.creds[owner]...), w.creds["template:"+template]...), nil
}

// get asks for https://host:PORT/ through the proxy, as session id.
func (w *world) get(t *testing.T, id, host string) (int, string) {
	t.Helper()
	w.setServe(func(c net.Conn) { w.b.Serve(context.Background(), c, id) })
	return w.do(t, host)
}

func (w *world) do(t *testing.T, host string) (int, string) {
	t.Helper()
	tr := &http.Transport{Proxy: http.ProxyURL(w.proxy), TLSClientConfig: &tls.Config{RootCAs: w.caPool}, DisableKeepAlives: true}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+":"+w.port+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		// A refused CONNECT comes back as an error carrying the status.
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (w *world) session(t *testing.T, s store.Session) {
	t.Helper()
	s.State = "running"
	if err := w.st.CreateSession(t.Context(), &s); err != nil {
		t.Fatal(err)
	}
}

// A session reaches what its own rules, its template's and the operator's
// allow, with its owner's credentials (and its template's), and nothing
// else; a session with no record (a pool's clone not claimed yet) reaches
// nothing.
func TestRulesAndCredentialsComeFromTheRecord(t *testing.T) {
	w := newWorld(t, nil)
	ctx := t.Context()
	if err := w.st.CreateTemplate(ctx, &store.Template{Name: "web", State: "ready", Owner: "u_tpl", Allow: []string{"tpl.example.com:" + w.port}}); err != nil {
		t.Fatal(err)
	}
	w.creds["u_alice"] = []egress.Credential{{Name: "gh", Hosts: []string{"own.example.com"}, Header: "Authorization", Value: "Bearer alice"}}
	w.creds["u_tpl"] = []egress.Credential{{Name: "gh", Hosts: []string{"own.example.com", "tpl.example.com"}, Header: "Authorization", Value: "Bearer template-owner"}}
	w.creds["template:web"] = []egress.Credential{{Name: "tplsecret", Hosts: []string{"tpl.example.com"}, Header: "Authorization", Value: "Bearer web-template"}}
	w.session(t, store.Session{ID: "s-alice", Owner: "u_alice", Template: "web", Allow: []string{"own.example.com:" + w.port}})

	for _, c := range []struct {
		host string
		code int
		body string
	}{
		{"own.example.com", 200, `auth="Bearer alice"`},        // its own rule, its owner's credential
		{"tpl.example.com", 200, `auth="Bearer web-template"`}, // its template's rule and secret, never the template owner's
		{"other.example.com", 0, "not allowed"},                // nothing allows it
		{"operator.example.com", 0, "not allowed"},             // the operator's rule is for ports 80 and 443 only
	} {
		code, body := w.get(t, "s-alice", c.host)
		if code != c.code || !strings.Contains(body, c.body) {
			t.Errorf("%s: %d %q, want %d with %q", c.host, code, body, c.code, c.body)
		}
	}
	// No record: nothing at all (positive control above: the same host
	// is reached with the record).
	if code, body := w.get(t, "s-unclaimed", "own.example.com"); code != 0 || !strings.Contains(body, "not allowed") {
		t.Errorf("a session with no record: %d %q, want a 403", code, body)
	}
}

// A revoked session's next connection, and the next request on a
// connection already open, are refused.
func TestRevokedSessionIsRefused(t *testing.T) {
	w := newWorld(t, nil)
	w.session(t, store.Session{ID: "s-1", Owner: "u_a", Allow: []string{"own.example.com:" + w.port}})
	if code, _ := w.get(t, "s-1", "own.example.com"); code != 200 {
		t.Fatalf("before the revoke: %d, want 200", code)
	}
	// One connection kept open across the revoke.
	w.setServe(func(c net.Conn) { w.b.Serve(context.Background(), c, "s-1") })
	tr := &http.Transport{Proxy: http.ProxyURL(w.proxy), TLSClientConfig: &tls.Config{RootCAs: w.caPool}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	u := "https://own.example.com:" + w.port + "/"
	resp, err := client.Get(u)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("kept-alive request before the revoke: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if _, err := w.st.RevokeSessionTokens(t.Context(), "s-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, err = client.Get(u)
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), "revoked") {
			t.Errorf("kept-alive request after the revoke: %d %q, want 403 saying revoked", resp.StatusCode, b)
		}
	}
	if code, body := w.get(t, "s-1", "own.example.com"); code != 0 || !strings.Contains(body, "not allowed") {
		t.Errorf("new connection after the revoke: %d %q, want it refused", code, body)
	}
}

// The policy hook has the last word, both ways.
func TestAuthorizeHasTheLastWord(t *testing.T) {
	w := newWorld(t, func(_ context.Context, rec store.Session, tg egress.Target, ok bool, why string) (bool, string) {
		switch tg.Host {
		case "forbidden.example.com":
			return false, "forbidden by policy \"no\""
		case "permitted.example.com":
			return true, "permitted by policy \"yes\""
		}
		return ok, why
	})
	w.session(t, store.Session{ID: "s-1", Owner: "u_a", Allow: []string{"forbidden.example.com:" + w.port, "own.example.com:" + w.port}})
	if code, body := w.get(t, "s-1", "forbidden.example.com"); code != 0 || !strings.Contains(body, "not allowed") {
		t.Errorf("allowed by the rules, forbidden by the policy: %d %q", code, body)
	}
	// Permitted, and then stopped only by the guard that keeps what no
	// exact rule names off private addresses (the upstream is on
	// loopback): a policy's permit widens the rules to public addresses.
	if code, body := w.get(t, "s-1", "permitted.example.com"); code != http.StatusForbidden || !strings.Contains(body, "non-public address") {
		t.Errorf("denied by the rules, permitted by the policy: %d %q", code, body)
	}
	if code, _ := w.get(t, "s-1", "own.example.com"); code != 200 {
		t.Errorf("allowed by the rules, the policy agreeing: %d", code)
	}
}

// A template's build reaches what the template allows, with its owner's
// credentials.
func TestBuildUsesTheTemplate(t *testing.T) {
	w := newWorld(t, nil)
	if err := w.st.CreateTemplate(t.Context(), &store.Template{Name: "web", State: "building", Owner: "u_tpl", Allow: []string{"tpl.example.com:" + w.port}}); err != nil {
		t.Fatal(err)
	}
	w.creds["u_tpl"] = []egress.Credential{{Name: "gh", Hosts: []string{"tpl.example.com"}, Header: "Authorization", Value: "Bearer template-owner"}}
	w.setServe(func(c net.Conn) { w.b.ServeBuild(context.Background(), c, "web") })
	if code, body := w.do(t, "tpl.example.com"); code != 200 || body != `auth="Bearer template-owner"` {
		t.Errorf("build: %d %q, want the template owner's credential", code, body)
	}
	if code, body := w.do(t, "own.example.com"); code != 0 || !strings.Contains(body, "not allowed") {
		t.Errorf("build, a host the template does not allow: %d %q", code, body)
	}
}
