package sessiontoken_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/issuer"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/sessiontoken"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// rig is cove's issuer served on a loopback HTTP server, with its
// sessions and users in a real SQLite store.
type rig struct {
	st     *sqlite.Store
	is     *issuer.Issuer
	url    string
	minter sessiontoken.Minter
	v      *sessiontoken.Verifier
	alice  store.User
}

func newRig(t *testing.T) *rig {
	t.Helper()
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := httptest.NewUnstartedServer(nil)
	srv.Start()
	t.Cleanup(srv.Close)
	is, err := issuer.New(t.TempDir(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = is.Handler()
	alice := store.User{ID: "u_alice", Name: "alice", Kind: store.UserEngineer}
	if err := st.PutUser(ctx, alice); err != nil {
		t.Fatal(err)
	}
	if err := st.AddTeamMember(ctx, alice.ID, "platform"); err != nil {
		t.Fatal(err)
	}
	for _, s := range []store.Session{
		{ID: "s-1", State: api.StateRunning, Owner: alice.ID, Agent: "review-bot", TokenGen: 4},
		{ID: "s-2", State: api.StateRunning, Owner: alice.ID},
	} {
		if err := st.CreateSession(ctx, &s); err != nil {
			t.Fatal(err)
		}
	}
	return &rig{st: st, is: is, url: srv.URL, minter: sessiontoken.Minter{Issuer: is},
		v: &sessiontoken.Verifier{Issuer: is, Audience: srv.URL, Records: st}, alice: alice}
}

// mint mints a token for the stored session id, as the manager does.
func (r *rig) mint(t *testing.T, id, aud string, ttl time.Duration) string {
	t.Helper()
	rec, err := r.st.GetSession(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := r.minter.MintSessionToken(rec, aud, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestSessionTokenVerifiesWithOIDC: a session token verifies with
// coreos/go-oidc against cove's discovery document and JWKS fetched over
// HTTP, as a company's API would, with sub the session's owner, act its
// session and agent, aud as asked, and a lifetime of the default 5
// minutes.
func TestSessionTokenVerifiesWithOIDC(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	tok := r.mint(t, "s-1", "https://api.example.com", 0)
	prov, err := oidc.NewProvider(ctx, r.url)
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	idt, err := prov.Verifier(&oidc.Config{ClientID: "https://api.example.com", SupportedSigningAlgs: []string{"ES256"}}).Verify(ctx, tok)
	if err != nil {
		t.Fatalf("go-oidc verify: %v", err)
	}
	var c struct {
		Sub string `json:"sub"`
		Act struct {
			Sub   string `json:"sub"`
			Agent string `json:"agent"`
		} `json:"act"`
		Session string `json:"cove_session"`
		Gen     uint64 `json:"cove_gen"`
		Exp     int64  `json:"exp"`
		Iat     int64  `json:"iat"`
		JTI     string `json:"jti"`
	}
	if err := idt.Claims(&c); err != nil {
		t.Fatal(err)
	}
	if c.Sub != r.alice.ID || c.Act.Sub != "session:s-1" || c.Act.Agent != "review-bot" || c.Session != "s-1" || c.Gen != 4 || c.JTI == "" {
		t.Errorf("claims %+v; want sub %s, act session:s-1 review-bot, generation 4, a jti", c, r.alice.ID)
	}
	if life := time.Duration(c.Exp-c.Iat) * time.Second; life != 5*time.Minute {
		t.Errorf("lifetime %v, want the default 5m", life)
	}
	if _, err := prov.Verifier(&oidc.Config{ClientID: "https://other.example.com"}).Verify(ctx, tok); err == nil {
		t.Error("go-oidc accepted the token for another audience")
	}
}

// TestVerifierAcceptsOnlyLiveTokens: cove's API takes a session token of
// a running session at its current generation, as that session's agent
// acting for its owner; it refuses, with the reason, tokens expired,
// from before a park, of a revoked session (even of its current
// generation, and for good), of a removed session, of a gone owner, for
// another audience, signed by another key under cove's name; and passes
// on (ErrUnknownToken) tokens of issuers it is not. The minter mints none
// for a revoked session.
func TestVerifierAcceptsOnlyLiveTokens(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	p, err := r.v.Verify(ctx, r.mint(t, "s-1", r.url, 0))
	if err != nil {
		t.Fatalf("a live token: %v", err)
	}
	if p.Kind != identity.KindAgent || p.Session != "s-1" || p.User.ID != r.alice.ID || len(p.Teams) != 1 || p.Teams[0] != "platform" {
		t.Fatalf("principal %+v; want the agent of s-1 for alice, in platform", p)
	}

	forger, err := issuer.New(t.TempDir(), r.url) // cove's URL, another key
	if err != nil {
		t.Fatal(err)
	}
	forged, err := forger.Mint(issuer.Claims{Subject: r.alice.ID, Session: "s-1", Generation: 4}, r.url, 0)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := issuer.New(t.TempDir(), "https://idp.example.com")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := stranger.Mint(issuer.Claims{Subject: r.alice.ID, Session: "s-1", Generation: 4}, r.url, 0)
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-2 * time.Hour)
	r.is.Now = func() time.Time { return past }
	expired := r.mint(t, "s-1", r.url, time.Minute)
	r.is.Now = nil
	wrongAud := r.mint(t, "s-1", "https://api.example.com", 0)

	cases := []struct {
		name, tok string
		want      error
		says      string
	}{
		{"expired", expired, identity.ErrExpired, "expired"},
		{"wrong audience", wrongAud, identity.ErrInvalidToken, "audience"},
		{"another key", forged, identity.ErrInvalidToken, "not one of this issuer's"},
		{"unconfigured issuer", foreign, identity.ErrUnknownToken, "not a session token of issuer"},
		{"not a JWT", "a.b.c", identity.ErrUnknownToken, "not a session token"},
	}
	for _, c := range cases {
		_, err := r.v.Verify(ctx, c.tok)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v; want %v saying %q", c.name, err, c.want, c.says)
		}
	}

	// A new generation (as a park makes): the token in hand dies at
	// once; a new one holds.
	before := r.mint(t, "s-1", r.url, 0)
	if _, err := r.st.BumpTokenGen(ctx, "s-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.v.Verify(ctx, before); !errors.Is(err, identity.ErrRevoked) || !strings.Contains(err.Error(), "generation 4") {
		t.Errorf("after a new generation: %v; want ErrRevoked naming generation 4", err)
	}
	after := r.mint(t, "s-1", r.url, 0)
	if _, err := r.v.Verify(ctx, after); err != nil {
		t.Errorf("a token minted after the new generation: %v", err)
	}

	// A parked session takes no token, even one of its generation.
	rec, _ := r.st.GetSession(ctx, "s-1")
	rec.State = api.StateParked
	if err := r.st.UpdateSession(ctx, &rec); err != nil {
		t.Fatal(err)
	}
	if _, err := r.v.Verify(ctx, after); !errors.Is(err, identity.ErrRevoked) || !strings.Contains(err.Error(), "parked") {
		t.Errorf("while parked: %v; want ErrRevoked saying parked", err)
	}

	// Revoked: the token in hand dies, the minter refuses the session,
	// and a token of its new generation (signed by cove's own key) is
	// refused too, whatever happens to the session after.
	tok2 := r.mint(t, "s-2", r.url, 0)
	gen, err := r.st.RevokeSessionTokens(ctx, "s-2", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	revokedRec, err := r.st.GetSession(ctx, "s-2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.minter.MintSessionToken(revokedRec, r.url, 0); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("minting for a revoked session: %v; want refused saying revoked", err)
	}
	current, err := r.is.Mint(issuer.Claims{Subject: r.alice.ID, Session: "s-2", Generation: gen}, r.url, 0)
	if err != nil {
		t.Fatal(err)
	}
	revokedRec.State = api.StateRunning // a stale write of the record (a wake's)
	revokedRec.TokensRevokedAt = time.Time{}
	if err := r.st.UpdateSession(ctx, &revokedRec); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"from before the revoke": tok2, "of the current generation": current} {
		if _, err := r.v.Verify(ctx, tok); !errors.Is(err, identity.ErrRevoked) || !strings.Contains(err.Error(), "revoked at") {
			t.Errorf("a token %s of a revoked session: %v; want ErrRevoked saying revoked at", name, err)
		}
	}

	// Removed: dead.
	if err := r.st.DeleteSession(ctx, "s-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.v.Verify(ctx, tok2); !errors.Is(err, identity.ErrRevoked) || !strings.Contains(err.Error(), "gone") {
		t.Errorf("after rm: %v; want ErrRevoked saying gone", err)
	}
}

// TestSessionTokenOwnOperationsOnly: through the real Authenticator and
// the policy gate with the default policy, a session's token may park its
// own session and read its events, and nothing else: not another session
// of the same owner, not exec, files, get, list, revoke or create.
func TestSessionTokenOwnOperationsOnly(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	authn := identity.NewAuthenticator(identity.AuthConfig{Store: r.st, JWT: []identity.JWTVerifier{r.v}})
	p, err := authn.Authenticate(ctx, r.mint(t, "s-1", r.url, 0))
	if err != nil {
		t.Fatal(err)
	}
	g := &apiserver.PolicyGate{Policy: policy.New(), Records: r.st}
	actx := identity.NewContext(ctx, p)
	if err := g.Authorize(actx, apiserver.Action{Verb: "session.park", SessionID: "s-1"}); err != nil {
		t.Errorf("park itself: %v", err)
	}
	for _, a := range []apiserver.Action{
		{Verb: "session.park", SessionID: "s-2"},
		{Verb: "session.revoke", SessionID: "s-1"},
		{Verb: "session.exec", SessionID: "s-1", Argv: []string{"id"}},
		{Verb: "file.read", SessionID: "s-1", Path: "/etc/passwd"},
		{Verb: "session.get", SessionID: "s-1"},
		{Verb: "session.delete", SessionID: "s-1"},
		{Verb: "session.list"},
		{Verb: "session.create"},
	} {
		err := g.Authorize(actx, a)
		if !api.IsCode(err, api.CodeForbidden) || !strings.Contains(err.Error(), "identity token") && !strings.Contains(err.Error(), "no policy permits") {
			t.Errorf("the agent of s-1 asks %s on %q: %v; want 403 with the reason", a.Verb, a.SessionID, err)
		}
	}
}

func BenchmarkMintSessionToken(b *testing.B) {
	is, err := issuer.New(b.TempDir(), "https://cove.example.com")
	if err != nil {
		b.Fatal(err)
	}
	m := sessiontoken.Minter{Issuer: is}
	rec := store.Session{ID: "s-1", Owner: "u_alice", Agent: "review-bot", TokenGen: 3}
	for b.Loop() {
		if _, err := m.MintSessionToken(rec, "https://api.example.com", 0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifySessionToken(b *testing.B) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "state.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	const url = "https://cove.example.com"
	is, err := issuer.New(b.TempDir(), url)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.PutUser(ctx, store.User{ID: "u_alice", Name: "alice", Kind: store.UserEngineer}); err != nil {
		b.Fatal(err)
	}
	rec := store.Session{ID: "s-1", State: api.StateRunning, Owner: "u_alice"}
	if err := st.CreateSession(ctx, &rec); err != nil {
		b.Fatal(err)
	}
	tok, err := sessiontoken.Minter{Issuer: is}.MintSessionToken(rec, url, 0)
	if err != nil {
		b.Fatal(err)
	}
	v := &sessiontoken.Verifier{Issuer: is, Audience: url, Records: st}
	for b.Loop() {
		if _, err := v.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}
