package egress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"testing"
)

// benchEnv is an HTTPS upstream answering a small body, with a direct client
// and a client through the proxy (keep-alive both).
func benchEnv(b *testing.B) (direct, proxied *http.Client) {
	e := newEnv(b, func(c *Config) { c.Log = slog.New(slog.DiscardHandler); c.OnDecision = nil })
	e.tlsUpstream("api.example.test", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok")
	}), true)
	s := &Session{ID: "bench", Owner: "alice", Rules: mustRules(b, "api.example.test"),
		Credentials: staticCreds(Credential{Name: "tok", Hosts: []string{"api.example.test"}, Header: "Authorization", Value: secret})}
	proxied = e.client(e.serve(s))
	roots := x509.NewCertPool()
	roots.AddCert(e.upstream.Certificate())
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return e.dial(ctx, network, addr)
		},
	}
	b.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}, proxied
}

func benchGet(b *testing.B, c *http.Client) {
	for b.Loop() {
		resp, err := c.Get("https://api.example.test/")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}

// BenchmarkHTTPSDirect is the baseline of BenchmarkHTTPSViaProxy: the same
// request straight to the upstream.
func BenchmarkHTTPSDirect(b *testing.B) {
	direct, _ := benchEnv(b)
	benchGet(b, direct)
}

// BenchmarkHTTPSViaProxy is one small HTTPS request through the proxy
// (intercepted, rule-checked, credential injected), keep-alive on both sides.
func BenchmarkHTTPSViaProxy(b *testing.B) {
	_, proxied := benchEnv(b)
	benchGet(b, proxied)
}

// downloadSize is the body BenchmarkDownload* fetch; b.SetBytes makes the
// figure MB/s.
const downloadSize = 16 << 20

func benchDownload(b *testing.B, viaProxy bool) {
	e := newEnv(b, func(c *Config) { c.Log = slog.New(slog.DiscardHandler); c.OnDecision = nil })
	chunk := make([]byte, 64<<10)
	e.tlsUpstream("dl.example.test", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(downloadSize))
		for sent := 0; sent < downloadSize; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}), true)
	var c *http.Client
	if viaProxy {
		c = e.client(e.serve(&Session{ID: "bench", Owner: "alice", Rules: mustRules(b, "dl.example.test")}))
	} else {
		roots := x509.NewCertPool()
		roots.AddCert(e.upstream.Certificate())
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, DialContext: e.dial}
		b.Cleanup(tr.CloseIdleConnections)
		c = &http.Client{Transport: tr}
	}
	b.SetBytes(downloadSize)
	for b.Loop() {
		resp, err := c.Get("https://dl.example.test/big")
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != downloadSize {
			b.Fatalf("read %d of %d: %v", n, downloadSize, err)
		}
	}
}

// BenchmarkDownloadDirect is the baseline of BenchmarkDownloadViaProxy.
func BenchmarkDownloadDirect(b *testing.B) { benchDownload(b, false) }

// BenchmarkDownloadViaProxy is a 16 MiB HTTPS download through the proxy
// (decrypted and encrypted again), in MB/s.
func BenchmarkDownloadViaProxy(b *testing.B) { benchDownload(b, true) }
