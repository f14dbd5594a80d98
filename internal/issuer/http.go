package issuer

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"slices"
	"time"
)

// Paths the Handler serves, relative to the issuer URL.
const (
	DiscoveryPath = "/.well-known/openid-configuration"
	JWKSPath      = "/.well-known/jwks.json"
)

// cacheControl lets verifiers cache the documents for a few minutes: they
// change only with a key rotation, which publishes the new key before
// signing with it.
const cacheControl = "public, max-age=300"

// discovery is the OpenID Provider metadata. The issuer mints tokens and
// runs no authorization endpoint, so it publishes what a verifier needs,
// the same set the Kubernetes service-account issuer publishes, which AWS
// and GCP federation take.
type discovery struct {
	Issuer          string   `json:"issuer"`
	JWKSURI         string   `json:"jwks_uri"`
	ResponseTypes   []string `json:"response_types_supported"`
	SubjectTypes    []string `json:"subject_types_supported"`
	SigningAlgs     []string `json:"id_token_signing_alg_values_supported"`
	ClaimsSupported []string `json:"claims_supported"`
}

func discoveryDoc(issuerURL string) discovery {
	return discovery{
		Issuer:          issuerURL,
		JWKSURI:         issuerURL + JWKSPath,
		ResponseTypes:   []string{"id_token"},
		SubjectTypes:    []string{"public"},
		SigningAlgs:     []string{string(alg)},
		ClaimsSupported: []string{"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "act", "cove_session", "cove_gen"},
	}
}

// Discovery is the /.well-known/openid-configuration document, JSON.
func (is *Issuer) Discovery() []byte { return slices.Clone(is.discovery) }

// JWKS is the JSON Web Key Set of the issuer's public keys, JSON.
func (is *Issuer) JWKS() []byte { return slices.Clone(is.jwks) }

// Handler serves GET and HEAD of the issuer URL's path + DiscoveryPath and
// + JWKSPath (just DiscoveryPath and JWKSPath for an issuer URL with no
// path), with cache headers and an ETag; other methods get 405, other
// paths 404. Route those two paths of the issuer's host to it, unprefixed
// and unauthenticated: verifiers fetch them anonymously.
func (is *Issuer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(is.path+DiscoveryPath, document(is.discovery, "application/json"))
	mux.Handle(is.path+JWKSPath, document(is.jwks, "application/jwk-set+json"))
	return mux
}

// document serves body, which never changes.
func document(body []byte, contentType string) http.Handler {
	sum := sha256.Sum256(body)
	etag := `"` + base64.RawURLEncoding.EncodeToString(sum[:16]) + `"`
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Cache-Control", cacheControl)
		h.Set("ETag", etag)
		h.Set("X-Content-Type-Options", "nosniff")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	})
}
