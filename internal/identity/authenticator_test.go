package identity

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time // guarded by mu
}

func newClock() *clock { return &clock{t: time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// countingStore is a real store that counts the token lookups and
// LastUsedAt writes made through it.
type countingStore struct {
	Store
	lookups, touches atomic.Int32
}

func (s *countingStore) GetTokenByHash(ctx context.Context, hash [32]byte) (store.Token, error) {
	s.lookups.Add(1)
	return s.Store.GetTokenByHash(ctx, hash)
}

func (s *countingStore) TouchToken(ctx context.Context, id string, at time.Time) error {
	s.touches.Add(1)
	return s.Store.TouchToken(ctx, id, at)
}

// testEnv is a real SQLite store with a Directory and an Authenticator
// over it, on one settable clock.
type testEnv struct {
	st    *countingStore
	clock *clock
	dir   *Directory
	auth  *Authenticator
}

const adminToken = "0123456789abcdef0123456789abcdef"

func newTestEnv(t testing.TB, jwts ...JWTVerifier) *testEnv {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "cove.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &testEnv{st: &countingStore{Store: st}, clock: newClock()}
	e.dir = &Directory{Store: e.st, Now: e.clock.Now}
	e.auth = NewAuthenticator(AuthConfig{AdminToken: adminToken, Store: e.st, JWT: jwts, Now: e.clock.Now})
	return e
}

func (e *testEnv) addUser(t testing.TB, name, kind string, teams ...string) api.User {
	t.Helper()
	u, err := e.dir.AddUser(context.Background(), api.CreateUserRequest{Name: name, Kind: kind, Teams: teams})
	if err != nil {
		t.Fatalf("AddUser(%s): %v", name, err)
	}
	return u
}

func (e *testEnv) mint(t testing.TB, req api.CreateTokenRequest) api.CreatedToken {
	t.Helper()
	tok, err := e.dir.CreateToken(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateToken(%+v): %v", req, err)
	}
	return tok
}

// NewToken's secrets have their documented shape, differ each time, and
// hash as HashToken says.
func TestNewToken(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		secret, hash := NewToken()
		if !strings.HasPrefix(secret, "cove_") || len(secret) != 48 || !isAPIToken(secret) {
			t.Fatalf("secret %q: want cove_ and 43 base64url characters", secret)
		}
		if hash != HashToken(secret) {
			t.Fatalf("hash of %q is not HashToken of it", secret)
		}
		if seen[secret] {
			t.Fatalf("secret %q made twice", secret)
		}
		seen[secret] = true
	}
	for _, s := range []string{"", "cove_", "cove_" + strings.Repeat("a", 42), "cove_" + strings.Repeat("a", 42) + "=", "xove_" + strings.Repeat("a", 43)} {
		if isAPIToken(s) {
			t.Errorf("isAPIToken(%q) = true", s)
		}
	}
}

// The admin token authenticates as KindAdminToken; near misses do not,
// and with no admin token configured the empty bearer is not it.
func TestAuthenticateAdminToken(t *testing.T) {
	e := newTestEnv(t)
	p, err := e.auth.Authenticate(t.Context(), adminToken)
	if err != nil || p.Kind != KindAdminToken || !p.IsAdmin() || p.User.ID != "" {
		t.Fatalf("admin token: %+v, %v", p, err)
	}
	for _, bad := range []string{"", adminToken[:31], adminToken + "0", strings.ToUpper(adminToken)} {
		if _, err := e.auth.Authenticate(t.Context(), bad); !errors.Is(err, ErrUnknownToken) {
			t.Errorf("Authenticate(%q) = %v, want ErrUnknownToken", bad, err)
		}
	}
	none := NewAuthenticator(AuthConfig{})
	if _, err := none.Authenticate(t.Context(), ""); !errors.Is(err, ErrUnknownToken) {
		t.Errorf("no admin token configured: Authenticate(\"\") = %v, want ErrUnknownToken", err)
	}
	if n := e.st.lookups.Load(); n != 0 {
		t.Errorf("%d token lookups for bearers that are no API token", n)
	}
}

// An API token authenticates as its user, with the user's teams and the
// token's scopes; an admin user's token is an admin's, an engineer's is
// not.
func TestAuthenticateAPIToken(t *testing.T) {
	e := newTestEnv(t)
	alice := e.addUser(t, "alice", "", "platform", "backend")
	root := e.addUser(t, "root", api.UserAdmin)
	tok := e.mint(t, api.CreateTokenRequest{Name: "laptop", User: "alice", Scopes: []string{"session.read", "session.exec"}})
	adminTok := e.mint(t, api.CreateTokenRequest{Name: "ops", User: "root"})

	p, err := e.auth.Authenticate(t.Context(), tok.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if p.Kind != KindUser || p.User.ID != alice.ID || p.User.Name != "alice" || p.User.Kind != store.UserEngineer ||
		strings.Join(p.Teams, ",") != "backend,platform" || strings.Join(p.Scopes, ",") != "session.read,session.exec" {
		t.Errorf("principal %+v", p)
	}
	if p.IsAdmin() || !p.HasScope("session.exec") || p.HasScope("session") {
		t.Errorf("engineer: IsAdmin %v, HasScope(session:exec) %v", p.IsAdmin(), p.HasScope("session.exec"))
	}
	p, err = e.auth.Authenticate(t.Context(), adminTok.Secret)
	if err != nil || p.User.ID != root.ID || !p.IsAdmin() || len(p.Scopes) != 0 {
		t.Errorf("admin user's token: %+v, %v", p, err)
	}
	// An agent acting for an admin is no admin.
	if (Principal{Kind: KindAgent, User: p.User, Session: "s1"}).IsAdmin() {
		t.Error("an agent for an admin user is an admin")
	}
}

// What a principal creates is recorded as its user's, an agent's as the
// user it acts for, and the admin token's as store.OwnerAdmin, which no
// user's id can be.
func TestPrincipalOwner(t *testing.T) {
	e := newTestEnv(t)
	alice := e.addUser(t, "alice", "")
	tok := e.mint(t, api.CreateTokenRequest{Name: "laptop", User: "alice"})
	p, err := e.auth.Authenticate(t.Context(), tok.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if p.Owner() != alice.ID {
		t.Errorf("a user's Owner() = %q, want its id %q", p.Owner(), alice.ID)
	}
	if got := (Principal{Kind: KindAgent, User: p.User, Session: "s1"}).Owner(); got != alice.ID {
		t.Errorf("an agent's Owner() = %q, want the id of the user it acts for, %q", got, alice.ID)
	}
	admin, err := e.auth.Authenticate(t.Context(), adminToken)
	if err != nil || admin.Owner() != store.OwnerAdmin {
		t.Errorf("the admin token's Owner() = %q (%v), want %q", admin.Owner(), err, store.OwnerAdmin)
	}
	if strings.HasPrefix(store.OwnerAdmin, "u_") || !strings.HasPrefix(alice.ID, "u_") {
		t.Errorf("user id %q and OwnerAdmin %q could clash", alice.ID, store.OwnerAdmin)
	}
}

// Each refusal has its own error, and none of them changes the token.
func TestAuthenticateRefuses(t *testing.T) {
	e := newTestEnv(t)
	e.addUser(t, "alice", "")
	e.addUser(t, "bob", "")
	live := e.mint(t, api.CreateTokenRequest{Name: "live", User: "alice"})
	revoked := e.mint(t, api.CreateTokenRequest{Name: "revoked", User: "alice"})
	expiring := e.mint(t, api.CreateTokenRequest{Name: "expiring", User: "alice", ExpiresIn: "1h"})
	bobs := e.mint(t, api.CreateTokenRequest{Name: "bobs", User: "bob"})
	if _, err := e.dir.RevokeToken(t.Context(), revoked.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.dir.RemoveUser(t.Context(), "bob"); err != nil {
		t.Fatal(err)
	}
	unknown, _ := NewToken()

	wantErr := func(name, bearer string, want error, msg string) {
		t.Helper()
		p, err := e.auth.Authenticate(t.Context(), bearer)
		if !errors.Is(err, want) || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %+v, %v; want %v saying %q", name, p, err, want, msg)
		}
		if !IsRefusal(err) {
			t.Errorf("%s: %v is no refusal", name, err)
		}
		for _, other := range []error{ErrUnknownToken, ErrInvalidToken, ErrRevoked, ErrExpired, ErrTooLarge} {
			if other != want && errors.Is(err, other) {
				t.Errorf("%s: %v is also %v", name, err, other)
			}
		}
	}
	wantErr("unknown", unknown, ErrUnknownToken, "no such API token")
	wantErr("not a token", "hello", ErrUnknownToken, "neither an API token")
	wantErr("a token cut short", live.Secret[:47], ErrUnknownToken, "neither")
	wantErr("revoked", revoked.Secret, ErrRevoked, revoked.ID)
	wantErr("user removed", bobs.Secret, ErrRevoked, "revoked at")
	wantErr("too large", "cove_"+strings.Repeat("a", MaxBearerBytes), ErrTooLarge, "16389 bytes; the limit is 16384")
	wantErr("at the limit", strings.Repeat("a", MaxBearerBytes), ErrUnknownToken, "neither")

	if _, err := e.auth.Authenticate(t.Context(), expiring.Secret); err != nil {
		t.Fatalf("token before its expiry: %v", err)
	}
	e.clock.Advance(time.Hour - time.Nanosecond)
	if _, err := e.auth.Authenticate(t.Context(), expiring.Secret); err != nil {
		t.Fatalf("token a nanosecond before its expiry: %v", err)
	}
	e.clock.Advance(time.Nanosecond)
	wantErr("expired", expiring.Secret, ErrExpired, "expired at 2026-05-01T10:00:00Z")
	if _, err := e.auth.Authenticate(t.Context(), live.Secret); err != nil {
		t.Errorf("the live token after all that: %v", err)
	}
	// Lookups: unknown, revoked, bob's, expiring three times, live; never
	// for the malformed or oversized bearers.
	if n := e.st.lookups.Load(); n != 7 {
		t.Errorf("%d token lookups, want 7", n)
	}
	// The refused tokens were never marked used.
	toks, err := e.dir.ListTokens(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range toks {
		used := tok.LastUsedAt != nil
		if want := tok.Name == "live" || tok.Name == "expiring"; used != want {
			t.Errorf("token %s: used %v, want %v", tok.Name, used, want)
		}
	}
}

// LastUsedAt is written on first use and then at most once a minute, to
// the clock's time.
func TestLastUsedAtOncePerMinute(t *testing.T) {
	e := newTestEnv(t)
	e.addUser(t, "alice", "")
	tok := e.mint(t, api.CreateTokenRequest{Name: "ci", User: "alice"})
	lastUsed := func() time.Time {
		t.Helper()
		got, err := e.st.GetToken(t.Context(), tok.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.LastUsedAt
	}
	use := func() {
		t.Helper()
		if _, err := e.auth.Authenticate(t.Context(), tok.Secret); err != nil {
			t.Fatal(err)
		}
	}
	if !lastUsed().IsZero() {
		t.Fatal("a new token is marked used")
	}
	first := e.clock.Now()
	use()
	if got := lastUsed(); !got.Equal(first) {
		t.Fatalf("LastUsedAt after first use = %v, want %v", got, first)
	}
	for range 5 {
		e.clock.Advance(10 * time.Second)
		use()
	}
	if got, n := lastUsed(), e.st.touches.Load(); !got.Equal(first) || n != 1 {
		t.Errorf("after 5 uses within 50s: LastUsedAt %v, %d writes; want %v, 1", got, n, first)
	}
	e.clock.Advance(10 * time.Second) // a minute after the first use
	use()
	if got, n := lastUsed(), e.st.touches.Load(); !got.Equal(e.clock.Now()) || n != 2 {
		t.Errorf("a minute on: LastUsedAt %v, %d writes; want %v, 2", got, n, e.clock.Now())
	}
}

// hmacVerifier is a JWTVerifier for one issuer's HS256 tokens, built on
// go-jose: it knows users by their subject at that issuer.
type hmacVerifier struct {
	issuer string
	key    []byte
	users  Store
	now    func() time.Time
	calls  atomic.Int32
}

func (v *hmacVerifier) Verify(ctx context.Context, raw string) (Principal, error) {
	v.calls.Add(1)
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.HS256})
	if err != nil {
		return Principal{}, fmt.Errorf("%w: %v", ErrUnknownToken, err)
	}
	var c jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil || c.Issuer != v.issuer {
		return Principal{}, fmt.Errorf("%w: not issued by %s", ErrUnknownToken, v.issuer)
	}
	if err := tok.Claims(v.key, &c); err != nil {
		return Principal{}, fmt.Errorf("%w: %s token: %v", ErrInvalidToken, v.issuer, err)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: v.issuer, Time: v.now()}, 0); errors.Is(err, jwt.ErrExpired) {
		return Principal{}, fmt.Errorf("%w: %v", ErrExpired, err)
	} else if err != nil {
		return Principal{}, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	u, err := v.users.GetUserBySubject(ctx, v.issuer, c.Subject)
	if err != nil {
		return Principal{}, fmt.Errorf("%w: subject %s: %v", ErrUnknownToken, c.Subject, err)
	}
	return Principal{Kind: KindUser, User: u}, nil
}

func signJWT(t *testing.T, key []byte, c jwt.Claims) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(sig).Claims(c).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// A JWT goes to the verifiers in order: one that does not know its issuer
// passes it on, one that does decides (a wrong signature or an expiry is
// final), and a JWT that none knows is unknown. API tokens and the admin
// token never reach them.
func TestAuthenticateJWT(t *testing.T) {
	keyA, keyB := []byte(strings.Repeat("a", 32)), []byte(strings.Repeat("b", 32))
	a := &hmacVerifier{issuer: "https://a.example", key: keyA}
	b := &hmacVerifier{issuer: "https://b.example", key: keyB}
	e := newTestEnv(t, a, b)
	a.users, b.users, a.now, b.now = e.st, e.st, e.clock.Now, e.clock.Now
	if err := e.st.PutUser(t.Context(), store.User{ID: "u_zoe", Name: "zoe", Kind: store.UserEngineer,
		Issuer: "https://b.example", Subject: "zoe-at-b"}); err != nil {
		t.Fatal(err)
	}
	now := e.clock.Now()
	claims := func(iss, sub string, exp time.Time) jwt.Claims {
		return jwt.Claims{Issuer: iss, Subject: sub, IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(exp)}
	}

	p, err := e.auth.Authenticate(t.Context(), signJWT(t, keyB, claims(b.issuer, "zoe-at-b", now.Add(time.Hour))))
	if err != nil || p.Kind != KindUser || p.User.Name != "zoe" {
		t.Fatalf("b's token: %+v, %v", p, err)
	}
	if a.calls.Load() != 1 || b.calls.Load() != 1 {
		t.Errorf("verifier calls a=%d b=%d, want 1 each (a passes it on)", a.calls.Load(), b.calls.Load())
	}

	forged := signJWT(t, keyA, claims(b.issuer, "zoe-at-b", now.Add(time.Hour)))
	if _, err := e.auth.Authenticate(t.Context(), forged); !errors.Is(err, ErrInvalidToken) || !IsRefusal(err) {
		t.Errorf("b's claims signed with a's key: %v, want ErrInvalidToken", err)
	}
	expired := signJWT(t, keyB, claims(b.issuer, "zoe-at-b", now.Add(-time.Second)))
	if _, err := e.auth.Authenticate(t.Context(), expired); !errors.Is(err, ErrExpired) {
		t.Errorf("expired JWT: %v, want ErrExpired", err)
	}
	other := signJWT(t, keyA, claims("https://c.example", "x", now.Add(time.Hour)))
	if _, err := e.auth.Authenticate(t.Context(), other); !errors.Is(err, ErrUnknownToken) || !strings.Contains(err.Error(), `a JWT of issuer "https://c.example", which is not configured`) {
		t.Errorf("unconfigured issuer: %v, want ErrUnknownToken", err)
	}

	before := a.calls.Load() + b.calls.Load()
	e.addUser(t, "alice", "")
	tok := e.mint(t, api.CreateTokenRequest{Name: "n", User: "alice"})
	for _, bearer := range []string{tok.Secret, adminToken, "a.b", "a..c", "a.b.c.d", "a.b=.c"} {
		e.auth.Authenticate(t.Context(), bearer)
	}
	if after := a.calls.Load() + b.calls.Load(); after != before {
		t.Errorf("%d verifier calls for bearers that are no JWT", after-before)
	}

	none := NewAuthenticator(AuthConfig{Store: e.st})
	if _, err := none.Authenticate(t.Context(), other); !errors.Is(err, ErrUnknownToken) || !strings.Contains(err.Error(), "accepts none") {
		t.Errorf("no verifiers: %v, want ErrUnknownToken", err)
	}
}

// A principal travels in a context.
func TestPrincipalInContext(t *testing.T) {
	if _, ok := FromContext(t.Context()); ok {
		t.Error("a bare context has a principal")
	}
	p := Principal{Kind: KindAgent, User: store.User{ID: "u1", Name: "alice"}, Session: "s1"}
	got, ok := FromContext(NewContext(t.Context(), p))
	if !ok || got.Kind != KindAgent || got.User.ID != "u1" || got.Session != "s1" {
		t.Errorf("FromContext = %+v, %v", got, ok)
	}
}

// BenchmarkAuthenticateAPIToken measures authenticating an API token in
// use (its LastUsedAt fresh, so no write): the hash lookup, its user and
// teams, against a real SQLite store holding 1000 tokens.
func BenchmarkAuthenticateAPIToken(b *testing.B) {
	e := newTestEnv(b)
	e.addUser(b, "alice", "", "platform")
	var secret string
	for i := range 1000 {
		tok := e.mint(b, api.CreateTokenRequest{Name: fmt.Sprintf("t%d", i), User: "alice"})
		secret = tok.Secret
	}
	ctx := context.Background()
	if _, err := e.auth.Authenticate(ctx, secret); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		if _, err := e.auth.Authenticate(ctx, secret); err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Nanoseconds()), "p50-ns")
}

// BenchmarkAuthenticateAdminToken measures the bootstrap token's path.
func BenchmarkAuthenticateAdminToken(b *testing.B) {
	a := NewAuthenticator(AuthConfig{AdminToken: adminToken})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(ctx, adminToken); err != nil {
			b.Fatal(err)
		}
	}
}
