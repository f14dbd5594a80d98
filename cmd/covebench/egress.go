package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/broker"
	"github.com/cove-dev/cove/internal/egress"
	"github.com/cove-dev/cove/internal/store"
)

// benchHost is the upstream's name: the proxy dials it at the loopback
// test server, as 'cove server --egress-resolve' would.
const benchHost = "example.com" // a name the test server's certificate holds

// egressBench is the world the egress figures reach: an HTTPS upstream on
// loopback (small answers, a stream of any size, and a git smart-HTTP
// server over a 50 MiB repository), the installation's proxy in front of
// it, and the broker the session manager hands guests' connections to.
type egressBench struct {
	up     *httptest.Server
	port   string
	roots  *x509.CertPool
	ca     *egress.CA
	proxy  *egress.Proxy
	broker *broker.Broker
}

// repoMiB is the size of the repository the clone figure fetches: random
// bytes, so that neither git nor anything on the way compresses them.
const repoMiB = 50

func newEgressBench(home string, st store.Store, log *slog.Logger) (*egressBench, error) {
	dir := filepath.Join(home, "egress")
	repo := filepath.Join(dir, "repo.git")
	if err := makeBenchRepo(repo); err != nil {
		return nil, err
	}
	gitPath, err := exec.LookPath("git")
	if err != nil {
		return nil, err
	}
	backend := &cgi.Handler{Path: gitPath, Args: []string{"http-backend"},
		Env: []string{"GIT_PROJECT_ROOT=" + dir, "GIT_HTTP_EXPORT_ALL=1"}}
	block := make([]byte, 1<<20)
	_, _ = rand.Read(block)
	mux := http.NewServeMux()
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok\n") })
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(block)))
			if _, err := w.Write(block[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.Handle("/git/", http.StripPrefix("/git", backend))
	b := &egressBench{up: httptest.NewTLSServer(mux)}
	u, _ := url.Parse(b.up.URL)
	b.port = u.Port()
	b.roots = x509.NewCertPool()
	b.roots.AddCert(b.up.Certificate())
	if b.ca, err = egress.LoadOrCreateCA(dir); err != nil {
		return nil, err
	}
	var d net.Dialer
	upAddr := u.Host
	b.proxy, err = egress.New(egress.Config{CA: b.ca, UpstreamRoots: b.roots, Log: log,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if h, _, _ := net.SplitHostPort(addr); h == benchHost {
				addr = upAddr
			}
			return d.DialContext(ctx, network, addr)
		}})
	if err != nil {
		return nil, err
	}
	b.broker = broker.New(broker.Config{Proxy: b.proxy, CA: b.ca, Store: st, Log: log})
	return b, nil
}

func (b *egressBench) close() { b.up.Close() }

// allow is the rule a benchmark session gets.
func (b *egressBench) allow() string { return benchHost + ":" + b.port }

func (b *egressBench) url(path string) string { return "https://" + benchHost + ":" + b.port + path }

// makeBenchRepo makes the bare repository the clone figure fetches, once
// (kept under the bench home between runs).
func makeBenchRepo(repo string) error {
	if _, err := os.Stat(filepath.Join(repo, "HEAD")); err == nil {
		return nil
	}
	fmt.Fprintf(os.Stderr, "bench: making a %d MiB git repository for the clone figure\n", repoMiB)
	src, err := os.MkdirTemp(filepath.Dir(filepath.Dir(repo)), "repo-src-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(src)
	buf := make([]byte, 1<<20)
	for i := 0; i < repoMiB; i++ {
		_, _ = rand.Read(buf)
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("blob%02d.bin", i)), buf, 0o644); err != nil {
			return err
		}
	}
	tmp := repo + ".tmp"
	os.RemoveAll(tmp)
	for _, args := range [][]string{
		{"init", "-q", "-b", "main", src},
		{"-C", src, "add", "."},
		{"-C", src, "-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-q", "-m", "50 MiB of noise"},
		{"clone", "-q", "--bare", src, tmp},
	} {
		if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("bench repo: git %v: %v: %s", args, err, out)
		}
	}
	return os.Rename(tmp, repo)
}

