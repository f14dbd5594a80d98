// Package issuer makes cove an OpenID Connect issuer of session identity
// tokens: short-lived JWTs, signed with a key kept on the server, saying
// that a session's agent (act, RFC 8693) acts for an engineer (sub).
// Systems outside cove (a company's own APIs, AWS and GCP workload-identity
// federation) verify them against the published discovery document and
// JWKS; cove's own API verifies them with Verify.
//
// The issuer keeps no record of the tokens it mints. Revocation is the
// caller's: each token carries its session's id and generation, and a
// session token is honoured only while that session exists and its
// generation is still the one in the token (a revoke bumps it).
package issuer

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Limits on what is minted and what is verified.
const (
	// DefaultTTL is the life of a Mint with ttl 0. It is short because
	// systems outside cove check only a token's signature and exp: there,
	// a token outlives a park, revoke or removal of its session until
	// its exp.
	DefaultTTL   = 5 * time.Minute
	MaxTTL       = time.Hour // the longest a token may live
	MaxTokenSize = 8 << 10   // bytes; Verify refuses longer tokens unread
	MaxAudience  = 256       // bytes of the aud claim
	MaxClaim     = 512       // bytes of Subject, Session and Agent each

	// Leeway is the clock skew Verify allows on exp, nbf and iat.
	Leeway = 30 * time.Second
)

// ErrInvalidToken is wrapped by every error Verify returns for a token it
// refuses, whatever the reason; the message says which.
var ErrInvalidToken = errors.New("invalid session token")

// ErrExpired is wrapped, besides ErrInvalidToken, by Verify's refusal of a
// token past its exp.
var ErrExpired = errors.New("token is expired")

// Claims is what a session token says: who the agent acts for, and which
// session and agent it is.
type Claims struct {
	// Subject is the engineer the session acts for: the id of the
	// session's owner (a cove user id, "u_…", or "admin" for the
	// bootstrap admin token). The token's sub.
	Subject string
	// Session is the session's id. The token's cove_session, and its
	// act.sub as "session:<id>".
	Session string
	// Agent names the agent running in the session: act.agent. Optional.
	Agent string
	// Generation is the session's token generation when the token was
	// minted: cove_gen. Revoking a session's tokens bumps it, and a token
	// whose generation is not the session's current one is dead.
	Generation uint64
}

// wireClaims is the JWT payload.
type wireClaims struct {
	jwt.Claims
	Act        actor  `json:"act"`
	Session    string `json:"cove_session"`
	Generation uint64 `json:"cove_gen"`
}

// actor is the RFC 8693 act claim: the party acting for sub.
type actor struct {
	Subject string `json:"sub"`
	Agent   string `json:"agent,omitempty"`
}

// actorPrefix prefixes the session id in act.sub.
const actorPrefix = "session:"

// Issuer mints and verifies session tokens, and serves what verifiers
// fetch. Its methods are safe for concurrent use.
type Issuer struct {
	// Now is the clock; nil means time.Now. Set it before first use.
	Now func() time.Time

	url    string
	path   string // of url: where Handler serves
	signer jose.Signer
	// keys are the public keys tokens are verified against and that the
	// JWKS publishes, the current one first. A rotation adds the new key
	// and keeps the old one until the last token it signed has expired.
	keys      jose.JSONWebKeySet
	discovery []byte
	jwks      []byte
}

// New returns the issuer named issuerURL (the iss of its tokens, and where
// verifiers fetch issuerURL + "/.well-known/openid-configuration"), with
// its signing key in dir/signing.jwk, which it generates on first use.
//
// issuerURL must be https, or http on a loopback host (for tests and a
// single machine); cloud verifiers take https only.
func New(dir, issuerURL string) (*Issuer, error) {
	u, err := checkIssuerURL(issuerURL)
	if err != nil {
		return nil, err
	}
	key, err := loadOrCreateKey(dir)
	if err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("issuer: signer: %w", err)
	}
	is := &Issuer{
		url:    issuerURL,
		path:   u.EscapedPath(),
		signer: signer,
		keys:   jose.JSONWebKeySet{Keys: []jose.JSONWebKey{key.Public()}},
	}
	if is.jwks, err = json.Marshal(is.keys); err != nil {
		return nil, fmt.Errorf("issuer: encode JWKS: %w", err)
	}
	if is.discovery, err = json.Marshal(discoveryDoc(issuerURL)); err != nil {
		return nil, fmt.Errorf("issuer: encode discovery document: %w", err)
	}
	return is, nil
}

