package issuer_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cove-dev/cove/internal/issuer"
)

const testURL = "https://cove.example.com"

var alice = issuer.Claims{Subject: "user:alice", Session: "s-0123", Agent: "claude", Generation: 3}

func newIssuer(t testing.TB, dir, url string) *issuer.Issuer {
	t.Helper()
	is, err := issuer.New(dir, url)
	if err != nil {
		t.Fatal(err)
	}
	return is
}

func mint(t testing.TB, is *issuer.Issuer, c issuer.Claims, aud string, ttl time.Duration) string {
	t.Helper()
	tok, err := is.Mint(c, aud, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// serve starts a loopback HTTP server for an issuer whose URL is the
// server's URL plus path, and counts the JWKS fetches.
func serve(t *testing.T, path string) (*issuer.Issuer, *httptest.Server, *atomic.Int64) {
	t.Helper()
	var h atomic.Pointer[http.Handler]
	var jwksFetches atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, issuer.JWKSPath) {
			jwksFetches.Add(1)
		}
		(*h.Load()).ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	is := newIssuer(t, t.TempDir(), srv.URL+path)
	handler := is.Handler()
	h.Store(&handler)
	return is, srv, &jwksFetches
}

// A token verifies with a standard OIDC library (the verifier AWS and GCP
// federation stand for) that knows only the issuer URL: it fetches the
// discovery document and the JWKS over HTTP, and finds the claims cove
// promised.
func TestTokenVerifiesWithGoOIDC(t *testing.T) {
	for _, path := range []string{"", "/issuer"} {
		t.Run("path="+path, func(t *testing.T) {
			is, srv, jwksFetches := serve(t, path)
			ctx := oidc.ClientContext(context.Background(), srv.Client())
			provider, err := oidc.NewProvider(ctx, is.URL())
			if err != nil {
				t.Fatal(err)
			}
			const aud = "sts.amazonaws.com"
			tok := mint(t, is, alice, aud, 10*time.Minute)
			idt, err := provider.Verifier(&oidc.Config{ClientID: aud}).Verify(ctx, tok)
			if err != nil {
				t.Fatalf("go-oidc refused a session token: %v", err)
			}
			if jwksFetches.Load() == 0 {
				t.Fatal("go-oidc verified without fetching the JWKS")
			}
			if idt.Issuer != is.URL() || idt.Subject != "user:alice" || len(idt.Audience) != 1 || idt.Audience[0] != aud {
				t.Errorf("iss %q sub %q aud %q", idt.Issuer, idt.Subject, idt.Audience)
			}
			if life := idt.Expiry.Sub(idt.IssuedAt); life != 10*time.Minute {
				t.Errorf("exp - iat = %v, want 10m", life)
			}
			var extra struct {
				Act struct {
					Sub   string `json:"sub"`
					Agent string `json:"agent"`
				} `json:"act"`
				Session string  `json:"cove_session"`
				Gen     *uint64 `json:"cove_gen"`
				JTI     string  `json:"jti"`
				NBF     int64   `json:"nbf"`
			}
			if err := idt.Claims(&extra); err != nil {
				t.Fatal(err)
			}
			if extra.Act.Sub != "session:s-0123" || extra.Act.Agent != "claude" || extra.Session != "s-0123" ||
				extra.Gen == nil || *extra.Gen != 3 || extra.JTI == "" || extra.NBF != idt.IssuedAt.Unix() {
				t.Errorf("claims %+v", extra)
			}

			// The same verifier refuses another audience and another key.
			if _, err := provider.Verifier(&oidc.Config{ClientID: "other"}).Verify(ctx, tok); err == nil {
				t.Error("go-oidc took a token for another audience")
			}
			stranger := newIssuer(t, t.TempDir(), is.URL())
			if _, err := provider.Verifier(&oidc.Config{ClientID: aud}).Verify(ctx, mint(t, stranger, alice, aud, 0)); err == nil {
				t.Error("go-oidc took a token signed by a key the JWKS does not hold")
			}
		})
	}
}

// A second jti differs: each token is told apart in logs.
func TestMintGivesEachTokenItsOwnID(t *testing.T) {
	is := newIssuer(t, t.TempDir(), testURL)
	jti := func(tok string) string {
		t.Helper()
		var c jwt.Claims
		if err := unsafeClaims(tok, &c); err != nil {
			t.Fatal(err)
		}
		return c.ID
	}
	a, b := jti(mint(t, is, alice, "x", 0)), jti(mint(t, is, alice, "x", 0))
	if a == "" || a == b {
		t.Errorf("jti %q then %q", a, b)
	}
}

func unsafeClaims(tok string, dest any) error {
	p, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return err
	}
	return p.UnsafeClaimsWithoutVerification(dest)
}

