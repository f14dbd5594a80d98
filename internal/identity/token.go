package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"strings"
)

// TokenPrefix starts every API token's secret, so that a leaked one is
// recognisable (by secret scanners, by people) and never mistaken for a
// JWT or the admin token.
const TokenPrefix = "cove_"

// secretBytes is how much randomness a secret holds.
const secretBytes = 32

// tokenLen is the length of a secret: the prefix and 32 bytes in unpadded
// base64url.
var tokenLen = len(TokenPrefix) + base64.RawURLEncoding.EncodedLen(secretBytes)

// NewToken makes a new API token: its secret, "cove_" and 32 random bytes
// in base64url (48 characters in all), to be shown once to whoever asked
// for it; and the hash to keep instead (HashToken of the secret).
func NewToken() (secret string, hash [32]byte) {
	var b [secretBytes]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	secret = TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return secret, HashToken(secret)
}

// HashToken is the SHA-256 of a token's whole secret, as the store keeps
// it. A secret holds 256 random bits, so a fast unsalted hash is enough:
// there is nothing to guess.
func HashToken(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// isAPIToken reports whether s has the shape of NewToken's secrets.
func isAPIToken(s string) bool {
	rest, ok := strings.CutPrefix(s, TokenPrefix)
	return ok && len(s) == tokenLen && isBase64URL(rest)
}

// looksLikeJWT reports whether s has a compact JWS's shape: three
// dot-separated, non-empty base64url parts.
func looksLikeJWT(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if p == "" || !isBase64URL(p) {
			return false
		}
	}
	return true
}

func isBase64URL(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// newID returns prefix and 80 random bits in lower-case base32: an id for
// a user or a token, which may be shown anywhere.
func newID(prefix string) string {
	var b [10]byte
	rand.Read(b[:])
	return prefix + strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
}