// URL is the issuer's URL: the iss of its tokens.
func (is *Issuer) URL() string { return is.url }

// KeyID is the kid of the current signing key.
func (is *Issuer) KeyID() string { return is.keys.Keys[0].KeyID }

func (is *Issuer) now() time.Time {
	if is.Now != nil {
		return is.Now()
	}
	return time.Now()
}

// Mint signs a token for c, for audience, living ttl (0: DefaultTTL, at
// most MaxTTL). It refuses an empty or oversized subject, session or
// audience and any with control characters.
func (is *Issuer) Mint(c Claims, audience string, ttl time.Duration) (string, error) {
	if err := checkClaims(c, audience); err != nil {
		return "", fmt.Errorf("issuer: mint: %w", err)
	}
	switch {
	case ttl == 0:
		ttl = DefaultTTL
	case ttl < 0:
		return "", fmt.Errorf("issuer: mint: ttl %v is negative", ttl)
	case ttl > MaxTTL:
		return "", fmt.Errorf("issuer: mint: ttl %v is over the %v maximum", ttl, MaxTTL)
	}
	now := is.now().Truncate(time.Second) // NumericDate has whole seconds
	w := wireClaims{
		Claims: jwt.Claims{
			Issuer:    is.url,
			Subject:   c.Subject,
			Audience:  jwt.Audience{audience},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			Expiry:    jwt.NewNumericDate(now.Add(ttl)),
			ID:        rand.Text(),
		},
		Act:        actor{Subject: actorPrefix + c.Session, Agent: c.Agent},
		Session:    c.Session,
		Generation: c.Generation,
	}
	tok, err := jwt.Signed(is.signer).Claims(w).Serialize()
	if err != nil {
		return "", fmt.Errorf("issuer: mint: sign: %w", err)
	}
	if len(tok) > MaxTokenSize { // claims near their limits, JSON-escaped
		return "", fmt.Errorf("issuer: mint: token is %d bytes, over the %d-byte limit Verify holds to; shorten the claims", len(tok), MaxTokenSize)
	}
	return tok, nil
}

