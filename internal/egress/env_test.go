package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// secret is the credential value the tests inject; it must never show up
// anywhere but in the upstream's request.
const secret = "Bearer s3cr3t-f0r-tests-only"

// env is a proxy on a loopback listener per session, with upstreams known
// by test names ("api.example.test:443") that the proxy's DialContext maps to
// httptest servers.
type env struct {
	t        testing.TB
	ca       *CA // the proxy's CA (what guests trust)
	upstream *CA // signs the upstreams' certificates (the proxy's UpstreamRoots)
	proxy    *Proxy
	log      *lockedBuffer

	mu        sync.Mutex
	names     map[string]string // guarded by mu; test name:port → loopback addr
	decisions []Decision        // guarded by mu
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newEnv(t testing.TB, tweak func(*Config)) *env {
	t.Helper()
	e := &env{t: t, log: &lockedBuffer{}, names: make(map[string]string)}
	var err error
	if e.ca, err = LoadOrCreateCA(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if e.upstream, err = LoadOrCreateCA(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(e.upstream.Certificate())
	cfg := Config{
		CA:            e.ca,
		UpstreamRoots: roots,
		Log:           slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnDecision: func(d Decision) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.decisions = append(e.decisions, d)
		},
		DialContext: e.dial,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	if e.proxy, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	return e
}

// dial maps test names to their servers; loopback IP literals are dialed
// as they are; any other name does not resolve.
func (e *env) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	e.mu.Lock()
	real, ok := e.names[addr]
	e.mu.Unlock()
	if !ok {
		host, _, _ := net.SplitHostPort(addr)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}}
		}
		real = addr
	}
	var d net.Dialer
	return d.DialContext(ctx, network, real)
}

// serve starts a loopback listener whose connections the proxy serves as
// session s's; it returns the proxy URL.
func (e *env) serve(s *Session) *url.URL {
	e.t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { e.proxy.ServeConn(ctx, c, s) })
		}
	})
	e.t.Cleanup(func() {
		l.Close()
		cancel()
		wg.Wait()
	})
	return &url.URL{Scheme: "http", Host: l.Addr().String()}
}

// client is a guest's HTTP client: through the proxy, trusting the proxy's
// CA only.
func (e *env) client(proxy *url.URL) *http.Client {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(e.ca.CertPEM()) {
		e.t.Fatal("CA PEM does not parse")
	}
	tr := &http.Transport{Proxy: http.ProxyURL(proxy), TLSClientConfig: &tls.Config{RootCAs: roots}}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// tlsUpstream starts an HTTPS server for name (a certificate from the
// upstream CA, or httptest's own when trusted is false) reached as name:443.
func (e *env) tlsUpstream(name string, h http.Handler, trusted bool) *httptest.Server {
	e.t.Helper()
	s := httptest.NewUnstartedServer(h)
	if trusted {
		leaf, err := e.upstream.leaf(name, time.Now())
		if err != nil {
			e.t.Fatal(err)
		}
		s.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
	}
	s.StartTLS()
	e.t.Cleanup(s.Close)
	e.mu.Lock()
	e.names[name+":443"] = s.Listener.Addr().String()
	e.mu.Unlock()
	return s
}

// httpUpstream starts a plain HTTP server reached as name:80.
func (e *env) httpUpstream(name string, h http.Handler) *httptest.Server {
	s := httptest.NewServer(h)
	e.t.Cleanup(s.Close)
	e.mu.Lock()
	e.names[name+":80"] = s.Listener.Addr().String()
	e.mu.Unlock()
	return s
}

func (e *env) allDecisions() []Decision {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Decision(nil), e.decisions...)
}

// lastDecision waits for a decision matching ok and returns it.
func (e *env) waitDecision(what string, ok func(Decision) bool) Decision {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, d := range e.allDecisions() {
			if ok(d) {
				return d
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no decision %s among %+v", what, e.allDecisions())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// assertNoSecret fails if the secret shows in the log, a decision or any of
// the texts given (response bodies, errors the client saw).
func (e *env) assertNoSecret(texts ...string) {
	e.t.Helper()
	token := strings.TrimPrefix(secret, "Bearer ")
	if strings.Contains(e.log.String(), token) {
		e.t.Error("the secret is in the log")
	}
	if d := fmt.Sprintf("%+v", e.allDecisions()); strings.Contains(d, token) {
		e.t.Error("the secret is in a decision")
	}
	for i, s := range texts {
		if strings.Contains(s, token) {
			e.t.Errorf("the secret is in text %d the guest saw: %q", i, s)
		}
	}
}

// headerSeen records one header of each request an upstream receives.
type headerSeen struct {
	mu   sync.Mutex
	vals []string // guarded by mu
}

func (h *headerSeen) handler(name, header string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.vals = append(h.vals, r.Header.Get(header))
		h.mu.Unlock()
		fmt.Fprintf(w, "hello from %s %s %s", name, r.Method, r.URL.Path)
	})
}

func (h *headerSeen) last() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.vals) == 0 {
		return "<no request>"
	}
	return h.vals[len(h.vals)-1]
}

func (h *headerSeen) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.vals)
}

// get does a request and returns status and body ("" and the error text
// when the request failed).
func get(c *http.Client, method, u string, hdr http.Header) (int, string, error) {
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return 0, "", err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error(), err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func mustRules(t testing.TB, specs ...string) Rules {
	t.Helper()
	var rs Rules
	for _, s := range specs {
		r, err := ParseRule(s)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	return rs
}

func staticCreds(cs ...Credential) func(context.Context) ([]Credential, error) {
	return func(context.Context) ([]Credential, error) { return cs, nil }
}

var errNoCreds = errors.New("credential store unavailable")
