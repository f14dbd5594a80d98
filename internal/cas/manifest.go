package cas

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
)

// Manifest lists the files of one upload and the chunks of each. It is
// stored as JSON under the SHA-256 of that JSON, its ID.
type Manifest struct {
	// ID names the stored manifest; set by Upload and LoadManifest, not
	// part of the JSON.
	ID        string `json:"-"`
	ChunkSize int    `json:"chunk_size"`
	Files     []File `json:"files"`
	// Bases are the IDs of the manifests whose files this one's rest on
	// (a disk overlay's backing file: a session's on its template
	// version's disk, a version's on its image's root file system). GC
	// keeps a base as long as it keeps a manifest that names it, and a
	// restore of this one's files needs theirs in place.
	Bases []string `json:"bases,omitempty"`
}

// File is one file of a Manifest.
type File struct {
	Name string      `json:"name"` // slash-separated path relative to the restore directory
	Size int64       `json:"size"`
	Mode fs.FileMode `json:"mode"` // permission bits; the owner is the restorer's business
	// Chunks holds the hash of each ChunkSize piece of the file, in
	// order, the last maybe shorter; "" for a piece that is all zero.
	Chunks []string `json:"chunks"`
}

// Hashes calls fn with each distinct chunk the manifest names.
func (m Manifest) Hashes(fn func(Hash)) error {
	seen := map[string]bool{"": true}
	for _, f := range m.Files {
		for _, c := range f.Chunks {
			if seen[c] {
				continue
			}
			seen[c] = true
			h, err := ParseHash(c)
			if err != nil {
				return fmt.Errorf("cas: manifest %s: file %s: %w", m.ID, f.Name, err)
			}
			fn(h)
		}
	}
	return nil
}

// validate checks what Restore relies on: names that stay inside the
// directory, sizes that match the chunk counts, hashes that parse.
func (m Manifest) validate() error {
	if m.ChunkSize < pageSize || m.ChunkSize%pageSize != 0 {
		return fmt.Errorf("chunk size %d", m.ChunkSize)
	}
	for _, b := range m.Bases {
		if _, err := ParseHash(b); err != nil {
			return fmt.Errorf("base %q: not a manifest id", b)
		}
	}
	names := map[string]bool{}
	for _, f := range m.Files {
		if f.Mode&^fs.ModePerm != 0 {
			return fmt.Errorf("file %s: mode %v: permission bits only", f.Name, f.Mode)
		}
		if !filepath.IsLocal(filepath.FromSlash(f.Name)) || names[f.Name] {
			return fmt.Errorf("file name %q: not local, or repeated", f.Name)
		}
		names[f.Name] = true
		want := (f.Size + int64(m.ChunkSize) - 1) / int64(m.ChunkSize)
		if f.Size < 0 || int64(len(f.Chunks)) != want {
			return fmt.Errorf("file %s: %d chunks for %d bytes, want %d", f.Name, len(f.Chunks), f.Size, want)
		}
	}
	return m.Hashes(func(Hash) {})
}

func (m Manifest) encode() ([]byte, string) {
	b, _ := json.Marshal(m) // plain structs: never fails
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// LoadManifest reads the manifest stored under id and checks that its
// bytes hash to id.
func (s *Store) LoadManifest(ctx context.Context, id string) (Manifest, error) {
	r, err := s.cfg.Objects.Get(ctx, manifestKey(id))
	if err != nil {
		return Manifest{}, fmt.Errorf("cas: load manifest %s: %w", id, err)
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, 256<<20))
	if err != nil {
		return Manifest{}, fmt.Errorf("cas: load manifest %s: %w", id, err)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != id {
		return Manifest{}, fmt.Errorf("cas: load manifest %s: %w: its bytes hash to %x", id, ErrBadManifest, sum)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("cas: load manifest %s: %w: %w", id, ErrBadManifest, err)
	}
	m.ID = id
	if err := m.validate(); err != nil {
		return Manifest{}, fmt.Errorf("cas: load manifest %s: %w: %w", id, ErrBadManifest, err)
	}
	return m, nil
}
