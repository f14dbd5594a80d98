package egress

import (
	"bufio"
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
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds on what one guest connection may hold.
const (
	maxHeaderBytes    = 64 << 10
	readHeaderTimeout = 30 * time.Second
	idleTimeout       = 5 * time.Minute
	// tlsStartTimeout bounds the wait for a client's first byte after a
	// CONNECT is granted.
	tlsStartTimeout = 30 * time.Second
	dialTimeout     = 10 * time.Second
	// DefaultMaxConnsPerSession is the per-session limit on open guest
	// connections when Config.MaxConnsPerSession is 0.
	DefaultMaxConnsPerSession = 64
)

// Credential is a header the proxy adds to requests bound for its hosts: the
// session owner's secret, resolved and decrypted by the caller. Value is
// secret; the type redacts it when printed or logged.
type Credential struct {
	// Name is the secret's name, for decision records.
	Name string
	// Hosts are exact names or "*.suffix", as Rule.Host.
	Hosts []string
	// Header is the header's name, e.g. "Authorization".
	Header string
	// Value is the header's full value, e.g. "Bearer ghp_…".
	Value string
}

// String describes the credential without its value.
func (c Credential) String() string {
	return fmt.Sprintf("credential %s (%s for %s)", c.Name, c.Header, strings.Join(c.Hosts, ","))
}

// GoString is String, so that %#v does not print the value either.
func (c Credential) GoString() string { return c.String() }

// LogValue logs the credential without its value.
func (c Credential) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", c.Name), slog.String("header", c.Header), slog.Any("hosts", c.Hosts))
}

// matches reports whether the credential is for host (normalized).
func (c Credential) matches(host string) bool {
	return slices.ContainsFunc(c.Hosts, func(h string) bool { return MatchHost(h, host) })
}

// Session is what the proxy knows of a connection's session.
type Session struct {
	ID string
	// Owner is the engineer (user id or name), for decision records.
	Owner string
	Rules Rules
	// Credentials is called for every request over TLS, so that a secret set
	// later applies at once; nil: none.
	Credentials func(ctx context.Context) ([]Credential, error)
	// Authorize, when set, is asked after the rules for every decision
	// (each CONNECT and each request): ruleAllowed and ruleReason are the
	// rules' verdict; it returns the final verdict and reason (an
	// operator's forbid overrides a rule, an operator's permit allows beyond
	// the rules). A host allowed by Authorize alone is treated as a wildcard
	// match: it may not reach a private address.
	Authorize func(ctx context.Context, t Target, ruleAllowed bool, ruleReason string) (allowed bool, reason string)
	// Admit, when set, is told each allow before it takes effect: a
	// CONNECT before the tunnel is opened, a request, with the names of
	// the credentials it carries, before it is sent upstream. An error
	// turns the allow into a deny, with the error as its reason (the
	// broker sequences it in the audit log, and refuses what the log
	// cannot take).
	Admit func(ctx context.Context, d Decision) error
}

// Decision is one allow or deny, handed to Config.OnDecision.
type Decision struct {
	Time    time.Time
	Session string
	Owner   string
	// Method is "CONNECT" for a tunnel's decision, the request's method for
	// a request; Path is empty for a CONNECT.
	Method string
	Host   string
	Port   int
	Path   string
	// Allowed and Reason give the verdict, Reason in words a user reads.
	Allowed bool
	Reason  string
	// Credential names the secrets injected (comma-separated), if any; never
	// their values.
	Credential string
}

// Config configures a Proxy.
type Config struct {
	// CA signs the per-host leaf certificates for interception. Required.
	CA *CA
	// UpstreamRoots verify upstream servers; nil: the system's roots. The
	// caller adds an operator's bundle (--upstream-ca FILE).
	UpstreamRoots *x509.CertPool
	// Log receives one line per decision; nil: slog.Default().
	Log *slog.Logger
	// OnDecision, when set, is called with every decision, synchronously.
	OnDecision func(Decision)
	// DialContext dials upstreams; nil: a net.Dialer that refuses private
	// addresses before connecting where only a wildcard allows the host.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxConnsPerSession bounds a session's open connections; 0:
	// DefaultMaxConnsPerSession. Beyond it a connection's request is
	// answered 429.
	MaxConnsPerSession int
}

