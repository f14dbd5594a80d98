package secret

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func newBox(t *testing.T) *Box {
	t.Helper()
	b, err := NewBox(newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSealOpen: a value opens with the key and record it was sealed for,
// the ciphertext does not hold it, and two seals of one value differ (a
// fresh nonce each).
func TestSealOpen(t *testing.T) {
	b := newBox(t)
	plain := []byte("ghp_0123456789abcdefghijklmnopqrstuvwxyz")
	aad := AAD("user", "u_alice", "github")
	s1, err := b.Seal(plain, aad)
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := b.Seal(plain, aad)
	if bytes.Equal(s1, s2) {
		t.Error("two seals of one value are equal: the nonce is not fresh")
	}
	if bytes.Contains(s1, plain) || bytes.Contains(s1, plain[:8]) {
		t.Error("the sealed bytes hold the value")
	}
	for _, s := range [][]byte{s1, s2} {
		got, err := b.Open(s, aad)
		if err != nil || !bytes.Equal(got, plain) {
			t.Errorf("Open = %q, %v; want the value", got, err)
		}
	}
}

// TestOpenRefusesAnotherRecord: a ciphertext moved onto another record
// (another owner kind, owner or name) does not open, and the error says
// so without the value; nor does one altered by a bit.
func TestOpenRefusesAnotherRecord(t *testing.T) {
	b := newBox(t)
	plain := []byte("s3cr3t-value-XYZ")
	sealed, err := b.Seal(plain, AAD("user", "u_alice", "github"))
	if err != nil {
		t.Fatal(err)
	}
	for _, aad := range [][]byte{
		AAD("team", "u_alice", "github"),
		AAD("user", "u_bob", "github"),
		AAD("user", "u_alice", "gitlab"),
		// Length prefixes: moving a byte from one field to the next is
		// another record.
		AAD("user", "u_alicegithu", "b"),
	} {
		got, err := b.Open(sealed, aad)
		if err == nil || got != nil {
			t.Errorf("Open with another record's aad %q = %q, %v; want an error", aad, got, err)
			continue
		}
		if !strings.Contains(err.Error(), "sealed for another record, or altered") || strings.Contains(err.Error(), string(plain)) {
			t.Errorf("error %q", err)
		}
	}
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 1
		if got, err := b.Open(bad, AAD("user", "u_alice", "github")); err == nil {
			t.Errorf("Open with byte %d flipped = %q, want an error", i, got)
		}
	}
	if _, err := b.Open(sealed[:10], nil); err == nil {
		t.Error("Open of a short value: no error")
	}
}

// TestOpenWithWrongKey: another key's box refuses, saying wrong key,
// never a garbage plaintext.
func TestOpenWithWrongKey(t *testing.T) {
	aad := AAD("user", "u_alice", "github")
	sealed, err := newBox(t).Seal([]byte("value"), aad)
	if err != nil {
		t.Fatal(err)
	}
	got, err := newBox(t).Open(sealed, aad)
	if err == nil || got != nil {
		t.Fatalf("Open with another key = %q, %v; want an error", got, err)
	}
	if !strings.HasPrefix(err.Error(), "secret: cannot decrypt: sealed under another key") || !strings.Contains(err.Error(), "wrong key?") {
		t.Errorf("error %q, want it to say the key is wrong", err)
	}
}

func TestNewBoxKeySize(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := NewBox(make([]byte, n)); err == nil {
			t.Errorf("NewBox(%d bytes) = nil error", n)
		}
	}
}

