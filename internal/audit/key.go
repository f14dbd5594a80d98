package audit

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/cove-dev/cove/internal/keyfile"
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
	skey, err := keyfile.Read(keyPath)
	if err != nil {
		return "", fmt.Errorf("audit: %w", err)
	}
	return skey, nil
}

// writeKeyFile creates keyPath (0600) atomically and durably; it never
// replaces a key that exists.
func writeKeyFile(keyPath string, data []byte) error {
	if err := keyfile.Create(keyPath, data); err != nil {
		return fmt.Errorf("audit: %w", err)
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

func verifierKey(skey string) (string, error) {
	vkey, err := keyfile.NoteVerifierKey(skey)
	if err != nil {
		return "", fmt.Errorf("audit: %w", err)
	}
	return vkey, nil
}
