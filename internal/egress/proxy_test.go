package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestNewNeedsACA(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without a CA succeeded")
	}
}

func TestPlainHTTPIsForwarded(t *testing.T) {
	e := newEnv(t, nil)
	var seen headerSeen
	e.httpUpstream("plain.example.test", seen.handler("plain", "X-Test"))
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "plain.example.test")}
	c := e.client(e.serve(s))

	code, body, err := get(c, "GET", "http://plain.example.test/hello", http.Header{"X-Test": {"kept"}, "Proxy-Authorization": {"Basic Zm9v"}})
	if err != nil || code != 200 || body != "hello from plain GET /hello" {
		t.Fatalf("GET = %d %q %v", code, body, err)
	}
	if seen.last() != "kept" {
		t.Fatalf("upstream saw X-Test %q", seen.last())
	}
	d := e.waitDecision("allowing the GET", func(d Decision) bool { return d.Allowed && d.Path == "/hello" })
	if d.Session != "s1" || d.Owner != "alice" || d.Method != "GET" || d.Host != "plain.example.test" || d.Port != 80 || !strings.Contains(d.Reason, `rule "plain.example.test"`) {
		t.Fatalf("decision %+v", d)
	}
}

func TestHTTPSIsInterceptedAndVerified(t *testing.T) {
	e := newEnv(t, nil)
	var seen headerSeen
	e.tlsUpstream("api.example.test", seen.handler("api", "X-Test"), true)
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "api.example.test")}
	c := e.client(e.serve(s))
	for i := range 3 { // keep-alive: several requests in one tunnel
		code, body, err := get(c, "GET", "https://api.example.test/v"+strconv.Itoa(i), http.Header{"X-Test": {"x"}})
		if err != nil || code != 200 || body != fmt.Sprintf("hello from api GET /v%d", i) {
			t.Fatalf("GET %d = %d %q %v", i, code, body, err)
		}
	}
	connects := 0
	for _, d := range e.allDecisions() {
		if d.Method == "CONNECT" {
			connects++
		}
	}
	if connects != 1 || seen.count() != 3 {
		t.Fatalf("%d CONNECTs for %d requests, want one tunnel for 3 (decisions %+v)", connects, seen.count(), e.allDecisions())
	}
}

func TestUntrustedUpstreamIs502(t *testing.T) {
	e := newEnv(t, nil)
	var seen headerSeen
	// httptest's own certificate: not in the proxy's UpstreamRoots.
	e.tlsUpstream("bad.example.test", seen.handler("bad", "Authorization"), false)
	e.tlsUpstream("good.example.test", seen.handler("good", "Authorization"), true)
	cred := Credential{Name: "tok", Hosts: []string{"bad.example.test"}, Header: "Authorization", Value: secret}
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "bad.example.test", "good.example.test"), Credentials: staticCreds(cred)}
	c := e.client(e.serve(s))
	code, body, err := get(c, "GET", "https://bad.example.test/", nil)
	if err != nil || code != http.StatusBadGateway || !strings.Contains(body, "not trusted") || !strings.Contains(body, "--upstream-ca") {
		t.Fatalf("untrusted upstream: %d %q %v", code, body, err)
	}
	if seen.count() != 0 {
		t.Fatal("the untrusted upstream received a request (with the credential)")
	}
	// Positive control: a trusted upstream behind the same proxy answers.
	if code, body, err := get(c, "GET", "https://good.example.test/", nil); err != nil || code != 200 {
		t.Fatalf("trusted upstream: %d %q %v", code, body, err)
	}
	e.assertNoSecret(body)
}

