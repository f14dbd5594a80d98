package issuer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/go-jose/go-jose/v4"
)

// KeyFile is the name of the signing key's file inside the directory given
// to New: one private JWK, JSON, mode 0600.
const KeyFile = "signing.jwk"

// The signing algorithm is ES256 (ECDSA P-256, SHA-256). EdDSA would be
// smaller and faster, but the verifiers this key exists for do not all take
// it: AWS STS AssumeRoleWithWebIdentity and GCP workload identity
// federation accept RS256 and ES256 and not EdDSA. ES256 over RS256 for its
// small keys and signatures and its fast signing.
const alg = jose.ES256

// maxKeyFile bounds what is read from the key file: a P-256 JWK is about
// 250 bytes; anything near this is not one.
const maxKeyFile = 64 << 10

// loadOrCreateKey returns the private signing key kept in dir, generating
// and storing one on first use. A key file that exists but does not hold a
// usable key is an error, never replaced: tokens already handed out were
// signed with it, and replacing it silently would turn them all invalid.
func loadOrCreateKey(dir string) (jose.JSONWebKey, error) {
	if dir == "" {
		return jose.JSONWebKey{}, errors.New("issuer: no key directory given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: create key directory: %w", err)
	}
	path := filepath.Join(dir, KeyFile)
	k, err := readKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	return createKey(dir, path)
}

// readKey reads and checks the key file at path. The error wraps
// fs.ErrNotExist when there is no such file.
func readKey(path string) (jose.JSONWebKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: open signing key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: stat signing key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: signing key %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: signing key %s has mode %#o, readable by others; want 0600 (chmod 600 it if no one else has read it, or move it aside to make a new key)", path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: read signing key: %w", err)
	}
	if len(b) > maxKeyFile {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: signing key %s is over %d bytes: not a key file", path, maxKeyFile)
	}
	k, err := parseKey(b)
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: signing key %s: %w (it is kept as it is: move it aside to make a new key, which turns every token signed with the old one invalid)", path, err)
	}
	return k, nil
}

// parseKey decodes a private ES256 JWK and checks that it is one and that
// its key ID is its thumbprint.
func parseKey(b []byte) (jose.JSONWebKey, error) {
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(b); err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("not a JWK: %w", err)
	}
	priv, ok := k.Key.(*ecdsa.PrivateKey)
	if !ok {
		return jose.JSONWebKey{}, fmt.Errorf("holds a %T, want an ECDSA private key", k.Key)
	}
	if priv.Curve != elliptic.P256() {
		return jose.JSONWebKey{}, fmt.Errorf("key is on curve %s, want P-256", priv.Curve.Params().Name)
	}
	if k.Algorithm != string(alg) {
		return jose.JSONWebKey{}, fmt.Errorf("alg is %q, want %q", k.Algorithm, alg)
	}
	if k.Use != "sig" {
		return jose.JSONWebKey{}, fmt.Errorf("use is %q, want \"sig\"", k.Use)
	}
	kid, err := thumbprint(k)
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	if k.KeyID != kid {
		return jose.JSONWebKey{}, fmt.Errorf("kid is %q, but the key's RFC 7638 thumbprint is %q", k.KeyID, kid)
	}
	return k, nil
}

// createKey generates a key and stores it at path. The file is written
// under a temporary name and linked into place, so path never holds half a
// key, and of two processes starting at once one key wins and both use it.
func createKey(dir, path string) (jose.JSONWebKey, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: generate signing key: %w", err)
	}
	k := jose.JSONWebKey{Key: priv, Algorithm: string(alg), Use: "sig"}
	if k.KeyID, err = thumbprint(k); err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: %w", err)
	}
	b, err := k.MarshalJSON()
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: encode signing key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+KeyFile+".*") // mode 0600
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: write signing key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: write signing key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, fs.ErrExist) {
		return readKey(path) // another process made one first
	} else if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("issuer: store signing key: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // the new name survives a crash; a failure here loses only a fresh key
		d.Close()
	}
	return k, nil
}

// thumbprint is the key's RFC 7638 SHA-256 thumbprint, base64url: its kid.
func thumbprint(k jose.JSONWebKey) (string, error) {
	t, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("key thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(t), nil
}