// Verify checks a session token presented to cove's own API, for
// audience, and returns its claims: signed ES256 by one of the issuer's
// keys, from this issuer, for audience, within its lifetime (with Leeway),
// at most MaxTokenSize bytes. Every refusal wraps ErrInvalidToken.
//
// Verify does not know whether the session still exists or was revoked:
// the caller must check that Claims.Session names a session that exists,
// that its current generation equals Claims.Generation, and that it is the
// session the request acts on (a session token is good for its own
// session's operations only).
func (is *Issuer) Verify(token, audience string) (Claims, error) {
	if len(token) > MaxTokenSize {
		return Claims{}, invalid("token is %d bytes, over the %d-byte limit", len(token), MaxTokenSize)
	}
	if audience == "" {
		return Claims{}, errors.New("issuer: verify: no audience given")
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{alg})
	if err != nil {
		return Claims{}, invalid("not a compact JWS signed %s: %v", alg, err)
	}
	kid := tok.Headers[0].KeyID
	keys := is.keys.Key(kid)
	if len(keys) == 0 {
		return Claims{}, invalid("signed with key %q, which is not one of this issuer's", kid)
	}
	var w wireClaims
	if err := tok.Claims(keys[0].Key, &w); err != nil {
		return Claims{}, invalid("signature or payload: %v", err)
	}
	if w.Expiry == nil || w.IssuedAt == nil {
		return Claims{}, invalid("no exp or iat claim")
	}
	if w.Issuer != is.url {
		return Claims{}, invalid("issuer is %q, want %q", w.Issuer, is.url)
	}
	if !w.Audience.Contains(audience) {
		return Claims{}, invalid("audience %q does not include %q", []string(w.Audience), audience)
	}
	now := is.now()
	if err := w.ValidateWithLeeway(jwt.Expected{Time: now}, Leeway); err != nil {
		exp, at := w.Expiry.Time().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339)
		if errors.Is(err, jwt.ErrExpired) {
			return Claims{}, fmt.Errorf("issuer: %w: %w (exp %s, now %s)", ErrInvalidToken, ErrExpired, exp, at)
		}
		return Claims{}, invalid("%v (exp %s, now %s)", err, exp, at)
	}
	if life := w.Expiry.Time().Sub(w.IssuedAt.Time()); life > MaxTTL {
		return Claims{}, invalid("lifetime %v is over the %v maximum", life, MaxTTL)
	}
	c := Claims{Subject: w.Subject, Session: w.Session, Agent: w.Act.Agent, Generation: w.Generation}
	if c.Subject == "" || c.Session == "" {
		return Claims{}, invalid("no sub or cove_session claim")
	}
	if w.Act.Subject != actorPrefix+c.Session {
		return Claims{}, invalid("act.sub %q does not name session %q", w.Act.Subject, c.Session)
	}
	return c, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("issuer: %w: %s", ErrInvalidToken, fmt.Sprintf(format, args...))
}

// checkClaims refuses what Mint must not sign.
func checkClaims(c Claims, audience string) error {
	for _, f := range []struct {
		name, v  string
		max      int
		optional bool
	}{
		{"subject", c.Subject, MaxClaim, false},
		{"session", c.Session, MaxClaim, false},
		{"agent", c.Agent, MaxClaim, true},
		{"audience", audience, MaxAudience, false},
	} {
		switch {
		case f.v == "" && !f.optional:
			return fmt.Errorf("%s is empty", f.name)
		case len(f.v) > f.max:
			return fmt.Errorf("%s is %d bytes, over the %d-byte limit", f.name, len(f.v), f.max)
		case !utf8.ValidString(f.v):
			return fmt.Errorf("%s is not valid UTF-8", f.name)
		case strings.ContainsFunc(f.v, unicode.IsControl):
			return fmt.Errorf("%s %q has a control character", f.name, f.v)
		}
	}
	return nil
}

// checkIssuerURL accepts an absolute https URL, or http on a loopback
// host, with no query, fragment, user or trailing slash: the iss claim
// and the discovery document's issuer must equal it byte for byte.
func checkIssuerURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("issuer: issuer URL %q: %w", s, err)
	}
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return nil, fmt.Errorf("issuer: issuer URL %q: scheme must be https", s)
	case u.Host == "":
		return nil, fmt.Errorf("issuer: issuer URL %q: no host", s)
	case u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(s, "#"):
		return nil, fmt.Errorf("issuer: issuer URL %q: no user, query or fragment allowed", s)
	case strings.ContainsFunc(u.Path, func(r rune) bool { return !pathRune(r) }) || strings.Contains(u.Path, "//") || strings.Contains(u.Path, "/."):
		return nil, fmt.Errorf("issuer: issuer URL %q: path may hold only letters, digits and - . _ ~ / and no empty or dot segment", s)
	case strings.HasSuffix(s, "/"):
		return nil, fmt.Errorf("issuer: issuer URL %q: no trailing slash allowed (it must equal the iss claim exactly)", s)
	case u.Scheme == "http" && !isLoopback(u.Hostname()):
		return nil, fmt.Errorf("issuer: issuer URL %q: http is for loopback hosts only; verifiers fetch the keys from it and need https", s)
	}
	return u, nil
}

func pathRune(r rune) bool {
	return r < utf8.RuneSelf && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._~/", r))
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