func TestCredentialsAreInjectedOverTLSOnly(t *testing.T) {
	e := newEnv(t, nil)
	var api, other, plain headerSeen
	e.tlsUpstream("api.example.test", api.handler("api", "Authorization"), true)
	e.tlsUpstream("other.example.test", other.handler("other", "Authorization"), true)
	e.httpUpstream("api.example.test", plain.handler("plain", "Authorization"))
	cred := Credential{Name: "gh-token", Hosts: []string{"api.example.test"}, Header: "authorization", Value: secret}
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "api.example.test", "other.example.test"), Credentials: staticCreds(cred)}
	c := e.client(e.serve(s))
	var seenTexts []string

	// Over TLS to its host: injected, replacing what the guest sent.
	code, body, err := get(c, "GET", "https://api.example.test/user", http.Header{"Authorization": {"Bearer guest-chosen"}})
	seenTexts = append(seenTexts, body)
	if err != nil || code != 200 {
		t.Fatalf("api: %d %q %v", code, body, err)
	}
	if api.last() != secret {
		t.Fatalf("api upstream saw Authorization %q, want the injected credential", api.last())
	}
	d := e.waitDecision("injecting", func(d Decision) bool { return d.Path == "/user" })
	if d.Credential != "gh-token" || !d.Allowed {
		t.Fatalf("decision %+v, want credential gh-token", d)
	}

	// Another host: not injected; the guest's own header passes.
	code, body, err = get(c, "GET", "https://other.example.test/x", http.Header{"Authorization": {"Bearer guest-chosen"}})
	seenTexts = append(seenTexts, body)
	if err != nil || code != 200 || other.last() != "Bearer guest-chosen" {
		t.Fatalf("other: %d %q %v, upstream saw %q", code, body, err, other.last())
	}

	// Plain HTTP to the credential's host: forwarded, credential withheld
	// and the withholding recorded.
	code, body, err = get(c, "GET", "http://api.example.test/plain", nil)
	seenTexts = append(seenTexts, body)
	if err != nil || code != 200 || plain.last() != "" {
		t.Fatalf("plain: %d %q %v, upstream saw Authorization %q", code, body, err, plain.last())
	}
	d = e.waitDecision("withholding", func(d Decision) bool { return d.Path == "/plain" })
	if d.Credential != "" || !strings.Contains(d.Reason, "credential gh-token withheld over plain http") {
		t.Fatalf("plain decision %+v", d)
	}

	// A denial's body names the target and the reason, not the secret.
	code, body, _ = get(c, "GET", "https://api.example.test:8443/", nil)
	seenTexts = append(seenTexts, body)
	if code == 200 {
		t.Fatal("port 8443 allowed")
	}
	e.assertNoSecret(seenTexts...)
	// Positive control of assertNoSecret: it sees the secret where it is.
	probe := &env{t: &recordingTB{TB: t}, log: &lockedBuffer{}}
	fmt.Fprint(probe.log, secret)
	probe.assertNoSecret()
	if !probe.t.(*recordingTB).failed {
		t.Fatal("assertNoSecret missed the secret in a log")
	}
}

// recordingTB records Error calls instead of failing the test.
type recordingTB struct {
	testing.TB
	failed bool
}

func (r *recordingTB) Helper()                      {}
func (r *recordingTB) Error(...any)                 { r.failed = true }
func (r *recordingTB) Errorf(string, ...any)        { r.failed = true }
func (r *recordingTB) Fatalf(f string, args ...any) { r.TB.Fatalf(f, args...) }

func TestCredentialsAreResolvedPerRequest(t *testing.T) {
	e := newEnv(t, nil)
	var api headerSeen
	e.tlsUpstream("api.example.test", api.handler("api", "Authorization"), true)
	var mu sync.Mutex
	var creds []Credential
	var fail bool
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "api.example.test"), Credentials: func(context.Context) ([]Credential, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return nil, errNoCreds
		}
		return creds, nil
	}}
	c := e.client(e.serve(s))
	if _, _, err := get(c, "GET", "https://api.example.test/", nil); err != nil || api.last() != "" {
		t.Fatalf("before the secret: %v, upstream saw %q", err, api.last())
	}
	mu.Lock()
	creds = []Credential{{Name: "tok", Hosts: []string{"*.example.test"}, Header: "Authorization", Value: secret}}
	mu.Unlock()
	if _, _, err := get(c, "GET", "https://api.example.test/", nil); err != nil || api.last() != secret {
		t.Fatalf("after the secret was set, in the same tunnel: %v, upstream saw %q", err, api.last())
	}
	mu.Lock()
	fail = true
	mu.Unlock()
	n := api.count()
	code, body, err := get(c, "GET", "https://api.example.test/", nil)
	if err != nil || code != http.StatusBadGateway || !strings.Contains(body, "credentials could not be resolved") || api.count() != n {
		t.Fatalf("credential store failing: %d %q %v; upstream asked %d more times", code, body, err, api.count()-n)
	}
}