// Proxy is the egress proxy. Its methods may be called concurrently.
type Proxy struct {
	cfg      Config
	log      *slog.Logger
	maxConns int
	// dialTimeout bounds an upstream dial and TLS handshake (tests shorten it).
	dialTimeout time.Duration

	mu       sync.Mutex
	sessions map[string]map[*clientConn]struct{} // guarded by mu
}

// New returns a proxy.
func New(cfg Config) (*Proxy, error) {
	if cfg.CA == nil {
		return nil, errors.New("egress: new proxy: no CA")
	}
	if cfg.MaxConnsPerSession < 0 {
		return nil, fmt.Errorf("egress: new proxy: MaxConnsPerSession %d is negative", cfg.MaxConnsPerSession)
	}
	p := &Proxy{cfg: cfg, log: cfg.Log, maxConns: cfg.MaxConnsPerSession, sessions: make(map[string]map[*clientConn]struct{}), dialTimeout: dialTimeout}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.maxConns == 0 {
		p.maxConns = DefaultMaxConnsPerSession
	}
	return p, nil
}

// ServeConn serves the HTTP proxy protocol on c, an accepted connection of
// session s: absolute-form http:// requests and CONNECT tunnels (always
// intercepted TLS). It returns when the connection is done, having closed c.
// Cancelling ctx closes the connection.
func (p *Proxy) ServeConn(ctx context.Context, c net.Conn, s *Session) {
	if s == nil {
		// No session, no rules: nothing may pass, and there is nobody to
		// record a decision for.
		p.log.Error("egress: a connection without a session; closed", "remote", c.RemoteAddr())
		c.Close()
		return
	}
	cc := &clientConn{Conn: c, p: p, sess: s, closed: make(chan struct{}), upstream: make(map[net.Conn]struct{})}
	cc.idle = sync.NewCond(&cc.mu)
	cc.transport = &http.Transport{
		DialContext:            cc.dialUpstream,
		TLSClientConfig:        &tls.Config{RootCAs: p.cfg.UpstreamRoots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    p.dialTimeout,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: 1 << 20,
	}
	cc.overLimit = !p.register(cc)
	defer p.unregister(cc)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-ctx.Done():
			cc.Close()
		case <-cc.closed:
		}
	}()
	srv := p.server(ctx, cc, http.HandlerFunc(cc.serveProxy))
	_ = srv.Serve(&oneConnListener{conn: cc, done: cc.closed})
	cc.wait()
	cc.transport.CloseIdleConnections()
	cc.closeUpstream()
}

// Cut closes every open connection of the session now, the guest's and the
// upstream ones, and records each as cut; it returns how many guest
// connections it closed. Whether later connections are refused is the
// caller's choice: it stops handing them over.
func (p *Proxy) Cut(sessionID string) int {
	p.mu.Lock()
	var conns []*clientConn
	for cc := range p.sessions[sessionID] {
		conns = append(conns, cc)
	}
	// Taken out of the count now, not when each one's goroutine ends:
	// a second Cut finds nothing of them, and they hold no room under
	// the session's limit while they close.
	delete(p.sessions, sessionID)
	p.mu.Unlock()
	for _, cc := range conns {
		cc.cut()
	}
	return len(conns)
}

// register counts cc against its session's limit; false: over the limit
// (cc is then not counted).
func (p *Proxy) register(cc *clientConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	set := p.sessions[cc.sess.ID]
	if len(set) >= p.maxConns {
		return false
	}
	if set == nil {
		set = make(map[*clientConn]struct{})
		p.sessions[cc.sess.ID] = set
	}
	set[cc] = struct{}{}
	return true
}

func (p *Proxy) unregister(cc *clientConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	set := p.sessions[cc.sess.ID]
	delete(set, cc)
	if len(set) == 0 {
		delete(p.sessions, cc.sess.ID)
	}
}