func TestVerifyReturnsTheClaims(t *testing.T) {
	is := newIssuer(t, t.TempDir(), testURL)
	got, err := is.Verify(mint(t, is, alice, "cove", 0), "cove")
	if err != nil {
		t.Fatal(err)
	}
	if got != alice {
		t.Errorf("got %+v, want %+v", got, alice)
	}
	// The largest token Mint makes is one Verify takes.
	big := issuer.Claims{Subject: strings.Repeat("\u00e9", issuer.MaxClaim/2), Session: strings.Repeat("s", issuer.MaxClaim), Agent: strings.Repeat("a", issuer.MaxClaim), Generation: ^uint64(0)}
	bigAud := strings.Repeat("\u00e9", issuer.MaxAudience/2)
	if got, err := is.Verify(mint(t, is, big, bigAud, issuer.MaxTTL), bigAud); err != nil || got != big {
		t.Errorf("largest claims: got %+v, %v", got, err)
	}
	noAgent := issuer.Claims{Subject: "https://idp.example.com|1234", Session: "s-9"}
	if got, err := is.Verify(mint(t, is, noAgent, "cove", 0), "cove"); err != nil || got != noAgent {
		t.Errorf("got %+v, %v; want %+v", got, err, noAgent)
	}
}

func TestMintTTL(t *testing.T) {
	is := newIssuer(t, t.TempDir(), testURL)
	for _, tc := range []struct {
		ttl, want time.Duration
	}{{0, issuer.DefaultTTL}, {time.Minute, time.Minute}, {issuer.MaxTTL, issuer.MaxTTL}} {
		var c jwt.Claims
		if err := unsafeClaims(mint(t, is, alice, "x", tc.ttl), &c); err != nil {
			t.Fatal(err)
		}
		if got := c.Expiry.Time().Sub(c.IssuedAt.Time()); got != tc.want {
			t.Errorf("ttl %v: lifetime %v, want %v", tc.ttl, got, tc.want)
		}
	}
}

