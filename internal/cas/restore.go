package cas

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cove-dev/cove/internal/objstore"
)

// Seed is a local copy of files uploaded before (a template's, or an
// earlier park's): Restore reads the chunks it shares with the manifest
// from there instead of fetching them. Its chunks are verified like
// fetched ones; a file that changed since is only a missed saving.
type Seed struct {
	Manifest Manifest
	Dir      string // where the manifest's files lie
}

// RestoreOptions are Restore's optional inputs.
type RestoreOptions struct {
	Seeds    []Seed
	Progress func(Progress) // called from several goroutines, one call at a time
}

// RestoreStats counts what a Restore did.
type RestoreStats struct {
	ChunksFetched   int   // chunks fetched from the store
	BytesFetched    int64 // their compressed size
	ChunksFromSeeds int   // chunks read from a seed
	ChunksZero      int   // zero chunks, left as holes
}

// ErrCorrupt is returned (wrapped) by Restore for a chunk whose stored
// bytes do not decompress to bytes with its hash.
var ErrCorrupt = errors.New("corrupt chunk")

// ErrBadManifest is returned (wrapped) by LoadManifest for a manifest
// whose stored bytes do not hash to its id or do not describe files: it
// can restore nothing, whatever is tried again.
var ErrBadManifest = errors.New("corrupt manifest")

// place is where one chunk goes: file f at offset off, n bytes.
type place struct {
	f   int
	off int64
	n   int
}

// Restore writes the manifest's files into dir, with their permission
// bits and owned by the caller: each to a temporary file beside its
// target, sparse where the manifest has zero chunks, and only
// once every chunk of every file is written and synced are they renamed
// into place. Each chunk is taken from a seed or fetched from the store,
// and verified against its hash before use; a chunk that is missing or
// corrupt fails the Restore with an error naming the chunk and the file,
// and leaves the targets as they were. The temp files of a target that a
// restore cut short left (a process killed mid-restore) are removed
// first; the caller runs one restore into a dir at a time.
func (s *Store) Restore(ctx context.Context, m Manifest, dir string, opts RestoreOptions) (RestoreStats, error) {
	var st RestoreStats
	if err := m.validate(); err != nil {
		return st, fmt.Errorf("cas: restore %s: %w", m.ID, err)
	}
	r := &restore{s: s, m: m, progress: opts.Progress, seeds: seedIndex(opts.Seeds)}
	defer r.cleanup()
	byHash := map[string][]place{}
	var order []string
	for fi, f := range m.Files {
		tmp, err := tempBeside(filepath.Join(dir, filepath.FromSlash(f.Name)))
		if err != nil {
			return st, fmt.Errorf("cas: restore %s: %w", f.Name, err)
		}
		r.tmps = append(r.tmps, tmp)
		if err := tmp.Truncate(f.Size); err != nil {
			return st, fmt.Errorf("cas: restore %s: %w", f.Name, err)
		}
		for i, c := range f.Chunks {
			if c == "" {
				st.ChunksZero++
				continue
			}
			off := int64(i) * int64(m.ChunkSize)
			n := int(min(int64(m.ChunkSize), f.Size-off))
			if byHash[c] == nil {
				order = append(order, c)
			}
			byHash[c] = append(byHash[c], place{fi, off, n})
			r.total += int64(n)
		}
	}
	if err := r.run(ctx, order, byHash); err != nil {
		return r.stats(st), err
	}
	for fi, f := range m.Files {
		if err := r.tmps[fi].Chmod(f.Mode); err != nil {
			return r.stats(st), fmt.Errorf("cas: restore %s: %w", f.Name, err)
		}
		if err := r.tmps[fi].Sync(); err != nil {
			return r.stats(st), fmt.Errorf("cas: restore %s: %w", f.Name, err)
		}
	}
	for fi, f := range m.Files {
		target := filepath.Join(dir, filepath.FromSlash(f.Name))
		if err := os.Rename(r.tmps[fi].Name(), target); err != nil {
			return r.stats(st), fmt.Errorf("cas: restore %s: %w", f.Name, err)
		}
		r.renamed = fi + 1
		if err := syncDir(filepath.Dir(target)); err != nil {
			return r.stats(st), fmt.Errorf("cas: restore %s: %w", f.Name, err)
		}
	}
	return r.stats(st), nil
}