// writeKeyFile writes key as a key file of mode perm.
func writeKeyFile(t *testing.T, key []byte, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret.key")
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

// TestLoadKeyFile: a 0600 (or 0400) file loads; one others may read is
// refused, saying chmod 600 FILE; a missing, malformed or short one is a
// clear error that never quotes the file's text.
func TestLoadKeyFile(t *testing.T) {
	t.Setenv(EnvKey, "")
	os.Unsetenv(EnvKey)
	key := newKey(t)
	for _, perm := range []os.FileMode{0o600, 0o400} {
		got, err := LoadKey(writeKeyFile(t, key, perm))
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("LoadKey(mode %o) = %x, %v; want the key", perm, got, err)
		}
	}
	for _, perm := range []os.FileMode{0o640, 0o604, 0o644, 0o660} {
		p := writeKeyFile(t, key, perm)
		_, err := LoadKey(p)
		if err == nil || !strings.Contains(err.Error(), "chmod 600 "+p) {
			t.Errorf("LoadKey(mode %o) = %v, want a refusal saying chmod 600 %s", perm, err, p)
		}
	}
	if _, err := LoadKey(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("LoadKey(missing file): no error")
	}
	short := writeKeyFile(t, key[:16], 0o600)
	if _, err := LoadKey(short); err == nil || !strings.Contains(err.Error(), "key of 16 bytes, want 32") {
		t.Errorf("LoadKey(16 bytes) = %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.key")
	if err := os.WriteFile(bad, []byte("not-base64-TOPSECRET!!\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKey(bad); err == nil || strings.Contains(err.Error(), "TOPSECRET") || !strings.Contains(err.Error(), "not base64") {
		t.Errorf("LoadKey(not base64) = %v", err)
	}
}

// TestEnvKeyWins: COVE_SECRET_KEY, when set, is the key whatever the file
// holds (even a refused one), and a malformed one is an error that does
// not quote it.
func TestEnvKeyWins(t *testing.T) {
	fileKey, envK := newKey(t), newKey(t)
	p := writeKeyFile(t, fileKey, 0o644) // refused, were it read
	t.Setenv(EnvKey, base64.StdEncoding.EncodeToString(envK))
	for name, load := range map[string]func(string) ([]byte, error){"LoadKey": LoadKey, "LoadOrCreateKey": LoadOrCreateKey} {
		got, err := load(p)
		if err != nil || !bytes.Equal(got, envK) {
			t.Errorf("%s with %s set = %x, %v; want the variable's key", name, EnvKey, got, err)
		}
		// Positive control: without the variable, the file is read (and
		// refused for its mode).
		t.Setenv(EnvKey, "")
		os.Unsetenv(EnvKey)
		if _, err := load(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("%s without %s = %v, want the file's refusal", name, EnvKey, err)
		}
		t.Setenv(EnvKey, base64.StdEncoding.EncodeToString(envK))
	}
	t.Setenv(EnvKey, "c2hvcnQtU0VDUkVU") // "short-SECRET"
	if _, err := LoadKey(p); err == nil || !strings.Contains(err.Error(), EnvKey) || strings.Contains(err.Error(), "c2hvcnQtU0VDUkVU") {
		t.Errorf("LoadKey with a short %s = %v", EnvKey, err)
	}
}

// TestLoadOrCreateKey: the first call makes a 0600 key file, the next
// loads the same key.
func TestLoadOrCreateKey(t *testing.T) {
	t.Setenv(EnvKey, "")
	os.Unsetenv(EnvKey)
	p := filepath.Join(t.TempDir(), "secret.key")
	k1, err := LoadOrCreateKey(p)
	if err != nil || len(k1) != KeySize {
		t.Fatalf("LoadOrCreateKey (new) = %x, %v", k1, err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	k2, err := LoadOrCreateKey(p)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Errorf("LoadOrCreateKey (again) = %x, %v; want the first key %x", k2, err, k1)
	}
	if k3, err := LoadKey(p); err != nil || !bytes.Equal(k1, k3) {
		t.Errorf("LoadKey of the made file = %x, %v", k3, err)
	}
	if _, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "no", "such", "dir", "k")); err == nil {
		t.Error("LoadOrCreateKey in a missing directory: no error")
	}
}

// A key file left empty (a server killed between creating and writing it)
// is made anew at the next start: no secret was sealed with a key never
// written. A key file with anything else in it is never replaced: a
// damaged key is refused, saying so, and stays as it is.
func TestLoadOrCreateKeyAfterACrash(t *testing.T) {
	t.Setenv(EnvKey, "")
	os.Unsetenv(EnvKey)
	dir := t.TempDir()
	p := filepath.Join(dir, "secret.key")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := LoadOrCreateKey(p)
	if err != nil || len(k) != KeySize {
		t.Fatalf("LoadOrCreateKey over an empty file = %x, %v; want a new key", k, err)
	}
	if again, err := LoadKey(p); err != nil || !bytes.Equal(again, k) {
		t.Fatalf("LoadKey after = %x, %v; want the new key", again, err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".key-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}

	damaged := []byte("c2hvcnQ=\n") // base64, but not 32 bytes
	if err := os.WriteFile(p, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := LoadOrCreateKey(p); err == nil {
		t.Fatalf("LoadOrCreateKey over a damaged key = %x; want it refused", k)
	}
	if b, _ := os.ReadFile(p); !bytes.Equal(b, damaged) {
		t.Fatalf("the damaged key file was changed: %q", b)
	}
}
