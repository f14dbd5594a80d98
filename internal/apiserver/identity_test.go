package apiserver

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/issuer"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/sessiontoken"
)

// issuerEnv is cove server as cmd/cove wires it with its issuer: the
// policyEnv's parts, the session manager minting tokens, the API serving
// the issuer's documents and taking its session tokens.
type issuerEnv struct {
	*policyEnv
	minter sessiontoken.Minter
}

func newIssuerEnv(t *testing.T) *issuerEnv {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	srv.Start()
	t.Cleanup(srv.Close)
	is, err := issuer.New(t.TempDir(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	minter := sessiontoken.Minter{Issuer: is}
	mgr, st, _ := newFakeManager(t, func(c *session.Config) { c.Tokens = minter })
	e := &policyEnv{testEnv: &testEnv{t: t, images: &fakeImages{}, logs: &logSink{}, admin: &harnessAdmin{dir: &identity.Directory{Store: st}}}, st: st, mgr: mgr, engine: policy.New()}
	verifier := &sessiontoken.Verifier{Issuer: is, Audience: is.URL(), Records: st}
	e.server = New(Config{Sessions: mgr, Images: e.images, Token: testToken, Issuer: is.Handler(),
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{AdminToken: testToken, Store: st, JWT: []identity.JWTVerifier{verifier}}),
		Identities:    &identity.Directory{Store: st},
		Authorize:     (&PolicyGate{Policy: e.engine, Records: st}).Authorize,
		Log:           slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	srv.Config.Handler = e.server.Handler()
	e.srv = srv
	return &issuerEnv{policyEnv: e, minter: minter}
}

// token mints session id's identity token for aud as its guest would get
// it: from the session's record as it is now.
func (e *issuerEnv) token(t *testing.T, id, aud string) string {
	t.Helper()
	rec, err := e.st.GetSession(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := e.minter.MintSessionToken(rec, aud, 0)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestSessionTokenOnTheAPI: the API serves cove's discovery document and
// JWKS without a token, and go-oidc verifies a session token against
// them. On the API a session's token parks its own session, and nothing
// else: another session of the same owner, reading, exec and revoking
// are 403 with the reason. The park kills it (401, saying why); a fresh
// one after the wake holds until the owner revokes it, which another
// engineer may not; after the revoke no token is minted for the session;
// a token for another audience is refused.
func TestSessionTokenOnTheAPI(t *testing.T) {
	e := newIssuerEnv(t)
	alice := e.person(t, "alice", "")
	bob := e.person(t, "bob", "")
	mine := e.createSession(t, alice, api.CreateSessionRequest{Agent: "review-bot"})
	other := e.createSession(t, alice, api.CreateSessionRequest{})

	// Public, and good enough for a standard verifier.
	disc := e.do("GET", issuer.DiscoveryPath, nil, "Authorization", "")
	if disc.StatusCode != 200 || disc.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("discovery: %d %s", disc.StatusCode, disc.Header.Get("Content-Type"))
	}
	ctx := t.Context()
	prov, err := oidc.NewProvider(ctx, e.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	tok := e.token(t, mine.ID, e.srv.URL)
	idt, err := prov.Verifier(&oidc.Config{ClientID: e.srv.URL}).Verify(ctx, tok)
	if err != nil || idt.Subject != alice.ID {
		t.Fatalf("go-oidc: %v, sub %v; want sub %s", err, idt, alice.ID)
	}

	as := authAs(tok)
	for _, c := range []struct{ method, path, says string }{
		{"POST", "/v1/sessions/" + other.ID + "/park", "no policy permits session.park"},
		{"GET", "/v1/sessions/" + mine.ID, "session.read"},
		{"POST", "/v1/sessions/" + mine.ID + "/revoke", "session.revoke"},
		{"GET", "/v1/sessions/" + mine.ID + "/files/stat?path=/", "session.files"},
		{"GET", "/v1/sessions", "session.list"},
	} {
		body := wantError(t, e.do(c.method, c.path, nil, as...), http.StatusForbidden, api.CodeForbidden)
		if !strings.Contains(body.Message, c.says) {
			t.Errorf("%s %s with the session token: 403 %q; want it to say %q", c.method, c.path, body.Message, c.says)
		}
	}
	if resp := e.doJSON("POST", "/v1/sessions/"+mine.ID+"/exec", api.ExecRequest{Argv: []string{"true"}}, as...); resp.StatusCode != http.StatusForbidden {
		t.Errorf("exec with the session token: %d, want 403", resp.StatusCode)
	}

	parked := decode[api.Session](t, e.do("POST", "/v1/sessions/"+mine.ID+"/park", nil, as...), 200)
	if parked.State != api.StateParked {
		t.Fatalf("parked itself: %s", parked.State)
	}
	if body := wantError(t, e.do("POST", "/v1/sessions/"+mine.ID+"/park", nil, as...), http.StatusUnauthorized, api.CodeUnauthorized); !strings.Contains(body.Message, "revoked") {
		t.Errorf("the token after its park: %q; want revoked", body.Message)
	}
	decode[api.Session](t, e.do("POST", "/v1/sessions/"+mine.ID+"/wake", nil, alice.auth()...), 200)

	fresh := e.token(t, mine.ID, e.srv.URL)
	if body := wantError(t, e.do("POST", "/v1/sessions/"+mine.ID+"/park", nil, authAs(e.token(t, mine.ID, "https://api.example.com"))...), http.StatusUnauthorized, api.CodeUnauthorized); !strings.Contains(body.Message, "audience") {
		t.Errorf("a token for another audience: %q; want it to name the audience", body.Message)
	}
	wantError(t, e.do("POST", "/v1/sessions/"+mine.ID+"/revoke", nil, bob.auth()...), http.StatusForbidden, api.CodeForbidden)
	revoked := decode[api.Session](t, e.do("POST", "/v1/sessions/"+mine.ID+"/revoke", nil, alice.auth()...), 200)
	if revoked.State != api.StateRunning {
		t.Errorf("revoke left the session %s, want running", revoked.State)
	}
	if body := wantError(t, e.do("POST", "/v1/sessions/"+mine.ID+"/park", nil, authAs(fresh)...), http.StatusUnauthorized, api.CodeUnauthorized); !strings.Contains(body.Message, "revoked") {
		t.Errorf("the token after revoke: %q; want revoked", body.Message)
	}
	rec, err := e.st.GetSession(ctx, mine.ID)
	if err != nil || rec.TokensRevokedAt.IsZero() {
		t.Fatalf("the record after revoke: %+v, %v; want it marked revoked", rec, err)
	}
	if tok, err := e.minter.MintSessionToken(rec, e.srv.URL, 0); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("a token for the revoked session: %.20q, %v; want refused", tok, err)
	}
}