// hostRows compares an HTTPS request through the proxy with the same
// request made directly, both from the host over loopback (each on a new
// connection: the proxy's CONNECT, its TLS to the client and its own to the
// upstream, against one TLS handshake), and counts the requests per second
// the proxy carries on kept-alive connections.
func (b *egressBench) hostRows(ctx context.Context, n int) ([]row, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	rules, err := egress.ParseRules([]string{b.allow()})
	if err != nil {
		return nil, err
	}
	sess := &egress.Session{ID: "bench", Owner: "bench", Rules: rules}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go b.proxy.ServeConn(ctx, c, sess)
		}
	}()
	caPool := x509.NewCertPool()
	if !caPool.AppendCertsFromPEM(b.ca.CertPEM()) {
		return nil, fmt.Errorf("bench: the egress CA's PEM")
	}
	upAddr := strings.TrimPrefix(b.up.URL, "https://")
	var d net.Dialer
	direct := &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{RootCAs: b.roots, ServerName: "example.com"},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, upAddr)
		}}
	proxyURL, _ := url.Parse("http://" + ln.Addr().String())
	viaProxy := &http.Transport{DisableKeepAlives: true, Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: caPool}}
	get := func(tr *http.Transport, u string) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("bench: %s: %s", u, resp.Status)
		}
		return nil
	}
	rd := row{name: "HTTPS request, host → upstream, direct (new connection)", unit: "ms"}
	rp := row{name: "HTTPS request, host → proxy → upstream (new connection)", unit: "ms"}
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := get(direct, "https://example.com:"+b.port+"/small"); err != nil {
			return nil, err
		}
		rd.samples = append(rd.samples, ms(time.Since(t0)))
		t0 = time.Now()
		if err := get(viaProxy, b.url("/small")); err != nil {
			return nil, err
		}
		rp.samples = append(rp.samples, ms(time.Since(t0)))
	}
	ratio := pct(rp.samples, 0.5) / pct(rd.samples, 0.5)
	rp.note = fmt.Sprintf("%.1f× direct", ratio)

	// Requests per second on kept-alive connections through the proxy.
	keep := &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: caPool}, MaxIdleConnsPerHost: 8}
	var count atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(5 * time.Second)
	var firstErr error
	var once sync.Once
	start := time.Now()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if err := get(keep, b.url("/small")); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	rps := float64(count.Load()) / time.Since(start).Seconds()
	rr := row{name: "HTTPS requests through the proxy, 8 clients, kept-alive (host)", cells: []string{"1", fmt.Sprintf("%.0f/s", rps), "–", "–", "–"}}
	return []row{rd, rp, rr}, nil
}

// guestRows times what a guest does through the proxy: a small HTTPS
// request (curl, a new connection each), a 100 MiB download, and a clone
// of the 50 MiB repository.
func (b *egressBench) guestRows(ctx context.Context, c *api.Client, n int) ([]row, error) {
	s, err := c.CreateSession(ctx, api.CreateSessionRequest{Image: "debian", Allow: []string{b.allow()}})
	if err != nil {
		return nil, err
	}
	defer c.DeleteSession(context.Background(), s.ID)
	sh := func(script string) (string, error) {
		res, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"bash", "-c", script}})
		if err != nil {
			return "", err
		}
		if res.ExitCode != 0 {
			return "", fmt.Errorf("bench: %s: exit %d: %s", script, res.ExitCode, res.Stderr)
		}
		return string(res.Stdout), nil
	}
	out, err := sh(fmt.Sprintf(`for i in $(seq %d); do curl -sS -o /dev/null -w '%%{time_total}\n' %s; done`, n+3, b.url("/small")))
	if err != nil {
		return nil, err
	}
	small := row{name: "HTTPS request in the guest through the proxy (curl, new connection)", unit: "ms"}
	for i, l := range strings.Fields(out) {
		if i < 3 {
			continue // the first warm TCG and the guest's page cache
		}
		v, err := strconv.ParseFloat(l, 64)
		if err != nil {
			return nil, fmt.Errorf("bench: curl time %q: %w", l, err)
		}
		small.samples = append(small.samples, v*1000)
	}
	const size = 100 << 20
	dl := row{name: "100 MiB HTTPS download into the guest through the proxy", unit: "MB/s"}
	for i := 0; i < 3; i++ {
		out, err := sh(fmt.Sprintf(`curl -sS -o /dev/null -w '%%{size_download} %%{time_total}' '%s?n=%d'`, b.url("/big"), size))
		if err != nil {
			return nil, err
		}
		var got, secs float64
		if _, err := fmt.Sscan(out, &got, &secs); err != nil || got != size {
			return nil, fmt.Errorf("bench: download: %q", out)
		}
		dl.samples = append(dl.samples, got/secs/1e6)
	}
	clone := row{name: fmt.Sprintf("git clone of a %d MiB repository in the guest through the proxy", repoMiB), unit: "s"}
	for i := 0; i < 3; i++ {
		t0 := time.Now()
		if _, err := sh("git clone -q " + b.url("/git/repo.git") + " /tmp/clone && rm -rf /tmp/clone"); err != nil {
			return nil, err
		}
		clone.samples = append(clone.samples, time.Since(t0).Seconds())
	}
	return []row{small, dl, clone}, nil
}

// egressRows are the egress figures: on the host, then in a debian guest.
func egressRows(ctx context.Context, c *api.Client, b *egressBench, n int) ([]row, error) {
	host, err := b.hostRows(ctx, n*10)
	if err != nil {
		return nil, fmt.Errorf("bench: egress on the host: %w", err)
	}
	guest, err := b.guestRows(ctx, c, n)
	if err != nil {
		return nil, fmt.Errorf("bench: egress in the guest: %w", err)
	}
	return append(host, guest...), nil
}
