package dashboard

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// cookie is what the sign-in cookie holds, sealed: the browser can
// neither read the token nor change the expiry.
type cookie struct {
	// ID names this sign-in: the CSRF token is derived from it, and a
	// sign-out refuses it.
	ID      string    `json:"id"`
	Token   string    `json:"token"`
	Expires time.Time `json:"exp"`
	// An OpenID Connect sign-in whose issuer gave a refresh token keeps
	// it here with the issuer's URL: once the ID token in Token expires,
	// the server renews it with the refresh token, until Until (the
	// sign-in's start plus the cookie's maximum age).
	Refresh string    `json:"rt,omitempty"`
	Issuer  string    `json:"iss,omitempty"`
	Until   time.Time `json:"until,omitzero"`
}

// sealer seals cookies with AES-256-GCM.
type sealer struct{ aead cipher.AEAD }

// cookieAD binds a sealed value to its use.
var cookieAD = []byte("cove dashboard sign-in v1")

func newSealer(key []byte) (*sealer, error) {
	b, err := aes.NewCipher(key[:32])
	if err != nil {
		return nil, fmt.Errorf("dashboard: cookie cipher: %w", err)
	}
	aead, err := cipher.NewGCM(b)
	if err != nil {
		return nil, fmt.Errorf("dashboard: cookie cipher: %w", err)
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) seal(c cookie) (string, error) { return s.sealAs(c, cookieAD) }

func (s *sealer) open(v string) (cookie, error) {
	var c cookie
	err := s.openAs(v, cookieAD, &c)
	return c, err
}

// sealAs seals v's JSON, bound to ad.
func (s *sealer) sealAs(v any, ad []byte) (string, error) {
	plain, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("dashboard: seal cookie: %w", err)
	}
	nonce := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plain, ad)), nil
}

// openAs opens what sealAs sealed with ad into v.
func (s *sealer) openAs(sealed string, ad []byte, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(sealed)
	if err != nil || len(b) < s.aead.NonceSize() {
		return errors.New("dashboard: cookie: not a sealed value")
	}
	n := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, b[:n], b[n:], ad)
	if err != nil {
		return fmt.Errorf("dashboard: cookie: %w", err)
	}
	if err := json.Unmarshal(plain, v); err != nil {
		return fmt.Errorf("dashboard: cookie: %w", err)
	}
	return nil
}