func TestMintRefusesBadInput(t *testing.T) {
	is := newIssuer(t, t.TempDir(), testURL)
	for _, tc := range []struct {
		name string
		c    issuer.Claims
		aud  string
		ttl  time.Duration
		want string
	}{
		{"no subject", issuer.Claims{Session: "s"}, "a", 0, "subject is empty"},
		{"no session", issuer.Claims{Subject: "u"}, "a", 0, "session is empty"},
		{"no audience", alice, "", 0, "audience is empty"},
		{"long audience", alice, strings.Repeat("a", issuer.MaxAudience+1), 0, "audience is 257 bytes, over the 256-byte limit"},
		{"control in audience", alice, "a\nb", 0, "audience \"a\\nb\" has a control character"},
		{"DEL in audience", alice, "a\x7f", 0, "control character"},
		{"not UTF-8", alice, "a\xff", 0, "not valid UTF-8"},
		{"long subject", issuer.Claims{Subject: strings.Repeat("u", issuer.MaxClaim+1), Session: "s"}, "a", 0, "subject is 513 bytes"},
		{"control in agent", issuer.Claims{Subject: "u", Session: "s", Agent: "a\x00"}, "a", 0, "agent"},
		{"ttl over max", alice, "a", issuer.MaxTTL + time.Second, "ttl 1h0m1s is over the 1h0m0s maximum"},
		{"negative ttl", alice, "a", -time.Second, "negative"},
		{"escaped past the token limit", issuer.Claims{Subject: strings.Repeat("<", issuer.MaxClaim), Session: strings.Repeat("<", issuer.MaxClaim), Agent: strings.Repeat("<", issuer.MaxClaim)}, strings.Repeat("<", issuer.MaxAudience), 0, "over the 8192-byte limit Verify holds to"},
	} {
		tok, err := is.Mint(tc.c, tc.aud, tc.ttl)
		if err == nil || !strings.Contains(err.Error(), tc.want) || tok != "" {
			t.Errorf("%s: got %q, %v; want an error with %q", tc.name, tok, err, tc.want)
		}
	}
}

// signWith signs claims with the key kept in dir, as the issuer would,
// so that the checks after the signature's can be reached.
func signWith(t *testing.T, dir string, a jose.SignatureAlgorithm, claims any) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, issuer.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(b); err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: a, Key: k}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestVerifyRefuses(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	is := newIssuer(t, dir, testURL)
	good := mint(t, is, alice, "cove", 0)
	if _, err := is.Verify(good, "cove"); err != nil {
		t.Fatalf("a good token: %v", err)
	}
	header, payload, sig := split(t, good)

	past := newIssuer(t, dir, testURL)
	past.Now = func() time.Time { return now.Add(-time.Hour) }
	future := newIssuer(t, dir, testURL)
	future.Now = func() time.Time { return now.Add(2 * time.Minute) }
	otherURL := newIssuer(t, dir, "https://other.example.com") // same key, other iss
	otherKey := newIssuer(t, t.TempDir(), testURL)

	// The payload with sub changed, under the good signature.
	var p map[string]any
	decode(t, payload, &p)
	p["sub"] = "user:mallory"
	tampered := header + "." + encode(t, p) + "." + sig

	// alg none, and HS256 keyed by the public JWK (alg confusion).
	none := encode(t, map[string]string{"alg": "none", "typ": "JWT", "kid": is.KeyID()}) + "." + payload + "."
	hs, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: is.JWKS()}, (&jose.SignerOptions{}).WithHeader("kid", is.KeyID()))
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	decode(t, payload, &claims)
	hs256, err := jwt.Signed(hs).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}

	valid := func(edit func(m map[string]any)) string {
		m := map[string]any{}
		decode(t, payload, &m)
		edit(m)
		return signWith(t, dir, jose.ES256, m)
	}
	unix := now.Unix()

	for _, tc := range []struct {
		name, token, aud, want string
	}{
		{"expired", mint(t, past, alice, "cove", 15*time.Minute), "cove", "token is expired"},
		{"not yet valid", mint(t, future, alice, "cove", 0), "cove", "not valid yet"},
		{"wrong audience", good, "other", `audience ["cove"] does not include "other"`},
		{"another key", mint(t, otherKey, alice, "cove", 0), "cove", "not one of this issuer's"},
		{"another issuer", mint(t, otherURL, alice, "cove", 0), "cove", `issuer is "https://other.example.com"`},
		{"tampered payload", tampered, "cove", "signature or payload"},
		{"tampered signature", header + "." + payload + "." + sig[:len(sig)-4] + "AAAA", "cove", "signature or payload"},
		{"alg none", none, "cove", "not a compact JWS signed ES256"},
		{"alg HS256", hs256, "cove", "not a compact JWS signed ES256"},
		{"oversized", good + strings.Repeat("A", issuer.MaxTokenSize), "cove", "over the 8192-byte limit"},
		{"garbage", "not.a.jwt", "cove", "not a compact JWS"},
		{"empty", "", "cove", "not a compact JWS"},
		{"no exp", valid(func(m map[string]any) { delete(m, "exp") }), "cove", "no exp or iat"},
		{"lifetime over max", valid(func(m map[string]any) { m["exp"] = unix + 2*3600 }), "cove", "lifetime 2h0m0s is over"},
		{"act names another session", valid(func(m map[string]any) { m["act"] = map[string]string{"sub": "session:s-other"} }), "cove", `act.sub "session:s-other" does not name session "s-0123"`},
		{"no session", valid(func(m map[string]any) { delete(m, "cove_session") }), "cove", "no sub or cove_session"},
	} {
		c, err := is.Verify(tc.token, tc.aud)
		if !errors.Is(err, issuer.ErrInvalidToken) || !strings.Contains(err.Error(), tc.want) || c != (issuer.Claims{}) {
			t.Errorf("%s: got %+v, %v; want ErrInvalidToken with %q", tc.name, c, err, tc.want)
		}
	}

	// The edits that must fail are the only difference: unedited, the
	// re-signed payload verifies.
	if _, err := is.Verify(valid(func(map[string]any) {}), "cove"); err != nil {
		t.Errorf("re-signed good payload: %v", err)
	}
	if _, err := is.Verify(good, ""); err == nil {
		t.Error("verified with no audience asked for")
	}
}

