package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/issuer"
	"github.com/cove-dev/cove/internal/oidctest"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// identityRows measures identity and policy in-process, over the real
// components and no VM: a Cedar decision under the default policy (an
// owner's exec on its session, and another engineer's, denied, in turn),
// authenticating an API token against a real SQLite store holding 1000
// tokens, authenticating an ID token of a real OIDC provider on loopback
// (its keys cached, the user and its teams read from the store), and
// minting a session token (issuer.Mint, ES256). Each of n samples times
// one call, in µs.
func identityRows(ctx context.Context, n int) ([]row, error) {
	if n <= 0 {
		return nil, fmt.Errorf("identity: %d samples", n)
	}
	dir, err := os.MkdirTemp("", "covebench-identity-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	decide := row{name: "policy decision (Cedar, default policy)", unit: "µs", target: 50}
	eng := policy.New()
	alice := policy.Principal{ID: "u_alice", Kind: policy.KindEngineer, Teams: []string{"platform"}}
	bob := policy.Principal{ID: "u_bob", Kind: policy.KindEngineer, Teams: []string{"backend"}}
	sess := policy.Resource{Type: policy.ResourceSession, ID: "s1", Owner: "u_alice", Teams: []string{"platform"}, Agent: "review-bot"}
	reqs := []policy.Request{
		{Principal: alice, Action: policy.SessionExec, Resource: sess, Context: policy.Context{Argv: []string{"make", "test"}}},
		{Principal: bob, Action: policy.SessionExec, Resource: sess, Context: policy.Context{Argv: []string{"make", "test"}}},
	}
	for i := range n {
		req := reqs[i%2]
		start := time.Now()
		d := eng.Decide(req)
		decide.samples = append(decide.samples, us(time.Since(start)))
		if d.Allow != (i%2 == 0) {
			return nil, fmt.Errorf("identity: policy decision %d: %+v", i, d)
		}
	}

	st, err := sqlite.Open(ctx, filepath.Join(dir, "state.db"))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	dirc := &identity.Directory{Store: st}
	if _, err := dirc.AddUser(ctx, api.CreateUserRequest{Name: "alice", Teams: []string{"platform"}}); err != nil {
		return nil, err
	}
	var secret string
	for i := range 1000 {
		tok, err := dirc.CreateToken(ctx, api.CreateTokenRequest{Name: fmt.Sprintf("t%d", i), User: "alice"})
		if err != nil {
			return nil, err
		}
		secret = tok.Secret
	}

	prov, err := oidctest.New(oidctest.Config{})
	if err != nil {
		return nil, err
	}
	defer prov.Close()
	v, err := identity.NewOIDC(identity.OIDCConfig{Issuers: []identity.OIDCIssuer{{URL: prov.URL, ClientID: prov.ClientID}}, Store: st})
	if err != nil {
		return nil, err
	}
	auth := identity.NewAuthenticator(identity.AuthConfig{Store: st, JWT: []identity.JWTVerifier{v}})
	idTok, err := prov.IDToken(oidctest.Claims{Subject: "sub-bob", PreferredUsername: "bob", Groups: []string{"platform"}, Expiry: time.Now().Add(24 * time.Hour)})
	if err != nil {
		return nil, err
	}

	apiTok := row{name: "authenticate an API token (SQLite, 1000 tokens)", unit: "µs"}
	oidcTok := row{name: "authenticate an OIDC ID token (keys cached; user, teams)", unit: "µs"}
	for _, c := range []struct {
		r     *row
		token string
	}{{&apiTok, secret}, {&oidcTok, idTok}} {
		if _, err := auth.Authenticate(ctx, c.token); err != nil { // warm: keys fetched, user made
			return nil, fmt.Errorf("identity: %s: %w", c.r.name, err)
		}
		for range n {
			start := time.Now()
			_, err := auth.Authenticate(ctx, c.token)
			c.r.samples = append(c.r.samples, us(time.Since(start)))
			if err != nil {
				return nil, fmt.Errorf("identity: %s: %w", c.r.name, err)
			}
		}
	}

	mint := row{name: "mint a session token (issuer.Mint, ES256)", unit: "µs"}
	is, err := issuer.New(filepath.Join(dir, "issuer"), "http://127.0.0.1:7070")
	if err != nil {
		return nil, err
	}
	claims := issuer.Claims{Subject: "user:alice", Session: "s1", Agent: "review-bot", Generation: 1}
	for range n {
		start := time.Now()
		_, err := is.Mint(claims, "sts.amazonaws.com", 0)
		mint.samples = append(mint.samples, us(time.Since(start)))
		if err != nil {
			return nil, fmt.Errorf("identity: %s: %w", mint.name, err)
		}
	}
	return []row{decide, apiTok, oidcTok, mint}, nil
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
