package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"

	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/issuer"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/sessiontoken"
	"github.com/cove-dev/cove/internal/store"
)

// sessionTokens is cove as the issuer of its sessions' identity tokens,
// wired: the manager's minter, the API's verifier of them, and the
// handler of the discovery document and JWKS. All nil when the server
// issues none.
type sessionTokens struct {
	minter    session.TokenMinter
	verifiers []identity.JWTVerifier
	handler   http.Handler
}

// newSessionTokens makes the issuer, its key kept in COVE_HOME/issuer. An
// --issuer-url that does not do is an error; without one, the listen
// address is the issuer if it is a loopback one, and otherwise the server
// issues no session tokens (and says so).
func newSessionTokens(cfg serverConfig, st store.Store, log *slog.Logger) (sessionTokens, error) {
	u := cfg.IssuerURL
	if u == "" {
		u = defaultIssuerURL(cfg.Listen)
	}
	if u == "" && cfg.Listen == "" {
		log.Warn("no --issuer-url: sessions get no identity tokens")
		return sessionTokens{}, nil
	}
	if u == "" {
		log.Warn("no --issuer-url and the listen address is not a loopback one: sessions get no identity tokens", "listen", cfg.Listen)
		return sessionTokens{}, nil
	}
	if p, err := url.Parse(u); err == nil && p.Path != "" {
		return sessionTokens{}, fmt.Errorf("server: --issuer-url %q: cove serves its issuer at the root; give the URL with no path", u)
	}
	is, err := issuer.New(filepath.Join(cfg.Home, "issuer"), u)
	if err != nil {
		return sessionTokens{}, fmt.Errorf("server: %w", err)
	}
	log.Info("session identity issuer", "issuer", is.URL(), "kid", is.KeyID())
	return sessionTokens{
		minter: sessiontoken.Minter{Issuer: is},
		// The audience of tokens for cove's own API is its issuer URL:
		// 'cove-agent token --audience ISSUER-URL'.
		verifiers: []identity.JWTVerifier{&sessiontoken.Verifier{Issuer: is, Audience: is.URL(), Records: st}},
		handler:   is.Handler(),
	}, nil
}

// defaultIssuerURL is http://listen when listen's host is a loopback
// address or name, else "".
func defaultIssuerURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "0" {
		return ""
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return ""
	}
	return "http://" + net.JoinHostPort(host, port)
}