func TestDenials(t *testing.T) {
	e := newEnv(t, nil)
	var api, plain headerSeen
	e.tlsUpstream("api.example.test", api.handler("api", "X"), true)
	e.tlsUpstream("evil.example.test", api.handler("evil", "X"), true)
	e.httpUpstream("evil.example.test", plain.handler("evil", "X"))
	ipServer := e.httpUpstream("ip.example.test", plain.handler("ip", "X"))
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "GET,HEAD api.example.test/repos/", "api.example.test:22")}
	c := e.client(e.serve(s))

	cases := []struct {
		name, method, url string
		host              string
		port              int
		want              string // in the error or body, and in the decision's reason
	}{
		{"CONNECT to a host not allowed", "GET", "https://evil.example.test/", "evil.example.test", 443, "host evil.example.test is not allowed"},
		{"plain request to a host not allowed", "GET", "http://evil.example.test/", "evil.example.test", 80, "host evil.example.test is not allowed"},
		{"direct IP", "GET", ipServer.URL + "/", "127.0.0.1", ipServer.Listener.Addr().(*net.TCPAddr).Port, "direct IP 127.0.0.1"},
		{"CONNECT to port 80", "GET", "https://api.example.test:80/repos/x", "api.example.test", 80, "CONNECT is only for TLS"},
		{"CONNECT to a port not allowed", "GET", "https://api.example.test:8443/repos/x", "api.example.test", 8443, "port 8443 is not allowed"},
		{"method denied in the tunnel", "POST", "https://api.example.test/repos/x", "api.example.test", 443, "method POST is not allowed"},
		{"path denied in the tunnel", "GET", "https://api.example.test/admin", "api.example.test", 443, "path /admin is not allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := api.count() + plain.count()
			code, body, _ := get(c, tc.method, tc.url, nil)
			if code == 200 || !strings.Contains(body, "not allowed") && !strings.Contains(body, "only for TLS") {
				t.Fatalf("got %d %q, want a refusal", code, body)
			}
			if code != 0 && code != http.StatusForbidden {
				t.Fatalf("status %d, want 403", code)
			}
			if api.count()+plain.count() != n {
				t.Fatal("an upstream was asked")
			}
			d := e.waitDecision(tc.want, func(d Decision) bool {
				return strings.Contains(d.Reason, tc.want) && d.Host == tc.host && d.Port == tc.port
			})
			if d.Allowed || d.Session != "s1" || d.Owner != "alice" {
				t.Fatalf("decision %+v, want a denial of %s:%d for s1/alice", d, tc.host, tc.port)
			}
		})
	}
	// Positive control: the same client reaches what the rules allow, in
	// the tunnel that refused POST and /admin.
	if code, body, err := get(c, "GET", "https://api.example.test/repos/x", nil); err != nil || code != 200 {
		t.Fatalf("allowed GET: %d %q %v", code, body, err)
	}
}

func TestConnectDenialSaysWhyInItsStatusLine(t *testing.T) {
	e := newEnv(t, nil)
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "api.example.test")}
	u := e.serve(s)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "CONNECT evil.example.test:443 HTTP/1.1\r\nHost: evil.example.test:443\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: "CONNECT"})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 403 || resp.Status != "403 cove egress: evil.example.test:443 not allowed" {
		t.Fatalf("status %q", resp.Status)
	}
	if !strings.Contains(string(body), "for session s1") || !strings.Contains(string(body), "allowed: api.example.test") {
		t.Fatalf("body %q", body)
	}
}

func TestConnectCarriesOnlyTLS(t *testing.T) {
	e := newEnv(t, nil)
	var api headerSeen
	e.tlsUpstream("api.example.test", api.handler("api", "X"), true)
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "api.example.test:22,443")}
	u := e.serve(s)
	// An ssh client through an allowed CONNECT: the proxy answers 200,
	// sees no TLS handshake, closes and records why.
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "CONNECT api.example.test:22 HTTP/1.1\r\nHost: api.example.test:22\r\n\r\nSSH-2.0-OpenSSH_9.6\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	// EOF or a reset, depending on what the proxy had read: either way, closed.
	if n, err := br.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("after non-TLS bytes: read %d, %v; want the proxy to close", n, err)
	}
	d := e.waitDecision("non-TLS", func(d Decision) bool { return strings.Contains(d.Reason, "non-HTTPS") })
	if d.Allowed || d.Host != "api.example.test" || d.Port != 22 || d.Owner != "alice" {
		t.Fatalf("decision %+v", d)
	}
	// Positive control: TLS through the same kind of CONNECT works.
	if code, body, err := get(e.client(u), "GET", "https://api.example.test/", nil); err != nil || code != 200 {
		t.Fatalf("TLS through CONNECT: %d %q %v", code, body, err)
	}
}