// server is the HTTP/1.1 server for one guest connection (or one tunnel
// inside it): the bounds on headers and idle time live here.
func (p *Proxy) server(ctx context.Context, cc *clientConn, h http.Handler) *http.Server {
	return &http.Server{
		Handler:           cc.track(h),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.log.With("session", cc.sess.ID).Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
}

// decide asks the rules, then the session's Authorize hook.
func (p *Proxy) decide(ctx context.Context, s *Session, t Target) verdict {
	v := s.Rules.check(t)
	if s.Authorize == nil {
		return v
	}
	allowed, reason := s.Authorize(ctx, t, v.allowed, v.reason)
	if allowed && !v.allowed {
		v.exact = false
	}
	v.allowed, v.reason = allowed, reason
	return v
}

// record reports a decision to OnDecision and the log.
// RefuseResolve records that a program in session s's guest tried to
// resolve name itself, which the guest refused: a guest has no DNS, and
// names are resolved here, for the programs that use the proxy.
func (p *Proxy) RefuseResolve(s *Session, name string) {
	p.record(s, Decision{Method: "DNS", Host: name,
		Reason: "the guest has no DNS: names are resolved by the egress proxy, for programs that use it (HTTP_PROXY, HTTPS_PROXY); no other connection leaves the guest"})
}

func (p *Proxy) record(s *Session, d Decision) {
	d.Time = time.Now()
	d.Session, d.Owner = s.ID, s.Owner
	level, msg := slog.LevelInfo, "egress allowed"
	if !d.Allowed {
		level, msg = slog.LevelWarn, "egress denied"
	}
	p.log.Log(context.Background(), level, msg,
		"session", d.Session, "owner", d.Owner, "method", d.Method, "host", d.Host, "port", d.Port,
		"path", d.Path, "reason", d.Reason, "credential", d.Credential)
	if p.cfg.OnDecision != nil {
		p.cfg.OnDecision(d)
	}
}

// clientConn is one guest connection and what hangs off it.
type clientConn struct {
	net.Conn
	p         *Proxy
	sess      *Session
	overLimit bool
	transport *http.Transport
	closeOnce sync.Once
	closed    chan struct{}

	mu sync.Mutex
	// idle is signalled when active drops to 0.
	idle     *sync.Cond
	active   int                   // guarded by mu; handlers running
	finished bool                  // guarded by mu; no new handlers
	upstream map[net.Conn]struct{} // guarded by mu
	isCut    bool                  // guarded by mu
	hijacked bool                  // guarded by mu; a CONNECT took the connection over
	target   Target                // guarded by mu; the CONNECT's, for the cut record
}

// Close closes the guest connection once.
func (cc *clientConn) Close() error {
	var err error
	cc.closeOnce.Do(func() {
		err = cc.Conn.Close()
		close(cc.closed)
	})
	return err
}

// track counts handlers so that ServeConn returns only after the last.
// Read keeps a client's half-close from cutting short the request it has
// just sent: a program that sends its request and then shuts its side
// down (busybox's wget) must still get its answer. Go's HTTP server reads
// on in the background while a handler runs and takes an EOF there for a
// client gone, cancelling the request; so an EOF waits until no handler
// runs, and then the server closes the connection. A CONNECT's tunnel
// reads the connection itself (hijacked), and gets EOF as it comes.
func (cc *clientConn) Read(b []byte) (int, error) {
	n, err := cc.Conn.Read(b)
	if n == 0 && errors.Is(err, io.EOF) {
		cc.mu.Lock()
		for cc.active > 0 && !cc.hijacked && !cc.isCut {
			cc.idle.Wait()
		}
		cc.mu.Unlock()
	}
	return n, err
}

func (cc *clientConn) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cc.mu.Lock()
		if cc.finished {
			cc.mu.Unlock()
			return
		}
		cc.active++
		cc.mu.Unlock()
		defer func() {
			cc.mu.Lock()
			cc.active--
			if cc.active == 0 {
				cc.idle.Broadcast()
			}
			cc.mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}

// wait waits for running handlers to return and lets no new one start.
func (cc *clientConn) wait() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.finished = true
	for cc.active > 0 {
		cc.idle.Wait()
	}
}

func (cc *clientConn) cut() {
	cc.mu.Lock()
	already := cc.isCut
	cc.isCut = true
	cc.idle.Broadcast() // a Read holding an EOF (see Read) ends now
	t := cc.target
	cc.mu.Unlock()
	if already {
		return
	}
	cc.Close()
	cc.closeUpstream()
	cc.p.record(cc.sess, Decision{Method: t.Method, Host: t.Host, Port: t.Port, Reason: "cut: the session's egress was revoked"})
}

