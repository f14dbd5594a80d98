// Package secret keeps the credentials that the egress proxy adds to a
// session's outgoing requests: an engineer's, a team's or a template's
// token, sent as a header to the hosts the secret names.
//
// A value is sealed with AES-256-GCM (Box) under a key kept apart from the
// database: a 0600 file, or the COVE_SECRET_KEY environment variable. The
// store holds only ciphertext, bound to its record (owner kind, owner,
// name), so that a ciphertext copied onto another record does not open.
// A value is opened only on the host, by a Resolver, for the proxy; it
// never reaches a guest, a log line, an error or an API answer.
//
// Keeper serves the API (set, list, remove, with their validation);
// Resolver gives the proxy the secrets of a session's owner, its teams
// and its template, the owner's first.
package secret

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cove-dev/cove/internal/keyfile"
)

// KeySize is the length of a key: AES-256's.
const KeySize = 32

// EnvKey is the environment variable that holds the key, base64 of
// KeySize bytes. When it is set it wins over the key file.
const EnvKey = "COVE_SECRET_KEY"

// sealVersion is the first byte of every sealed value: the layout that
// follows it (key id, nonce, GCM ciphertext and tag).
const sealVersion = 1

// keyIDSize is the length of the key id in a sealed value: enough to tell
// "another key" from "another record" in an error, and nothing about the
// key itself (a hash of it under a label).
const keyIDSize = 4

// Box seals and opens values with one key. It is safe for concurrent use.
type Box struct {
	aead  cipher.AEAD
	keyID [keyIDSize]byte
}

// NewBox returns a Box for key, which must be KeySize bytes.
func NewBox(key []byte) (*Box, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("secret: key of %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secret: key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secret: key: %w", err)
	}
	b := &Box{aead: aead}
	sum := sha256.Sum256(append([]byte("cove secret key id\x00"), key...))
	copy(b.keyID[:], sum[:])
	return b, nil
}

// AAD is the additional data that binds a sealed value to its record:
// the owner's kind, the owner and the secret's name, each prefixed with
// its length so that no two records share it.
func AAD(ownerKind, owner, name string) []byte {
	b := []byte("cove secret v1")
	for _, s := range []string{ownerKind, owner, name} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

// Seal encrypts plaintext bound to aad (see AAD) under a fresh random
// nonce.
func (b *Box) Seal(plaintext, aad []byte) ([]byte, error) {
	out := make([]byte, 1+keyIDSize+b.aead.NonceSize(), 1+keyIDSize+b.aead.NonceSize()+len(plaintext)+b.aead.Overhead())
	out[0] = sealVersion
	copy(out[1:], b.keyID[:])
	if _, err := rand.Read(out[1+keyIDSize:]); err != nil {
		return nil, fmt.Errorf("secret: seal: nonce: %w", err)
	}
	nonce := out[1+keyIDSize:]
	return b.aead.Seal(out, nonce, plaintext, aad), nil
}

// Open decrypts what Seal made with the same key and aad. Another key, or
// another record's aad, or altered bytes give an error that says which it
// can tell, never a wrong plaintext.
func (b *Box) Open(sealed, aad []byte) ([]byte, error) {
	head := 1 + keyIDSize + b.aead.NonceSize()
	if len(sealed) < head+b.aead.Overhead() || sealed[0] != sealVersion {
		return nil, errors.New("secret: cannot decrypt: not a sealed value of this version")
	}
	if id := sealed[1 : 1+keyIDSize]; string(id) != string(b.keyID[:]) {
		return nil, fmt.Errorf("secret: cannot decrypt: sealed under another key (key id %x, this key's is %x): wrong key? (%s or the key file)", id, b.keyID, EnvKey)
	}
	plain, err := b.aead.Open(nil, sealed[1+keyIDSize:head], sealed[head:], aad)
	if err != nil {
		return nil, errors.New("secret: cannot decrypt: the key is right but the value does not open: it was sealed for another record, or altered")
	}
	return plain, nil
}

// LoadKey returns the key: from EnvKey when it is set, else from the file
// at path, which holds base64 of KeySize bytes and must be readable by
// its owner alone (mode 0600 or stricter).
func LoadKey(path string) ([]byte, error) {
	if key, ok, err := envKey(); ok || err != nil {
		return key, err
	}
	if path == "" {
		return nil, fmt.Errorf("secret: no key: %s is unset and no key file is given", EnvKey)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secret: key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("secret: key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("secret: key file %s has mode %04o: others may read it; run chmod 600 %s", path, perm, path)
	}
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secret: key file: %w", err)
	}
	key, err := decodeKey(string(text))
	if err != nil {
		return nil, fmt.Errorf("secret: key file %s: %w", path, err)
	}
	return key, nil
}

// LoadOrCreateKey is LoadKey that, when EnvKey is unset and no file is at
// path, makes a new random key there (mode 0600) first. Its directory must
// exist.
func LoadOrCreateKey(path string) ([]byte, error) {
	if key, ok, err := envKey(); ok || err != nil {
		return key, err
	}
	if path == "" {
		return nil, fmt.Errorf("secret: no key: %s is unset and no key file is given", EnvKey)
	}
	if _, err := os.Stat(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("secret: new key file: %w", err)
	}
	for range 2 {
		if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && fi.Size() == 0 {
			// Left by a server killed between creating the file and
			// writing it (before keys were written whole): no secret was
			// ever sealed with a key never written, so it is made anew.
			// A file with anything in it is never replaced.
			if err := os.Remove(path); err != nil {
				return nil, fmt.Errorf("secret: empty key file: %w", err)
			}
		}
		key := make([]byte, KeySize)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("secret: new key: %w", err)
		}
		// Whole or not at all (a temporary file, fsynced, linked into
		// place), and never over another's: two servers starting at once
		// keep one key, not one each.
		err := keyfile.Create(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"))
		if errors.Is(err, fs.ErrExist) {
			if fi, serr := os.Stat(path); serr == nil && fi.Size() == 0 {
				continue // an empty one, from before: made anew
			}
			return LoadKey(path)
		}
		if err != nil {
			return nil, fmt.Errorf("secret: new key file %s: %w", path, err)
		}
		return key, nil
	}
	return nil, fmt.Errorf("secret: key file %s stays empty", path)
}

// envKey is the key EnvKey holds, ok false when it is unset.
func envKey() (key []byte, ok bool, err error) {
	v, ok := os.LookupEnv(EnvKey)
	if !ok {
		return nil, false, nil
	}
	key, err = decodeKey(v)
	if err != nil {
		return nil, true, fmt.Errorf("secret: %s: %w", EnvKey, err)
	}
	return key, true, nil
}

// decodeKey decodes base64 text of KeySize bytes. Its errors never
// quote the text.
func decodeKey(text string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(text))
	if err != nil {
		return nil, fmt.Errorf("not base64 (make a key with: head -c %d /dev/urandom | base64)", KeySize)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("key of %d bytes, want %d (make one with: head -c %d /dev/urandom | base64)", len(key), KeySize, KeySize)
	}
	return key, nil
}