func TestHostHeaderMustNameTheConnectHost(t *testing.T) {
	e := newEnv(t, nil)
	var api headerSeen
	e.tlsUpstream("api.example.test", api.handler("api", "Authorization"), true)
	cred := Credential{Name: "tok", Hosts: []string{"api.example.test"}, Header: "Authorization", Value: secret}
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "api.example.test", "other.example.test"), Credentials: staticCreds(cred)}
	c := e.client(e.serve(s))
	req, _ := http.NewRequest("GET", "https://api.example.test/", nil)
	req.Host = "other.example.test"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(body), "does not name the CONNECT host") || api.count() != 0 {
		t.Fatalf("%d %q, upstream asked %d times", resp.StatusCode, body, api.count())
	}
	// Positive control: the Host with its port is fine.
	req, _ = http.NewRequest("GET", "https://api.example.test/", nil)
	req.Host = "api.example.test:443"
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("Host with port: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

func TestWildcardNeverReachesPrivateAddresses(t *testing.T) {
	e := newEnv(t, nil)
	var api headerSeen
	e.tlsUpstream("api.example.test", api.handler("api", "X"), true)
	e.tlsUpstream("db.example.test", api.handler("db", "X"), true)
	// Both names resolve to 127.0.0.1 (env.dial): a wildcard must not
	// reach it, an exact rule may.
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "*.example.test", "api.example.test")}
	c := e.client(e.serve(s))
	code, body, err := get(c, "GET", "https://db.example.test/", nil)
	if err != nil || code != 403 || !strings.Contains(body, "non-public address 127.0.0.1") || api.count() != 0 {
		t.Fatalf("wildcard to loopback: %d %q %v", code, body, err)
	}
	e.waitDecision("non-public", func(d Decision) bool {
		return !d.Allowed && d.Host == "db.example.test" && strings.Contains(d.Reason, "non-public")
	})
	if code, body, err := get(c, "GET", "https://api.example.test/", nil); err != nil || code != 200 {
		t.Fatalf("exact rule to loopback: %d %q %v", code, body, err)
	}
}

