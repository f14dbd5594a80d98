// Package keyfile keeps private keys in files only their owner may read:
// created atomically and durably, never replaced, and refused on read when
// their group or others could read them.
package keyfile

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// Read returns the trimmed contents of the key file at path. A file its
// group or others may read is refused, so that a key leaked by a chmod is
// noticed rather than used.
func Read(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("key %s has mode %04o: its group or others may read it; chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read key: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Create writes data to a new file at path (mode 0600), atomically and
// durably. It never replaces a file that exists: of two processes racing
// to create the same key, the second fails with an error wrapping
// fs.ErrExist and should read the first one's key.
func Create(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create key: %w", err)
	}
	tmp, err := writeTemp(dir, ".key-*", data, 0o600)
	if err != nil {
		return fmt.Errorf("write key %s: %w", path, err)
	}
	defer os.Remove(tmp)
	// Link, not rename: a link fails where the name exists.
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("create key: %w", err)
	}
	return SyncDir(dir)
}

// writeTemp writes data, fsynced, to a new temporary file in dir (mode
// perm) and returns its path; the caller links or renames it into place
// and removes it.
func writeTemp(dir, pattern string, data []byte, perm os.FileMode) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// SyncDir fsyncs the directory dir, making a rename or link in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// WriteFile replaces the file at path with data (mode perm), atomically
// and durably: a temporary file, fsynced, renamed over path, and the
// directory fsynced. For state that is not secret but must survive a
// crash whole or not at all.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := writeTemp(dir, "."+filepath.Base(path)+"-*", data, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(dir)
}

// NoteVerifierKey derives the verifier key of a golang.org/x/mod/sumdb/note
// Ed25519 signer key ("PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>").
func NoteVerifierKey(skey string) (string, error) {
	parts := strings.SplitN(skey, "+", 5)
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return "", errors.New("malformed signer key")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 {
		return "", errors.New("malformed signer key: not an Ed25519 seed")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(parts[2], pub)
	if err != nil {
		return "", fmt.Errorf("verifier key: %w", err)
	}
	return vkey, nil
}
