package audit

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// DefaultKeyPath is where Open keeps the signing key of the log in dir: a
// sibling file, dir + ".key" ($COVE_HOME/audit.key for $COVE_HOME/audit), so
// that the log directory can be copied or served whole without its key.
func DefaultKeyPath(dir string) string {
	return filepath.Clean(dir) + ".key"
}

// loadOrCreateKey returns the note signer in keyPath, creating it (mode
// 0600) for origin when the file is absent. A key its group or others may
// read is refused. origin, when set, must be the existing key's name.
func loadOrCreateKey(keyPath, origin string) (note.Signer, error) {
	skey, err := readKeyFile(keyPath)
	if errors.Is(err, fs.ErrNotExist) {
		if origin == "" {
			return nil, fmt.Errorf("audit: create key %s: no origin", keyPath)
		}
		skey, _, err = note.GenerateKey(rand.Reader, origin)
		if err != nil {
			return nil, fmt.Errorf("audit: generate key: %w", err)
		}
		if err := writeKeyFile(keyPath, []byte(skey+"\n")); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, fmt.Errorf("audit: key %s: %w", keyPath, err)
	}
	if origin != "" && s.Name() != origin {
		return nil, fmt.Errorf("audit: key %s signs for %q, not %q", keyPath, s.Name(), origin)
	}
	return s, nil
}

func readKeyFile(keyPath string) (string, error) {
	fi, err := os.Stat(keyPath)
	if err != nil {
		return "", fmt.Errorf("audit: key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("audit: key %s has mode %04o: its group or others may read it; chmod 600 it", keyPath, fi.Mode().Perm())
	}
	b, err := os.ReadFile(keyPath)
	if err != nil {
		return "", fmt.Errorf("audit: read key: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// writeKeyFile creates keyPath (0600) atomically and durably; it never
// replaces a key that exists.
func writeKeyFile(keyPath string, data []byte) error {
	dir := filepath.Dir(keyPath)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("audit: create key: %w", err)
	}
	f, err := os.CreateTemp(dir, ".audit-key-*")
	if err != nil {
		return fmt.Errorf("audit: create key: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err == nil {
		_, err = f.Write(data)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("audit: write key: %w", err)
		}
	} else {
		f.Close()
		return fmt.Errorf("audit: create key: %w", err)
	}
	// Link, not rename: two processes racing to create keep the first key.
	if err := os.Link(tmp, keyPath); err != nil {
		return fmt.Errorf("audit: create key: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("audit: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("audit: sync %s: %w", dir, err)
	}
	return nil
}

// VerifierKeyFromFile returns the note verifier key of the signing key in
// keyPath (what `cove audit key` prints), without opening the log.
func VerifierKeyFromFile(keyPath string) (string, error) {
	skey, err := readKeyFile(keyPath)
	if err != nil {
		return "", err
	}
	return verifierKey(skey)
}

// verifierKey derives the verifier key from a note signer key
// ("PRIVATE+KEY+<name>+<hash>+<base64(alg || seed)>").
func verifierKey(skey string) (string, error) {
	parts := strings.SplitN(skey, "+", 5)
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return "", errors.New("audit: malformed signer key")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 {
		return "", errors.New("audit: malformed signer key: not an Ed25519 seed")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(parts[2], pub)
	if err != nil {
		return "", fmt.Errorf("audit: verifier key: %w", err)
	}
	return vkey, nil
}