func TestDefaultDialerRefusesPrivateAddressesBeforeConnecting(t *testing.T) {
	// No DialContext: the proxy's own dialer. Without DNS, a wildcard name
	// cannot be made to resolve to loopback, so the non-exact case is an
	// operator's permit for 127.0.0.1 (treated as a wildcard match).
	e := newEnv(t, func(c *Config) { c.DialContext = nil })
	var seen headerSeen
	var accepted atomic.Int32
	srv := httptest.NewUnstartedServer(seen.handler("local", "X"))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew { // called in the accept loop, in accept order
			accepted.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	s := &Session{ID: "s1", Owner: "alice", Authorize: func(_ context.Context, t Target, ok bool, why string) (bool, string) {
		if t.Host == "127.0.0.1" {
			return true, "permitted by the operator"
		}
		return ok, why
	}}
	c := e.client(e.serve(s))
	code, body, err := get(c, "GET", srv.URL+"/", nil)
	if err != nil || code != 403 || !strings.Contains(body, "non-public") || seen.count() != 0 {
		t.Fatalf("operator permit to loopback: %d %q %v", code, body, err)
	}
	// Positive control: an exact rule reaches it through the same dialer.
	s2 := &Session{ID: "s2", Owner: "alice", Rules: Rules{{Host: "localhost", Ports: []int{port}}}}
	c2 := e.client(e.serve(s2))
	if code, body, err := get(c2, "GET", fmt.Sprintf("http://localhost:%d/", port), nil); err != nil || code != 200 {
		t.Fatalf("exact localhost rule: %d %q %v", code, body, err)
	}
	// The server accepts in order: had the refused dial connected, its
	// connection would have been accepted before the control's.
	if n := accepted.Load(); n != 1 {
		t.Fatalf("the upstream accepted %d connections, want only the control's: the refused dial connected", n)
	}
}

func TestAuthorizeHasTheLastWord(t *testing.T) {
	e := newEnv(t, nil)
	var api headerSeen
	e.tlsUpstream("api.example.test", api.handler("api", "X"), true)
	var mu sync.Mutex
	var asked []Target
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "api.example.test"),
		Authorize: func(_ context.Context, t Target, ok bool, why string) (bool, string) {
			mu.Lock()
			asked = append(asked, t)
			mu.Unlock()
			if t.Path == "/forbidden" {
				return false, "forbidden by operator policy"
			}
			return ok, why
		}}
	c := e.client(e.serve(s))
	if code, _, err := get(c, "GET", "https://api.example.test/ok", nil); err != nil || code != 200 {
		t.Fatalf("allowed: %d %v", code, err)
	}
	code, body, _ := get(c, "GET", "https://api.example.test/forbidden", nil)
	if code != 403 || !strings.Contains(body, "forbidden by operator policy") {
		t.Fatalf("operator forbid: %d %q", code, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 3 || !asked[0].Connect || asked[0].Port != 443 || asked[1].Path != "/ok" || asked[1].Method != "GET" {
		t.Fatalf("Authorize asked %+v, want the CONNECT and each request", asked)
	}
}

func TestCutClosesTheSessionsConnections(t *testing.T) {
	e := newEnv(t, nil)
	// The upstream streams a chunk, then holds the response open until its
	// client goes away, recording that it saw it go.
	upstreamGone := make(chan string, 4)
	release := make(chan struct{})
	stream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "chunk 1 for %s\n", r.URL.Path)
		http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
			upstreamGone <- r.URL.Path
		case <-release:
			fmt.Fprintf(w, "chunk 2 for %s\n", r.URL.Path)
		}
	})
	e.tlsUpstream("dl.example.test", stream, true)
	a := &Session{ID: "a", Owner: "alice", Rules: mustRules(t, "dl.example.test")}
	b := &Session{ID: "b", Owner: "bob", Rules: mustRules(t, "dl.example.test")}
	ca, cb := e.client(e.serve(a)), e.client(e.serve(b))

	open := func(c *http.Client, path string) *bufio.Reader {
		resp, err := c.Get("https://dl.example.test" + path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		br := bufio.NewReader(resp.Body)
		line, err := br.ReadString('\n')
		if err != nil || line != "chunk 1 for "+path+"\n" {
			t.Fatalf("first chunk: %q %v", line, err)
		}
		return br
	}
	ra, rb := open(ca, "/a"), open(cb, "/b")

	if n := e.proxy.Cut("a"); n != 1 {
		t.Fatalf("Cut = %d, want 1 connection", n)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := ra.ReadString('\n')
		readErr <- err
	}()
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("session a's download went on after the cut")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("session a's download not cut within 30s")
	}
	select {
	case p := <-upstreamGone:
		if p != "/a" {
			t.Fatalf("upstream saw %s go, want /a", p)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the upstream connection of session a was not closed")
	}
	e.waitDecision("cut", func(d Decision) bool {
		return d.Session == "a" && !d.Allowed && strings.Contains(d.Reason, "cut") && d.Host == "dl.example.test"
	})

	// Session b is untouched: its stream goes on.
	close(release)
	if line, err := rb.ReadString('\n'); err != nil || line != "chunk 2 for /b\n" {
		t.Fatalf("session b after a's cut: %q %v", line, err)
	}
	// Positive control of the count: nothing of a is left to cut, and b's
	// connection is still there.
	if n := e.proxy.Cut("a"); n != 0 {
		t.Fatalf("second Cut(a) = %d", n)
	}
	if n := e.proxy.Cut("b"); n != 1 {
		t.Fatalf("Cut(b) = %d, want 1", n)
	}
}