// A token a little past exp, within the leeway, is still good: clocks of
// the host and of whoever minted it differ by a few seconds.
func TestVerifyLeeway(t *testing.T) {
	dir := t.TempDir()
	is := newIssuer(t, dir, testURL)
	start := time.Now()
	is.Now = func() time.Time { return start }
	tok := mint(t, is, alice, "cove", time.Minute)
	later := newIssuer(t, dir, testURL)
	later.Now = func() time.Time { return start.Add(time.Minute + issuer.Leeway/2) }
	if _, err := later.Verify(tok, "cove"); err != nil {
		t.Errorf("within leeway: %v", err)
	}
	later.Now = func() time.Time { return start.Add(time.Minute + 2*issuer.Leeway) }
	if _, err := later.Verify(tok, "cove"); !errors.Is(err, issuer.ErrInvalidToken) {
		t.Errorf("past leeway: %v", err)
	}
}

func split(t *testing.T, tok string) (string, string, string) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	return parts[0], parts[1], parts[2]
}

func decode(t *testing.T, part string, v any) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func encode(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestNewRefusesBadIssuerURL(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"", "scheme must be https"},
		{"cove.example.com", "scheme must be https"},
		{"ftp://cove.example.com", "scheme must be https"},
		{"https://", "no host"},
		{"https://cove.example.com/", "no trailing slash"},
		{"https://cove.example.com?x=1", "no user, query or fragment"},
		{"https://cove.example.com#f", "no user, query or fragment"},
		{"https://u:p@cove.example.com", "no user, query or fragment"},
		{"https://cove.example.com/{id}", "path may hold only"},
		{"https://cove.example.com/a//b", "path may hold only"},
		{"https://cove.example.com/a/../b", "path may hold only"},
		{"http://cove.example.com", "http is for loopback hosts only"},
		{"http://10.0.0.1:7070", "http is for loopback hosts only"},
	} {
		dir := t.TempDir()
		if _, err := issuer.New(dir, tc.url); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.url, err, tc.want)
		}
		if _, err := os.Stat(filepath.Join(dir, issuer.KeyFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%q: a refused issuer left a key file (%v)", tc.url, err)
		}
	}
	for _, ok := range []string{"https://cove.example.com", "https://cove.example.com:8443/issuer/v1", "http://127.0.0.1:7070", "http://localhost:7070", "http://[::1]:7070"} {
		if _, err := issuer.New(t.TempDir(), ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}