func (cc *clientConn) wasCut() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.isCut
}

func (cc *clientConn) closeUpstream() {
	cc.mu.Lock()
	conns := make([]net.Conn, 0, len(cc.upstream))
	for c := range cc.upstream {
		conns = append(conns, c)
	}
	cc.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// serveProxy serves one request on the guest's connection: a CONNECT or an
// absolute-form http:// request.
func (cc *clientConn) serveProxy(w http.ResponseWriter, r *http.Request) {
	p := cc.p
	if cc.overLimit {
		host, port, _ := splitTarget(r.URL.Host, 80)
		p.record(cc.sess, Decision{Method: r.Method, Host: host, Port: port, Path: r.URL.Path,
			Reason: fmt.Sprintf("too many connections: the session has %d open (the limit)", p.maxConns)})
		w.Header().Set("Connection", "close")
		http.Error(w, fmt.Sprintf("cove egress: session %s already has %d open connections (the limit); close some and retry", cc.sess.ID, p.maxConns), http.StatusTooManyRequests)
		return
	}
	switch {
	case r.Method == http.MethodConnect:
		cc.connect(w, r)
	case r.URL.Scheme == "http" && r.URL.Host != "":
		host, port, err := splitTarget(r.URL.Host, 80)
		if err != nil {
			p.record(cc.sess, Decision{Method: r.Method, Path: r.URL.Path, Reason: err.Error()})
			http.Error(w, "cove egress: "+err.Error(), http.StatusBadRequest)
			return
		}
		cc.forward(w, r, "http", host, port)
	case r.URL.Scheme == "https" && r.URL.Host != "":
		// busybox's wget asks its http_proxy for https:// URLs this way,
		// not by CONNECT. The leg to the proxy is the agent channel, on
		// the host; the leg out is TLS verified as inside a tunnel, so a
		// credential may go on it.
		host, port, err := splitTarget(r.URL.Host, 443)
		if err != nil {
			p.record(cc.sess, Decision{Method: r.Method, Path: r.URL.Path, Reason: err.Error()})
			http.Error(w, "cove egress: "+err.Error(), http.StatusBadRequest)
			return
		}
		cc.forward(w, r, "https", host, port)
	default:
		p.record(cc.sess, Decision{Method: r.Method, Path: r.URL.Path, Reason: "not a proxy request (want http://host/path, https://host/path or CONNECT host:443)"})
		http.Error(w, "cove egress: this is an HTTP proxy: send http://host/path requests, or CONNECT host:443 for https", http.StatusBadRequest)
	}
}

// splitTarget splits "host[:port]" into a normalized host and a port.
func splitTarget(hostport string, defaultPort int) (string, int, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		if defaultPort == 0 || !strings.Contains(err.Error(), "missing port") {
			return "", 0, fmt.Errorf("bad target %q: want host:port", hostport)
		}
		host, portStr = hostport, strconv.Itoa(defaultPort)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", hostport)
	}
	h, err := NormalizeHost(host)
	if err != nil {
		return "", 0, fmt.Errorf("bad target: %w", err)
	}
	return h, port, nil
}