func TestConnectionsPerSessionAreBounded(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxConnsPerSession = 1 })
	var seen headerSeen
	e.httpUpstream("plain.example.test", seen.handler("plain", "X"))
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "plain.example.test")}
	u := e.serve(s)
	first := e.client(u)
	if code, _, err := get(first, "GET", "http://plain.example.test/1", nil); err != nil || code != 200 {
		t.Fatalf("first: %d %v", code, err)
	}
	// first keeps its connection open (keep-alive); a second is one too many.
	second := e.client(u)
	code, body, err := get(second, "GET", "http://plain.example.test/2", nil)
	if err != nil || code != http.StatusTooManyRequests || !strings.Contains(body, "1 open connections (the limit)") {
		t.Fatalf("second: %d %q %v", code, body, err)
	}
	e.waitDecision("too many", func(d Decision) bool { return !d.Allowed && strings.Contains(d.Reason, "too many connections") })
	// Positive control: once the first connection is gone, a new one is served.
	first.Transport.(*http.Transport).CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		e.proxy.mu.Lock()
		n := len(e.proxy.sessions["s1"])
		e.proxy.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first connection is still counted 30s after it closed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if code, _, err := get(e.client(u), "GET", "http://plain.example.test/3", nil); err != nil || code != 200 {
		t.Fatalf("after the first closed: %d %v", code, err)
	}
}

func TestNonProxyRequestIsRefused(t *testing.T) {
	e := newEnv(t, nil)
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "api.example.test")}
	u := e.serve(s)
	// A program that takes the proxy for a web server.
	code, body, err := get(&http.Client{Transport: &http.Transport{}}, "GET", u.String()+"/x", nil)
	if err != nil || code != 400 || !strings.Contains(body, "this is an HTTP proxy") {
		t.Fatalf("%d %q %v", code, body, err)
	}
}

func TestServeConnReturnsWhenItsContextEnds(t *testing.T) {
	e := newEnv(t, nil)
	s := &Session{ID: "s1", Owner: "alice"}
	client, server := net.Pipe()
	defer client.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		e.proxy.ServeConn(ctx, server, s)
		close(done)
	}()
	// The proxy is serving (it waits for a request); cancelling ends it.
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("ServeConn did not return after its context ended")
	}
	if _, err := client.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err == nil {
		t.Fatal("the connection is still open")
	}
}

func TestCredentialNeverPrintsItsValue(t *testing.T) {
	c := Credential{Name: "tok", Hosts: []string{"api.example.test"}, Header: "Authorization", Value: secret}
	var buf strings.Builder
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "cred", c)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "cred", c)
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c), buf.String(), fmt.Sprintf("%+v", []Credential{c})} {
		if strings.Contains(s, "s3cr3t") {
			t.Fatalf("the value shows: %s", s)
		}
		if !strings.Contains(s, "tok") {
			t.Fatalf("the name does not show: %s", s)
		}
	}
}

// TestClientRootsAreTheProxyCA checks the premise of the interception
// tests: the guest's client trusts only the proxy's CA, so a request that
// succeeded went through interception.
func TestClientRootsAreTheProxyCA(t *testing.T) {
	e := newEnv(t, nil)
	var api headerSeen
	srv := e.tlsUpstream("api.example.test", api.handler("api", "X"), true)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.ca.CertPEM())
	direct := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "api.example.test"}}}
	if _, err := direct.Get(srv.URL); err == nil {
		t.Fatal("the upstream's certificate verified against the proxy's CA")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestUpstreamFailuresAre502WithAReason(t *testing.T) {
	e := newEnv(t, nil)
	e.proxy.dialTimeout = 200 * time.Millisecond
	// slow.example.test never answers a dial: it waits for the deadline.
	base := e.proxy.cfg.DialContext
	e.proxy.cfg.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if strings.HasPrefix(addr, "slow.example.test:") {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return base(ctx, network, addr)
	}
	var seen headerSeen
	e.tlsUpstream("up.example.test", seen.handler("up", "X"), true)
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "slow.example.test", "gone.example.test", "up.example.test")}
	c := e.client(e.serve(s))
	cases := map[string]string{
		"https://slow.example.test/": "did not answer within 200ms",
		"http://slow.example.test/":  "did not answer within 200ms",
		"https://gone.example.test/": "cannot resolve the upstream's name: lookup gone.example.test",
	}
	for u, want := range cases {
		code, body, err := get(c, "GET", u, nil)
		if err != nil || code != http.StatusBadGateway || !strings.Contains(body, want) {
			t.Errorf("%s: %d %q %v, want 502 saying %q", u, code, body, err, want)
		}
	}
	d := e.waitDecision("upstream failed", func(d Decision) bool { return strings.Contains(d.Reason, "upstream failed") })
	if !d.Allowed || d.Session != "s1" {
		t.Fatalf("decision %+v", d)
	}
	// Positive control: the same proxy reaches a live upstream.
	if code, _, err := get(c, "GET", "https://up.example.test/", nil); err != nil || code != 200 {
		t.Fatalf("live upstream: %d %v", code, err)
	}
}

