package oidctest_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/cove-dev/cove/internal/oidctest"
)

// codeFor runs the authorization code flow's front channel against p as
// a browser would, up to the redirect to the client's callback, and
// returns that callback's query.
func codeFor(t *testing.T, cfg *oauth2.Config, state string, opts ...oauth2.AuthCodeOption) map[string][]string {
	t.Helper()
	var got map[string][]string
	c := &http.Client{CheckRedirect: func(r *http.Request, via []*http.Request) error {
		if strings.HasPrefix(r.URL.String(), cfg.RedirectURL) {
			got = r.URL.Query()
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := c.Get(cfg.AuthCodeURL(state, opts...))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got == nil {
		t.Fatalf("the provider never redirected to the callback (last status %d)", resp.StatusCode)
	}
	return got
}

// TestAuthorizationCodeWithPKCE: the login step signs in the configured
// user; the code is exchanged only with its PKCE verifier, and once; the
// ID token carries the nonce and verifies with the provider's keys.
// Without a login user the callback gets access_denied.
func TestAuthorizationCodeWithPKCE(t *testing.T) {
	// The client's callback: a loopback URL on any port (RFC 8252).
	cb := httptest.NewServer(http.NotFoundHandler())
	defer cb.Close()
	p, err := oidctest.New(oidctest.Config{ClientID: "dash", RedirectURIs: []string{"http://127.0.0.1/callback"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.AddUser(oidctest.User{Subject: "sub-alice", PreferredUsername: "alice"})
	ctx := context.Background()
	prov, err := oidc.NewProvider(ctx, p.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &oauth2.Config{ClientID: "dash", Endpoint: prov.Endpoint(), RedirectURL: cb.URL + "/callback", Scopes: []string{oidc.ScopeOpenID, "profile"}}
	cfg.Endpoint.AuthStyle = oauth2.AuthStyleInParams

	q := codeFor(t, cfg, "st1", oauth2.S256ChallengeOption("x"))
	if q["error"] == nil || q["error"][0] != "access_denied" || q["state"][0] != "st1" {
		t.Fatalf("no login user: callback %v, want error=access_denied with the state", q)
	}

	p.SetLoginUser("sub-alice")
	verifier := oauth2.GenerateVerifier()
	q = codeFor(t, cfg, "st2", oauth2.S256ChallengeOption(verifier), oidc.Nonce("n-123"))
	if q["state"][0] != "st2" || q["code"] == nil {
		t.Fatalf("callback %v, want a code and the state", q)
	}
	code := q["code"][0]
	if _, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(oauth2.GenerateVerifier())); err == nil {
		t.Fatal("the code was exchanged with another verifier")
	}
	// A new authorization: its code, with its verifier, works once.
	q = codeFor(t, cfg, "st3", oauth2.S256ChallengeOption(verifier), oidc.Nonce("n-123"))
	code = q["code"][0]
	tok, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("exchange with the verifier: %v", err)
	}
	if _, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier)); err == nil {
		t.Fatal("the code was exchanged twice")
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := prov.Verifier(&oidc.Config{ClientID: "dash"}).Verify(ctx, raw)
	if err != nil {
		t.Fatalf("the ID token: %v", err)
	}
	var claims struct {
		Nonce string `json:"nonce"`
		User  string `json:"preferred_username"`
	}
	if err := idt.Claims(&claims); err != nil {
		t.Fatal(err)
	}
	if idt.Subject != "sub-alice" || claims.Nonce != "n-123" || claims.User != "alice" {
		parts := strings.Split(raw, ".")
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var all map[string]any
		_ = json.Unmarshal(b, &all)
		t.Fatalf("ID token claims %v, want sub-alice, nonce n-123, alice", all)
	}
}