// tempBeside creates the temp file a restore writes target into, beside
// it, first removing those of target that an earlier restore cut short
// left (a server killed mid-restore): each is as large as the file, and
// nothing else would ever remove them. The caller runs one restore into a
// dir at a time (the session's lock, the template's).
func tempBeside(target string) (*os.File, error) {
	dir, prefix := filepath.Dir(target), "."+filepath.Base(target)+".restore-"
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), prefix) && e.Type().IsRegular() {
				os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	return os.CreateTemp(dir, prefix+"*")
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// seedChunk is where a seed holds a chunk.
type seedChunk struct {
	path string
	off  int64
	n    int
}

func seedIndex(seeds []Seed) map[string]seedChunk {
	idx := map[string]seedChunk{}
	for _, sd := range seeds {
		for _, f := range sd.Manifest.Files {
			path := filepath.Join(sd.Dir, filepath.FromSlash(f.Name))
			if !filepath.IsLocal(filepath.FromSlash(f.Name)) {
				continue
			}
			// A seed file that is gone (or cut short) must not shadow
			// another seed holding the same chunk: only the first seed
			// of a chunk is tried.
			if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() || fi.Size() < f.Size {
				continue
			}
			for i, c := range f.Chunks {
				if _, ok := idx[c]; ok || c == "" {
					continue
				}
				off := int64(i) * int64(sd.Manifest.ChunkSize)
				idx[c] = seedChunk{path, off, int(min(int64(sd.Manifest.ChunkSize), f.Size-off))}
			}
		}
	}
	return idx
}

// restore is one Restore's shared state.
type restore struct {
	s        *Store
	m        Manifest
	seeds    map[string]seedChunk
	tmps     []*os.File
	renamed  int // tmps[:renamed] are in place
	total    int64
	progress func(Progress)

	done, fetchedBytes   atomic.Int64
	nFetched, nFromSeeds atomic.Int64
	progressMu           sync.Mutex
}

func (r *restore) stats(st RestoreStats) RestoreStats {
	st.ChunksFetched = int(r.nFetched.Load())
	st.BytesFetched = r.fetchedBytes.Load()
	st.ChunksFromSeeds = int(r.nFromSeeds.Load())
	return st
}

// cleanup closes the temporary files and removes those not renamed.
func (r *restore) cleanup() {
	for i, t := range r.tmps {
		t.Close()
		if i >= r.renamed {
			os.Remove(t.Name())
		}
	}
}

func (r *restore) run(ctx context.Context, order []string, byHash map[string][]place) error {
	err := forEach(ctx, r.s.cfg.Parallel, order, func() func(context.Context, string) error {
		return func(ctx context.Context, c string) error { return r.chunk(ctx, c, byHash[c]) }
	})
	if err != nil {
		return fmt.Errorf("cas: restore %s: %w", r.m.ID, err)
	}
	return nil
}

// chunk gets chunk c, verified, and writes it to each of its places.
func (r *restore) chunk(ctx context.Context, c string, places []place) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, _ := ParseHash(c) // validated
	n := places[0].n
	b, ok := r.fromSeed(c, h, n)
	if ok {
		r.nFromSeeds.Add(1)
	} else {
		var err error
		if b, err = r.fetch(ctx, h, n); err != nil {
			f := r.m.Files[places[0].f]
			return fmt.Errorf("chunk %d (%s) of file %s: %w", places[0].off/int64(r.m.ChunkSize), c, f.Name, err)
		}
	}
	for _, p := range places {
		if p.n != n {
			return fmt.Errorf("chunk %s: used at sizes %d and %d", c, n, p.n)
		}
		if _, err := r.tmps[p.f].WriteAt(b, p.off); err != nil {
			return fmt.Errorf("write %s: %w", r.m.Files[p.f].Name, err)
		}
		if r.progress != nil {
			done := r.done.Add(int64(n))
			r.progressMu.Lock()
			r.progress(Progress{Done: done, Total: r.total})
			r.progressMu.Unlock()
		}
	}
	return nil
}

// fromSeed reads chunk c from a seed, if one has it with the right bytes.
func (r *restore) fromSeed(c string, h Hash, n int) ([]byte, bool) {
	sc, ok := r.seeds[c]
	if !ok || sc.n != n {
		return nil, false
	}
	f, err := os.Open(sc.path)
	if err != nil {
		r.s.cfg.Log.Debug("cas: seed unreadable; fetching", "path", sc.path, "err", err)
		return nil, false
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, sc.off); err != nil || Hash(sha256.Sum256(b)) != h {
		r.s.cfg.Log.Debug("cas: seed changed; fetching", "path", sc.path, "chunk", c)
		return nil, false
	}
	return b, true
}

// fetch gets chunk h from the store and verifies it.
func (r *restore) fetch(ctx context.Context, h Hash, n int) ([]byte, error) {
	rc, err := r.s.cfg.Objects.Get(ctx, chunkKey(h))
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, fmt.Errorf("missing from the store: %w", err)
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	// A chunk's zstd frame is never much larger than the chunk.
	z, err := io.ReadAll(io.LimitReader(rc, int64(n)+(64<<10)))
	if err != nil {
		return nil, err
	}
	r.fetchedBytes.Add(int64(len(z)))
	r.nFetched.Add(1)
	b, err := r.s.dec.DecodeAll(z, make([]byte, 0, n))
	if err != nil {
		return nil, fmt.Errorf("%w: decompress: %v", ErrCorrupt, err)
	}
	if len(b) != n || Hash(sha256.Sum256(b)) != h {
		return nil, fmt.Errorf("%w: its %d bytes hash to %x", ErrCorrupt, len(b), sha256.Sum256(b))
	}
	return b, nil
}