func TestRequestHeadersAreBounded(t *testing.T) {
	e := newEnv(t, nil)
	var plain, api headerSeen
	e.httpUpstream("plain.example.test", plain.handler("plain", "X-Big"))
	e.tlsUpstream("api.example.test", api.handler("api", "X-Big"), true)
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "plain.example.test", "api.example.test")}
	c := e.client(e.serve(s))
	big := strings.Repeat("x", 2*maxHeaderBytes)
	for _, u := range []string{"http://plain.example.test/", "https://api.example.test/"} {
		// The server answers 431 and closes with the rest unread: reading
		// the answer's body may then meet a reset, so only the status counts.
		code, body, err := get(c, "GET", u, http.Header{"X-Big": {big}})
		if code != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("%s with a %d-byte header: %d %.80q %v, want 431", u, len(big), code, body, err)
		}
		// Positive control: a header within the bound passes.
		small := strings.Repeat("x", maxHeaderBytes/2)
		if code, _, err := get(c, "GET", u, http.Header{"X-Big": {small}}); err != nil || code != 200 {
			t.Errorf("%s with a %d-byte header: %d %v, want 200", u, len(small), code, err)
		}
	}
	if plain.count() != 1 || api.count() != 1 {
		t.Fatalf("upstreams asked %d and %d times, want once each (the small headers)", plain.count(), api.count())
	}
}

// An absolute-form https:// request (what busybox's wget sends its
// http_proxy) is forwarded over verified TLS, with the credential, under
// the same rules as one inside a tunnel.
func TestAbsoluteHTTPSRequestIsForwardedOverTLS(t *testing.T) {
	e := newEnv(t, nil)
	var api headerSeen
	e.tlsUpstream("api.example.test", api.handler("api", "Authorization"), true)
	cred := Credential{Name: "gh-token", Hosts: []string{"api.example.test"}, Header: "Authorization", Value: secret}
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "GET api.example.test/user"), Credentials: staticCreds(cred)}
	u := e.serve(s)
	ask := func(method, target string) (int, string) {
		t.Helper()
		c, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: api.example.test\r\nAuthorization: Bearer guest-chosen\r\nConnection: close\r\n\r\n", method, target)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := ask("GET", "https://api.example.test/user"); code != 200 || api.last() != secret {
		t.Fatalf("GET https://…/user: %d %q; upstream saw %q, want the injected credential", code, body, api.last())
	}
	if code, body := ask("POST", "https://api.example.test/user"); code != http.StatusForbidden {
		t.Fatalf("POST, a method the rule does not allow: %d %q", code, body)
	}
	if code, body := ask("GET", "https://api.example.test/admin"); code != http.StatusForbidden {
		t.Fatalf("GET /admin, a path the rule does not allow: %d %q", code, body)
	}
}

// A client that sends its request and then shuts down its side (busybox's
// wget does) still gets the answer: its half-close does not cancel the
// request on the way.
func TestHalfClosedClientGetsItsAnswer(t *testing.T) {
	e := newEnv(t, nil)
	e.tlsUpstream("api.example.test", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Slow enough that the half-close arrives while the request is
		// on its way.
		time.Sleep(200 * time.Millisecond)
		fmt.Fprint(w, "the answer")
	}), true)
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "api.example.test")}
	u := e.serve(s)
	for _, target := range []string{"https://api.example.test/x"} {
		c, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api.example.test\r\n\r\n", target)
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		c.Close()
		if resp.StatusCode != 200 || string(b) != "the answer" {
			t.Fatalf("%s after a half-close: %d %q, want the answer", target, resp.StatusCode, b)
		}
	}
}