// connect decides a CONNECT and, allowed, intercepts the TLS inside it.
func (cc *clientConn) connect(w http.ResponseWriter, r *http.Request) {
	p := cc.p
	host, port, err := splitTarget(r.URL.Host, 0)
	if err != nil {
		p.record(cc.sess, Decision{Method: r.Method, Reason: err.Error()})
		rawResponse(w, http.StatusBadRequest, "Bad CONNECT target", "cove egress: "+err.Error())
		return
	}
	t := Target{Method: http.MethodConnect, Host: host, Port: port, Connect: true}
	d := Decision{Method: t.Method, Host: host, Port: port}
	var v verdict
	if port == 80 {
		v.reason = "CONNECT is only for TLS and port 80 is plain HTTP: send http:// requests to the proxy as they are"
	} else {
		v = p.decide(r.Context(), cc.sess, t)
	}
	d.Allowed, d.Reason = v.allowed, v.reason
	if v.allowed && cc.sess.Admit != nil {
		a := d
		a.Time, a.Session, a.Owner = time.Now(), cc.sess.ID, cc.sess.Owner
		if err := cc.sess.Admit(r.Context(), a); err != nil {
			v.allowed, v.reason = false, err.Error()
			d.Allowed, d.Reason = false, v.reason
		}
	}
	p.record(cc.sess, d)
	if !v.allowed {
		rawResponse(w, http.StatusForbidden, fmt.Sprintf("cove egress: %s not allowed", net.JoinHostPort(host, strconv.Itoa(port))),
			fmt.Sprintf("cove egress: %s is not allowed for session %s: %s (allowed: %s)",
				net.JoinHostPort(host, strconv.Itoa(port)), cc.sess.ID, v.reason, cc.sess.Rules.Summary()))
		return
	}
	cc.mu.Lock()
	// Before the hijack, which waits for the server's own read: held on
	// an EOF (see Read), it must now end.
	cc.hijacked = true
	cc.idle.Broadcast()
	cc.mu.Unlock()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.log.Error("egress: hijack a CONNECT", "session", cc.sess.ID, "err", err)
		return
	}
	defer conn.Close()
	cc.mu.Lock()
	cc.target = t
	cc.mu.Unlock()
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	// CONNECT is only for TLS: anything else (ssh, plain HTTP, raw TCP)
	// would pass uninspected. What the guest sent right after its CONNECT
	// is taken out of the server's reader, and the tunnel reads the
	// connection directly from then on: reading through that reader would
	// let a read deadline in the tunnel cancel the CONNECT's context.
	prefix, err := firstBytes(conn, brw.Reader)
	if err != nil || prefix[0] != 0x16 { // 0x16: a TLS handshake record
		if !cc.wasCut() {
			d.Allowed, d.Reason = false, "CONNECT to a non-HTTPS port/protocol: the client did not start TLS"
			p.record(cc.sess, d)
		}
		return
	}
	tlsConn := tls.Server(&prefixConn{Conn: conn, prefix: prefix}, &tls.Config{
		// The leaf is for the CONNECT host, whatever the SNI says: that is
		// the host the rules allowed and the proxy dials; a client that
		// asked for another name fails verification, as it should.
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.cfg.CA.leaf(host, time.Now()) },
		NextProtos:     []string{"http/1.1"},
		MinVersion:     tls.VersionTLS12,
	})
	srv := p.server(r.Context(), cc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cc.forward(w, r, "https", host, port)
	}))
	// The inner server closes tlsConn (and so the guest's connection) when
	// the tunnel ends; the listener then reports closed.
	_ = srv.Serve(&oneConnListener{conn: tlsConn, done: cc.closed})
}

// rawResponse answers with a status line of its own (clients show a
// CONNECT's reason phrase, not its body) and closes the connection.
func rawResponse(w http.ResponseWriter, code int, phrase, body string) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		w.Header().Set("Connection", "close")
		http.Error(w, body, code)
		return
	}
	defer conn.Close()
	body += "\n"
	_, _ = fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, strings.Map(printableASCII, phrase), len(body), body)
}

func printableASCII(r rune) rune {
	if r < ' ' || r > '~' {
		return '?'
	}
	return r
}

