package identity

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// OIDCIssuer is an OpenID Connect issuer whose ID tokens the API accepts.
type OIDCIssuer struct {
	// URL is the issuer: the iss of its ID tokens, where its discovery
	// document is (URL + "/.well-known/openid-configuration"). It is
	// https, or http on a loopback host.
	URL string
	// ClientID is the audience its ID tokens must carry: the OAuth client
	// that 'cove login' signs in as.
	ClientID string
}

// ParseOIDCIssuer reads "ISSUER_URL=CLIENT_ID", as cove server's
// --oidc-issuer takes it, and checks both.
func ParseOIDCIssuer(s string) (OIDCIssuer, error) {
	u, client, ok := strings.Cut(strings.TrimSpace(s), "=")
	is := OIDCIssuer{URL: strings.TrimSpace(u), ClientID: strings.TrimSpace(client)}
	if !ok {
		return OIDCIssuer{}, fmt.Errorf("oidc issuer %q: want ISSUER_URL=CLIENT_ID (the client id is the audience its ID tokens carry)", s)
	}
	if err := is.check(); err != nil {
		return OIDCIssuer{}, err
	}
	return is, nil
}

// check checks the issuer's URL and client id.
func (is OIDCIssuer) check() error {
	u, err := url.Parse(is.URL)
	switch {
	case err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("oidc issuer %q: not an issuer URL (scheme://host[/path], no query or fragment)", is.URL)
	case u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackHost(u.Hostname())):
		return fmt.Errorf("oidc issuer %q: must be https (or http on a loopback host)", is.URL)
	case is.ClientID == "" || len(is.ClientID) > 256 || strings.ContainsAny(is.ClientID, " \t\r\n"):
		return fmt.Errorf("oidc issuer %s: client id %q: want 1 to 256 characters, no spaces", is.URL, is.ClientID)
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// OIDCConfig configures NewOIDC.
type OIDCConfig struct {
	// Issuers are the issuers whose ID tokens are accepted; each URL once.
	Issuers []OIDCIssuer
	// Store holds the users that sign in, and their teams. Required.
	Store Store
	// HTTPClient fetches the issuers' discovery documents and keys; nil:
	// one with a 10 s timeout.
	HTTPClient *http.Client
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Log receives new users, team changes, and why an issuer could not
	// be reached; nil discards.
	Log *slog.Logger
}

// OIDC is the JWTVerifier of the ID tokens of configured OpenID Connect
// issuers, checked with github.com/coreos/go-oidc against each issuer's
// published keys (its JWKS). Make one with NewOIDC; it is safe for
// concurrent use.
//
// An ID token names its user by issuer and subject. The first token of a
// subject makes its user: an engineer, named by the token's
// preferred_username or else its email (lower-cased). A subject whose
// user an admin removed ('cove user rm') makes none: its tokens are
// refused (ErrRevoked) until an admin re-adds the user by name ('cove
// user add NAME', see Directory.AddUser). When the token has
// a groups claim, the user's teams become those groups (each a valid team
// name, lower-cased), added and removed in the store; without one, its
// teams stay as they are.
type OIDC struct {
	issuers map[string]*oidcIssuer
	order   []OIDCIssuer
	store   Store
	client  *http.Client
	now     func() time.Time
	log     *slog.Logger
}

// rediscoverAfter is how long a failed discovery is the answer for its
// issuer's tokens before it is tried again, so that an issuer that hangs
// holds up one request at a time, not every one.
const rediscoverAfter = 5 * time.Second

// oidcIssuer is one issuer's verifier, made by discovery on first use.
type oidcIssuer struct {
	OIDCIssuer
	mu sync.Mutex
	// verifier is nil until the issuer's discovery document was read.
	verifier *oidc.IDTokenVerifier // guarded by mu
	// failed is the last discovery's error, and failedAt when it came.
	failed   error     // guarded by mu
	failedAt time.Time // guarded by mu
}

// NewOIDC checks c and returns the verifier. It reaches no issuer: each
// is discovered on the first token it signs (or by Discover), so that an
// issuer down when cove starts delays only its own users.
func NewOIDC(c OIDCConfig) (*OIDC, error) {
	if c.Store == nil {
		return nil, errors.New("identity: oidc: no store")
	}
	o := &OIDC{issuers: map[string]*oidcIssuer{}, store: c.Store, client: c.HTTPClient, now: c.Now, log: c.Log}
	for _, is := range c.Issuers {
		if err := is.check(); err != nil {
			return nil, fmt.Errorf("identity: %w", err)
		}
		if o.issuers[is.URL] != nil {
			return nil, fmt.Errorf("identity: oidc issuer %s is given twice", is.URL)
		}
		o.issuers[is.URL] = &oidcIssuer{OIDCIssuer: is}
		o.order = append(o.order, is)
	}
	if o.client == nil {
		o.client = &http.Client{Timeout: 10 * time.Second}
	}
	if o.now == nil {
		o.now = time.Now
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// Issuers returns the configured issuers, in the order given.
func (o *OIDC) Issuers() []OIDCIssuer { return slices.Clone(o.order) }

// Discover reads every issuer's discovery document now, rather than at its
// first token, and returns what failed (an issuer that failed is tried
// again at a token that comes rediscoverAfter later).
func (o *OIDC) Discover(ctx context.Context) error {
	var errs []error
	for _, is := range o.order {
		if _, err := o.issuers[is.URL].verifierFor(ctx, o); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// asymmetricAlgs are the signing algorithms accepted from an issuer's
// discovery document: go-oidc's, all public-key ones.
var asymmetricAlgs = []string{
	oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512,
	oidc.PS256, oidc.PS384, oidc.PS512, oidc.EdDSA,
}

// verifierFor returns the issuer's verifier, reading its discovery
// document first if that was not done yet. Concurrent first uses wait for
// one discovery.
func (is *oidcIssuer) verifierFor(ctx context.Context, o *OIDC) (*oidc.IDTokenVerifier, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.verifier != nil {
		return is.verifier, nil
	}
	if is.failed != nil && o.now().Sub(is.failedAt) < rediscoverAfter {
		return nil, is.failed
	}
	fail := func(err error) (*oidc.IDTokenVerifier, error) {
		is.failed, is.failedAt = err, o.now()
		return nil, err
	}
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, o.client), is.URL)
	if err != nil {
		return fail(fmt.Errorf("identity: oidc issuer %s: discovery: %w", is.URL, err))
	}
	var meta struct {
		JWKS string   `json:"jwks_uri"`
		Algs []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := p.Claims(&meta); err != nil || meta.JWKS == "" {
		return fail(fmt.Errorf("identity: oidc issuer %s: discovery document has no jwks_uri", is.URL))
	}
	var algs []string
	for _, a := range meta.Algs {
		if slices.Contains(asymmetricAlgs, a) {
			algs = append(algs, a)
		}
	}
	// The keys are fetched with a context that outlives this request:
	// go-oidc caches them, and fetches again for a key id it has not seen.
	keys := &keySet{remote: oidc.NewRemoteKeySet(oidc.ClientContext(context.WithoutCancel(ctx), o.client), meta.JWKS)}
	is.verifier = oidc.NewVerifier(is.URL, keys, &oidc.Config{ClientID: is.ClientID, SupportedSigningAlgs: algs, Now: o.now})
	is.failed = nil
	o.log.Info("identity: oidc issuer discovered", "issuer", is.URL, "jwks", meta.JWKS)
	return is.verifier, nil
}

// keySet is go-oidc's RemoteKeySet, telling a token that no key verifies
// from keys it could not fetch: the first is a refusal, the second says
// nothing about the token. go-oidc's verifier keeps only the text of a
// key set's error, so the second is reported through the context (see
// keyFailureKey).
type keySet struct{ remote *oidc.RemoteKeySet }

// keyFailureKey is the context key of a *error that keySet sets when the
// keys could not be fetched.
type keyFailureKey struct{}

// badSignature is RemoteKeySet's error when it has the issuer's keys and
// none verifies the token. Any other error of it is a failure to fetch.
const badSignature = "failed to verify id token signature"

func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	payload, err := k.remote.VerifySignature(ctx, jwt)
	if err != nil && err.Error() != badSignature {
		if f, ok := ctx.Value(keyFailureKey{}).(*error); ok {
			*f = err
		}
	}
	return payload, err
}

// idClaims are the claims of an ID token that cove reads.
type idClaims struct {
	Subject           string          `json:"sub"`
	PreferredUsername string          `json:"preferred_username"`
	Email             string          `json:"email"`
	Groups            json.RawMessage `json:"groups"`
}

// Verify checks an ID token of a configured issuer and returns its user,
// made on its first sign-in, with its teams. A token of another issuer
// (or none) is ErrUnknownToken; a wrong signature, audience or claim
// ErrInvalidToken; one past its exp ErrExpired; one of a removed user
// ErrRevoked. When the issuer's
// discovery document or keys cannot be fetched, the error is an
// *api.Error with CodeUnavailable and no refusal: the token may be good.
// A user name taken by another user is a CodeConflict.
func (o *OIDC) Verify(ctx context.Context, raw string) (Principal, error) {
	iss, err := UnverifiedIssuer(raw)
	if err != nil {
		return Principal{}, err
	}
	is := o.issuers[iss]
	if is == nil {
		return Principal{}, fmt.Errorf("%w: a JWT of issuer %q, which is not configured", ErrUnknownToken, iss)
	}
	v, err := is.verifierFor(ctx, o)
	if err != nil {
		o.log.Warn("identity: oidc issuer unreachable", "issuer", iss, "err", err)
		return Principal{}, unavailable(iss)
	}
	var keyFailure error
	tok, err := v.Verify(context.WithValue(ctx, keyFailureKey{}, &keyFailure), raw)
	if keyFailure != nil {
		o.log.Warn("identity: oidc issuer's keys unreachable", "issuer", iss, "err", keyFailure)
		return Principal{}, unavailable(iss)
	}
	if expired, ok := errors.AsType[*oidc.TokenExpiredError](err); ok {
		return Principal{}, fmt.Errorf("%w: ID token of %s expired at %s", ErrExpired, iss, expired.Expiry.UTC().Format(time.RFC3339))
	}
	if err != nil {
		return Principal{}, fmt.Errorf("%w: ID token of %s: %s", ErrInvalidToken, iss, strings.TrimPrefix(err.Error(), "oidc: "))
	}
	var c idClaims
	if err := tok.Claims(&c); err != nil {
		return Principal{}, fmt.Errorf("%w: ID token of %s: claims: %v", ErrInvalidToken, iss, err)
	}
	groups, hasGroups, err := parseGroups(c.Groups)
	if err != nil {
		return Principal{}, fmt.Errorf("%w: ID token of %s: %v", ErrInvalidToken, iss, err)
	}
	u, err := o.user(ctx, iss, c)
	if err != nil {
		return Principal{}, err
	}
	teams, err := o.syncTeams(ctx, u, groups, hasGroups)
	if err != nil {
		return Principal{}, err
	}
	return Principal{Kind: KindUser, User: u, Teams: teams}, nil
}

// unavailable is the answer when an issuer's documents cannot be fetched.
func unavailable(iss string) error {
	return api.Errorf(api.CodeUnavailable, "OIDC issuer %s cannot be reached to check its ID token (its discovery document or signing keys); try again later", iss)
}

// UnverifiedIssuer reads the iss of a JWT-shaped token before any check,
// to choose its verifier (an error wrapping ErrUnknownToken when it has
// none). Nothing else of it is trusted.
func UnverifiedIssuer(raw string) (string, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return "", fmt.Errorf("%w: not a JWT", ErrUnknownToken)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct {
		Issuer string `json:"iss"`
	}
	if err != nil || json.Unmarshal(payload, &c) != nil {
		return "", fmt.Errorf("%w: a JWT whose payload is not JSON", ErrUnknownToken)
	}
	if c.Issuer == "" {
		return "", fmt.Errorf("%w: a JWT without an issuer (iss)", ErrUnknownToken)
	}
	return c.Issuer, nil
}

// parseGroups reads a groups claim: a list of strings (or one string).
// has says whether the token has the claim at all.
func parseGroups(raw json.RawMessage) (groups []string, has bool, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, false, nil
	}
	if json.Unmarshal(raw, &groups) == nil {
		return groups, true, nil
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, true, nil
	}
	return nil, false, errors.New("groups: not a list of strings")
}

// user returns the user of the token's issuer and subject, making it on
// its first sign-in, unless an admin removed it.
func (o *OIDC) user(ctx context.Context, iss string, c idClaims) (store.User, error) {
	if c.Subject == "" {
		return store.User{}, fmt.Errorf("%w: ID token of %s has no subject", ErrInvalidToken, iss)
	}
	u, err := o.store.GetUserBySubject(ctx, iss, c.Subject)
	if err == nil {
		return u, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return store.User{}, fmt.Errorf("identity: oidc sign-in: %w", err)
	}
	gone, err := o.store.GetRemovedUser(ctx, iss, c.Subject)
	if err == nil {
		return store.User{}, fmt.Errorf("%w: ID token of %s for subject %q: user %q was removed (at %s); an admin must re-add them (cove user add %s)",
			ErrRevoked, iss, c.Subject, gone.Name, gone.RemovedAt.Format(time.RFC3339), gone.Name)
	} else if !errors.Is(err, store.ErrNotFound) {
		return store.User{}, fmt.Errorf("identity: oidc sign-in: %w", err)
	}
	name := signInName(c)
	if name == "" {
		return store.User{}, fmt.Errorf("%w: ID token of %s for subject %q has no preferred_username or email that makes a user name (%s)", ErrInvalidToken, iss, c.Subject, userName)
	}
	u = store.User{ID: newID("u_"), Name: name, Kind: store.UserEngineer, Issuer: iss, Subject: c.Subject, CreatedAt: o.now().UTC()}
	err = o.store.PutUser(ctx, u)
	if errors.Is(err, store.ErrExists) {
		// Another request may have signed the same subject in meanwhile.
		if again, gerr := o.store.GetUserBySubject(ctx, iss, c.Subject); gerr == nil {
			return again, nil
		}
		return store.User{}, api.Errorf(api.CodeConflict, "sign-in refused: subject %q of %s would be user %q, and another user has that name; an admin may remove that user (cove user rm %s), or the issuer may send another preferred_username", c.Subject, iss, name, name)
	}
	if err != nil {
		return store.User{}, fmt.Errorf("identity: oidc sign-in: %w", err)
	}
	o.log.Info("identity: new user by OIDC sign-in", "user", u.Name, "user_id", u.ID, "issuer", iss, "subject", c.Subject)
	return u, nil
}

// signInName is the user name a first sign-in takes: preferred_username,
// else email, lower-cased, if it is a valid name.
func signInName(c idClaims) string {
	for _, n := range []string{c.PreferredUsername, c.Email} {
		if n = strings.ToLower(strings.TrimSpace(n)); userName.MatchString(n) {
			return n
		}
	}
	return ""
}

// syncTeams makes u's teams its token's groups, when the token has a
// groups claim, and returns its teams. Groups that are no team name are
// left out.
func (o *OIDC) syncTeams(ctx context.Context, u store.User, groups []string, has bool) ([]string, error) {
	cur, err := o.store.TeamsOf(ctx, u.ID)
	if err != nil {
		return nil, fmt.Errorf("identity: oidc sign-in: teams of %s: %w", u.Name, err)
	}
	if !has {
		return cur, nil
	}
	var want []string
	for _, g := range groups {
		if g = strings.ToLower(strings.TrimSpace(g)); teamName.MatchString(g) && len(want) < maxTeams {
			want = append(want, g)
		}
	}
	slices.Sort(want)
	want = slices.Compact(want)
	for _, t := range want {
		if !slices.Contains(cur, t) {
			if err := o.store.AddTeamMember(ctx, u.ID, t); err != nil {
				return nil, fmt.Errorf("identity: oidc sign-in: add %s to team %s: %w", u.Name, t, err)
			}
			o.log.Info("identity: team joined by OIDC groups", "user", u.Name, "team", t)
		}
	}
	for _, t := range cur {
		if !slices.Contains(want, t) {
			if err := o.store.RemoveTeamMember(ctx, u.ID, t); err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, fmt.Errorf("identity: oidc sign-in: remove %s from team %s: %w", u.Name, t, err)
			}
			o.log.Info("identity: team left by OIDC groups", "user", u.Name, "team", t)
		}
	}
	if want == nil {
		want = []string{}
	}
	return want, nil
}
