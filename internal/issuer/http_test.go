package issuer_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"testing"

	"github.com/cove-dev/cove/internal/issuer"
)

func TestDiscoveryDocument(t *testing.T) {
	is := newIssuer(t, t.TempDir(), "https://cove.example.com/issuer")
	var d map[string]any
	if err := json.Unmarshal(is.Discovery(), &d); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"issuer":                                "https://cove.example.com/issuer",
		"jwks_uri":                              "https://cove.example.com/issuer/.well-known/jwks.json",
		"id_token_signing_alg_values_supported": []any{"ES256"},
		"response_types_supported":              []any{"id_token"},
		"subject_types_supported":               []any{"public"},
		"claims_supported":                      []any{"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "act", "cove_session", "cove_gen"},
	}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("discovery\n got %v\nwant %v", d, want)
	}
	// Callers get copies.
	b := is.Discovery()
	b[0] = 'X'
	if is.Discovery()[0] != '{' {
		t.Error("Discovery returned the issuer's own buffer")
	}
}

func TestHandler(t *testing.T) {
	is, srv, _ := serve(t, "/issuer")
	get := func(method, path string, header http.Header) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}
	for _, tc := range []struct {
		path, contentType string
		body              []byte
	}{
		{"/issuer" + issuer.DiscoveryPath, "application/json", is.Discovery()},
		{"/issuer" + issuer.JWKSPath, "application/jwk-set+json", is.JWKS()},
	} {
		resp, body := get("GET", tc.path, nil)
		if resp.StatusCode != 200 || !bytes.Equal(body, tc.body) {
			t.Errorf("GET %s: %d %s", tc.path, resp.StatusCode, body)
		}
		etag := resp.Header.Get("ETag")
		if ct := resp.Header.Get("Content-Type"); ct != tc.contentType {
			t.Errorf("GET %s: Content-Type %q, want %q", tc.path, ct, tc.contentType)
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "public, max-age=300" || etag == "" {
			t.Errorf("GET %s: Cache-Control %q ETag %q", tc.path, cc, etag)
		}
		if resp, _ := get("GET", tc.path, http.Header{"If-None-Match": {etag}}); resp.StatusCode != http.StatusNotModified {
			t.Errorf("GET %s If-None-Match its ETag: %d, want 304", tc.path, resp.StatusCode)
		}
		if resp, body := get("HEAD", tc.path, nil); resp.StatusCode != 200 || len(body) != 0 {
			t.Errorf("HEAD %s: %d, %d bytes", tc.path, resp.StatusCode, len(body))
		}
		for _, m := range []string{"POST", "PUT", "DELETE", "PATCH"} {
			resp, _ := get(m, tc.path, nil)
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("%s %s: %d Allow %q, want 405 with Allow: GET, HEAD", m, tc.path, resp.StatusCode, resp.Header.Get("Allow"))
			}
		}
	}
	for _, p := range []string{issuer.DiscoveryPath, "/issuer/.well-known/other", "/issuer/.well-known/jwks.json/x"} {
		if resp, _ := get("GET", p, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
}