// forward decides one request to scheme://host:port and, allowed, sends it
// upstream with the session's credentials for host (over https only).
func (cc *clientConn) forward(w http.ResponseWriter, r *http.Request, scheme, host string, port int) {
	p := cc.p
	ctx := r.Context()
	t := Target{Method: r.Method, Host: host, Port: port, Path: r.URL.Path}
	d := Decision{Method: t.Method, Host: host, Port: port, Path: t.Path}
	hostport := net.JoinHostPort(host, strconv.Itoa(port))
	deny := func(code int, reason string) {
		d.Allowed, d.Reason = false, reason
		p.record(cc.sess, d)
		http.Error(w, fmt.Sprintf("cove egress: %s %s%s is not allowed for session %s: %s", r.Method, hostport, t.Path, cc.sess.ID, reason), code)
	}
	if scheme == "https" {
		// Inside a tunnel the Host header must name the CONNECT host: the
		// rules and credentials were chosen for that host.
		h, _, err := splitTarget(r.Host, port)
		if err != nil || h != host {
			deny(http.StatusForbidden, fmt.Sprintf("Host header %q does not name the CONNECT host %s", r.Host, host))
			return
		}
	}
	v := p.decide(ctx, cc.sess, t)
	if !v.allowed {
		deny(http.StatusForbidden, v.reason+" (allowed: "+cc.sess.Rules.Summary()+")")
		return
	}
	d.Reason = v.reason
	inject, withheld, err := cc.credentialsFor(ctx, scheme, host)
	if err != nil {
		p.log.Error("egress: resolve credentials", "session", cc.sess.ID, "owner", cc.sess.Owner, "host", host, "err", err)
		deny(http.StatusBadGateway, "the session's credentials could not be resolved")
		return
	}
	var names []string
	for _, c := range inject {
		names = append(names, c.Name)
	}
	d.Credential = strings.Join(names, ",")
	if len(withheld) > 0 {
		d.Reason += fmt.Sprintf("; credential %s withheld over plain http", strings.Join(withheld, ","))
	}
	if cc.sess.Admit != nil {
		a := d
		a.Time, a.Session, a.Owner, a.Allowed = time.Now(), cc.sess.ID, cc.sess.Owner, true
		if err := cc.sess.Admit(ctx, a); err != nil {
			deny(http.StatusServiceUnavailable, err.Error())
			return
		}
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = scheme, hostport
			for k := range pr.Out.Header {
				if strings.HasPrefix(k, "Proxy-") {
					delete(pr.Out.Header, k)
				}
			}
			// Replaces whatever the guest sent under the same name: the guest
			// must neither choose the value nor learn it.
			for _, c := range inject {
				pr.Out.Header.Set(c.Header, c.Value)
				pr.Out.Trailer.Del(c.Header)
			}
		},
		Transport:     cc.transport,
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(p.log.With("session", cc.sess.ID).Handler(), slog.LevelDebug),
		ModifyResponse: func(*http.Response) error {
			d.Allowed = true
			p.record(cc.sess, d)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if cc.wasCut() {
				return
			}
			var pe *privateAddrError
			if errors.As(err, &pe) {
				deny(http.StatusForbidden, pe.Error())
				return
			}
			if r.Context().Err() != nil {
				d.Allowed, d.Reason = true, d.Reason+"; the client went away"
				p.record(cc.sess, d)
				return
			}
			why := scrub(upstreamReason(err, p.dialTimeout), inject)
			d.Allowed, d.Reason = true, d.Reason+"; upstream failed: "+why
			p.record(cc.sess, d)
			http.Error(w, fmt.Sprintf("cove egress: %s: %s", hostport, why), http.StatusBadGateway)
		},
	}
	// The request body stays the upstream request's until the handler
	// returns: without full duplex, the answer's header (flushed at once)
	// makes the server close the body under the transport's look for its
	// end, which fails the request write and closes the upstream
	// connection while the answer is read (see routing.Forward, whose
	// test shows it).
	_ = http.NewResponseController(w).EnableFullDuplex()
	rp.ServeHTTP(w, r)
}

// credentialsFor returns the session's credentials for host: to inject
// (https only, the first per header name) and withheld (plain http).
func (cc *clientConn) credentialsFor(ctx context.Context, scheme, host string) (inject []Credential, withheld []string, err error) {
	if cc.sess.Credentials == nil {
		return nil, nil, nil
	}
	creds, err := cc.sess.Credentials(ctx)
	if err != nil {
		return nil, nil, err
	}
	seen := make(map[string]bool)
	for _, c := range creds {
		if !c.matches(host) {
			continue
		}
		if scheme != "https" {
			withheld = append(withheld, c.Name)
			continue
		}
		h := http.CanonicalHeaderKey(c.Header)
		if seen[h] || h == "" {
			continue
		}
		seen[h] = true
		inject = append(inject, c)
	}
	return inject, withheld, nil
}

// scrub removes credential values from s, should an error ever quote one.
func scrub(s string, creds []Credential) string {
	for _, c := range creds {
		if c.Value != "" {
			s = strings.ReplaceAll(s, c.Value, "[redacted]")
		}
	}
	return s
}

