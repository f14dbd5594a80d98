package issuer_test

import (
	"bytes"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/cove-dev/cove/internal/issuer"
)

// The key is made once and kept: a restarted server publishes the same
// key and honours the tokens it minted before.
func TestKeyPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "issuer")
	a := newIssuer(t, dir, testURL)
	tok := mint(t, a, alice, "cove", 0)
	b := newIssuer(t, dir, testURL)
	if a.KeyID() != b.KeyID() || !bytes.Equal(a.JWKS(), b.JWKS()) {
		t.Errorf("kid %s then %s", a.KeyID(), b.KeyID())
	}
	if _, err := b.Verify(tok, "cove"); err != nil {
		t.Errorf("token of the first issuer, verified by the second: %v", err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, filepath.Join(dir, issuer.KeyFile): 0o600} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, st.Mode(), want)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Errorf("key directory holds %d entries, want just %s", len(ents), issuer.KeyFile)
	}
	if other := newIssuer(t, t.TempDir(), testURL); other.KeyID() == a.KeyID() {
		t.Error("two directories, one key")
	}
}

// Servers starting at once on a fresh directory end up with one key.
func TestKeyMadeOnceUnderRace(t *testing.T) {
	dir := t.TempDir()
	kids := make([]string, 8)
	errs := make([]error, len(kids))
	var wg sync.WaitGroup
	for i := range kids {
		wg.Go(func() {
			is, err := issuer.New(dir, testURL)
			if errs[i] = err; err == nil {
				kids[i] = is.KeyID()
			}
		})
	}
	wg.Wait()
	for i, k := range kids {
		if errs[i] != nil || k != kids[0] {
			t.Fatalf("kids %q, errors %v", kids, errs)
		}
	}
}

// The JWKS holds public keys only, each named by its RFC 7638 thumbprint.
func TestJWKSPublishesThePublicKeyByThumbprint(t *testing.T) {
	is := newIssuer(t, t.TempDir(), testURL)
	if bytes.Contains(is.JWKS(), []byte(`"d"`)) {
		t.Fatalf("JWKS holds a private key: %s", is.JWKS())
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(is.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("%d keys", len(set.Keys))
	}
	k := set.Keys[0]
	tp, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !k.IsPublic() || k.KeyID != base64.RawURLEncoding.EncodeToString(tp) || k.KeyID != is.KeyID() || k.Algorithm != "ES256" || k.Use != "sig" {
		t.Errorf("published key: kid %q alg %q use %q public %v; thumbprint %x", k.KeyID, k.Algorithm, k.Use, k.IsPublic(), tp)
	}
}

// A key file that is there but unusable is an error that names it, and it
// is left exactly as it was: replacing it would void every token out.
func TestBadKeyFileIsKept(t *testing.T) {
	good := t.TempDir()
	newIssuer(t, good, testURL)
	goodKey, err := os.ReadFile(filepath.Join(good, issuer.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(goodKey, &m); err != nil {
		t.Fatal(err)
	}
	edit := func(f func(map[string]any)) []byte {
		c := map[string]any{}
		for k, v := range m {
			c[k] = v
		}
		f(c)
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		content []byte
		mode    os.FileMode
		want    string
	}{
		{"garbage", []byte("not json\n"), 0o600, "not a JWK"},
		{"empty", nil, 0o600, "not a JWK"},
		{"truncated", goodKey[:len(goodKey)/2], 0o600, "not a JWK"},
		{"public only", edit(func(c map[string]any) { delete(c, "d") }), 0o600, "want an ECDSA private key"},
		{"wrong kid", edit(func(c map[string]any) { c["kid"] = "k1" }), 0o600, `kid is "k1", but the key's RFC 7638 thumbprint`},
		{"wrong alg", edit(func(c map[string]any) { c["alg"] = "ES384" }), 0o600, `alg is "ES384"`},
		{"readable by others", goodKey, 0o644, "has mode 0644, readable by others"},
		{"huge", bytes.Repeat([]byte(" "), 1<<20), 0o600, "not a key file"},
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, issuer.KeyFile)
		if err := os.WriteFile(path, tc.content, tc.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, tc.mode); err != nil { // past the umask
			t.Fatal(err)
		}
		is, err := issuer.New(dir, testURL)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) || is != nil {
			t.Errorf("%s: got %v, want an error naming %s with %q", tc.name, err, path, tc.want)
		}
		after, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(after, tc.content) {
			t.Errorf("%s: key file changed (%v)", tc.name, err)
		}
	}

	// A directory where the key file should be.
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, issuer.KeyFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := issuer.New(dir, testURL); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory as key file: %v", err)
	}
	if _, err := issuer.New("", testURL); err == nil || !strings.Contains(err.Error(), "no key directory") {
		t.Errorf("no directory: %v", err)
	}
}
