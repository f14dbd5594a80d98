// Package cas stores files in an object store as content-addressed chunks:
// each file is cut into fixed, page-aligned chunks, each chunk is stored
// once under the SHA-256 of its bytes, compressed with zstd, and a
// Manifest lists each file's chunks. Files that share pages (clones of one
// template, successive parks of one session) share chunks, so the store
// grows by what differs. All-zero chunks are not stored at all.
//
// In the object store:
//
//	chunks/ab/abcd…   zstd of the chunk whose SHA-256 is abcd…
//	manifests/ef01…   a Manifest as JSON, under the SHA-256 of that JSON
//
// Upload writes a manifest only after every chunk it names is durable;
// Restore verifies every chunk against its hash before use and puts no
// file in place until all of them are whole; GC deletes chunks that no
// live (or young) manifest names once they are older than a grace period.
package cas

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cove-dev/cove/internal/objstore"
	"github.com/klauspost/compress/zstd"
)

// DefaultChunkSize is 64 KiB: 16 guest pages. Smaller chunks dedup a
// clone's scattered dirty pages better, but each costs an object (a PUT,
// a GET, a manifest entry) and compresses worse; larger ones carry more
// clean pages along with each dirty one. Measured on a tiny template's RAM
// file (256 MiB, 108 MiB touched) and a session cloned from it and run:
//
//	chunk    template stored   clone added   clone's new objects
//	4 KiB    21.9 MiB          4.17 MiB      5037
//	16 KiB   19.5 MiB          3.99 MiB      1770
//	64 KiB   18.6 MiB          4.41 MiB       545
//	256 KiB  18.2 MiB          4.63 MiB       157
//	1 MiB    18.1 MiB          6.60 MiB        52
//
// 64 KiB adds within 10% of the fewest bytes with a tenth of the objects
// of 4 KiB.
const DefaultChunkSize = 64 << 10

// pageSize is the alignment of chunk sizes: a chunk never splits a page.
const pageSize = 4096

// Config wires a Store.
type Config struct {
	Objects objstore.Store // where chunks and manifests live (required)

	// ChunkSize is the size of each chunk but a file's last; a multiple
	// of 4 KiB. Zero means DefaultChunkSize. A manifest records its own,
	// so stores may hold manifests of several sizes.
	ChunkSize int
	// Parallel is how many chunks are processed at once; 0 means 8.
	Parallel int
	// RefreshAfter is the age past which a chunk that an upload finds in
	// the store is written again rather than reused, so that its
	// modification time says it is in use. GC's grace period must exceed
	// it by the longest upload. Zero means 12 hours.
	RefreshAfter time.Duration
	// Log receives progress and oddities; nil discards.
	Log *slog.Logger
	// Now is the clock; nil means time.Now. Tests move it to age objects.
	Now func() time.Time
}

// Store uploads, restores and collects files over an objstore.Store. It is
// safe for concurrent use.
type Store struct {
	cfg Config
	enc *zstd.Encoder
	dec *zstd.Decoder

	mu sync.Mutex
	// known maps the chunks this Store has seen in the object store to
	// when they were last written, so that uploads skip their Stat.
	known map[Hash]time.Time // guarded by mu
}

// New returns a Store.
func New(cfg Config) (*Store, error) {
	if cfg.Objects == nil {
		return nil, fmt.Errorf("cas: no object store")
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.ChunkSize < pageSize || cfg.ChunkSize%pageSize != 0 || cfg.ChunkSize > 16<<20 {
		return nil, fmt.Errorf("cas: chunk size %d: want a multiple of %d up to 16 MiB", cfg.ChunkSize, pageSize)
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 8
	}
	if cfg.RefreshAfter <= 0 {
		cfg.RefreshAfter = 12 * time.Hour
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, fmt.Errorf("cas: zstd encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(cfg.Parallel), zstd.WithDecoderMaxMemory(32<<20))
	if err != nil {
		return nil, fmt.Errorf("cas: zstd decoder: %w", err)
	}
	return &Store{cfg: cfg, enc: enc, dec: dec, known: map[Hash]time.Time{}}, nil
}

// Hash is the SHA-256 of a chunk's plain bytes.
type Hash [sha256.Size]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash reads a Hash written by String.
func ParseHash(s string) (Hash, error) {
	var h Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("cas: bad hash %q", s)
	}
	copy(h[:], b)
	return h, nil
}

func chunkKey(h Hash) string {
	s := h.String()
	return "chunks/" + s[:2] + "/" + s
}

func manifestKey(id string) string { return "manifests/" + id }

// Progress reports bytes done out of a total, for an upload (bytes of
// data read) or a restore (bytes of data written).
type Progress struct {
	Done, Total int64
}

// fresh reports whether a chunk last written at t may be reused without
// writing it again.
func (s *Store) fresh(t time.Time) bool { return s.cfg.Now().Sub(t) < s.cfg.RefreshAfter }

func (s *Store) remember(h Hash, t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.After(s.known[h]) {
		s.known[h] = t
	}
}

func (s *Store) forget(h Hash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.known, h)
}

func (s *Store) lastWritten(h Hash) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.known[h]
	return t, ok
}