// upstreamReason says in a user's words why an upstream request failed.
func upstreamReason(err error, timeout time.Duration) string {
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	var he x509.HostnameError
	var ne net.Error
	switch {
	case errors.As(err, &cve), errors.As(err, &uae), errors.As(err, &he):
		return fmt.Sprintf("the upstream's TLS certificate is not trusted (%v); an operator can add its CA with --upstream-ca", err)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("the upstream did not answer within %s", timeout)
	}
	var de *net.DNSError
	if errors.As(err, &de) {
		return fmt.Sprintf("cannot resolve the upstream's name: %v", de)
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return fmt.Sprintf("cannot connect to the upstream: %v", oe.Err)
	}
	return err.Error()
}

// privateAddrError is a dial refused because only a wildcard (or the
// operator's policy) allows the host and it resolved to a private address.
type privateAddrError struct {
	host string
	ip   netip.Addr
}

func (e *privateAddrError) Error() string {
	return fmt.Sprintf("%s resolves to the non-public address %s, which only a rule naming %s exactly may reach", e.host, e.ip, e.host)
}

// publicAddr reports whether ip is a public unicast address (not loopback,
// private, link-local, CGNAT, unspecified or multicast).
func publicAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsValid() && ip.IsGlobalUnicast() && !ip.IsPrivate() &&
		!netip.MustParsePrefix("100.64.0.0/10").Contains(ip) && !netip.MustParsePrefix("0.0.0.0/8").Contains(ip)
}

// dialUpstream dials addr for this connection's transport: within
// dialTimeout, refusing a private address unless an exact rule names the
// host, and tracking the connection so that Cut can close it.
func (cc *clientConn) dialUpstream(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := splitTarget(addr, 0)
	if err != nil {
		return nil, fmt.Errorf("egress: dial %s: %w", addr, err)
	}
	v := cc.sess.Rules.check(Target{Host: host, Port: port, Connect: true})
	mayBePrivate := v.allowed && v.exact
	ctx, cancel := context.WithTimeout(ctx, cc.p.dialTimeout)
	defer cancel()
	var c net.Conn
	if dial := cc.p.cfg.DialContext; dial != nil {
		c, err = dial(ctx, network, addr)
	} else {
		d := net.Dialer{Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err == nil && !mayBePrivate && !publicAddr(ap.Addr()) {
				return &privateAddrError{host: host, ip: ap.Addr()}
			}
			return nil
		}}
		c, err = d.DialContext(ctx, network, addr)
	}
	if err != nil {
		return nil, err
	}
	// Checked again on the connection itself: it covers any DialContext,
	// and DNS answers that changed between lookups.
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok && !mayBePrivate {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok && !publicAddr(ip) {
			c.Close()
			return nil, &privateAddrError{host: host, ip: ip.Unmap()}
		}
	}
	tc := &trackedConn{Conn: c, cc: cc}
	cc.mu.Lock()
	if cc.isCut {
		cc.mu.Unlock()
		c.Close()
		return nil, errors.New("egress: the session's egress was cut")
	}
	cc.upstream[tc] = struct{}{}
	cc.mu.Unlock()
	return tc, nil
}

// trackedConn is an upstream connection that leaves its clientConn's set
// when closed.
type trackedConn struct {
	net.Conn
	cc   *clientConn
	once sync.Once
}

func (t *trackedConn) Close() error {
	t.once.Do(func() {
		t.cc.mu.Lock()
		delete(t.cc.upstream, t)
		t.cc.mu.Unlock()
	})
	return t.Conn.Close()
}

// firstBytes returns what br holds of conn's data, or else at least one
// byte read from conn within tlsStartTimeout.
func firstBytes(conn net.Conn, br *bufio.Reader) ([]byte, error) {
	if n := br.Buffered(); n > 0 {
		b, err := br.Peek(n)
		return bytes.Clone(b), err
	}
	_ = conn.SetReadDeadline(time.Now().Add(tlsStartTimeout))
	defer conn.SetReadDeadline(time.Time{})
	b := make([]byte, 1)
	if _, err := io.ReadFull(conn, b); err != nil {
		return nil, err
	}
	return b, nil
}

// prefixConn reads prefix, then the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// oneConnListener hands an http.Server one connection, then reports itself
// closed once done is closed (the connection is finished).
type oneConnListener struct {
	conn net.Conn
	done <-chan struct{}
	mu   sync.Mutex
	used bool // guarded by mu
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	used := l.used
	l.used = true
	l.mu.Unlock()
	if !used {
		return l.conn, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }
