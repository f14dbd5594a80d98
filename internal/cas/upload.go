package cas

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/cove-dev/cove/internal/objstore"
	"golang.org/x/sys/unix"
)

// Source names a local file to upload.
type Source struct {
	Name string // its name in the manifest: slash-separated, relative
	Path string // where it is on this host
}

// Stats counts what an Upload did.
type Stats struct {
	Bytes           int64 // the files' sizes, holes included
	BytesRead       int64 // bytes read (the files' data, holes skipped)
	BytesAdded      int64 // bytes put in the store: new chunks (compressed) and the manifest
	BytesRefreshed  int64 // bytes put again to refresh old chunks
	Chunks          int   // chunks in the manifest, zero ones included
	ChunksZero      int   // all-zero chunks, not stored
	ChunksAdded     int   // chunks new to the store
	ChunksReused    int   // chunks the store had (or this upload had already put)
	ChunksRefreshed int   // chunks the store had, written again because they were old
}

// job is one chunk to upload: file f, index i.
type job struct{ f, i int }

// Upload stores the files as chunks and then writes their manifest. It
// reads only the files' data (holes are zero chunks without a read),
// skips chunks the store has, and writes the manifest only after every
// chunk it names is durable; it returns the manifest with its ID set. An
// Upload that fails or is cancelled writes no manifest, and a later
// Upload of the same files reuses the chunks it put. The files must not
// change during the upload. progress, if not nil, is called from several
// goroutines, one call at a time.
func (s *Store) Upload(ctx context.Context, files []Source, progress func(Progress)) (Manifest, Stats, error) {
	return s.UploadWith(ctx, files, UploadOptions{Progress: progress})
}

// UploadOptions are UploadWith's optional inputs.
type UploadOptions struct {
	// Bases are recorded in the manifest (Manifest.Bases): the manifests
	// the files rest on, which must be in the store already.
	Bases []string
	// Progress, if not nil, is called from several goroutines, one call
	// at a time.
	Progress func(Progress)
}

// UploadWith is Upload with options. It checks that each base is a
// manifest in the store before it writes the manifest that names it, and
// writes a base older than Config.RefreshAfter again, as it does chunks,
// so that a GC cannot take it from under the new manifest.
func (s *Store) UploadWith(ctx context.Context, files []Source, opts UploadOptions) (Manifest, Stats, error) {
	progress := opts.Progress
	m := Manifest{ChunkSize: s.cfg.ChunkSize, Files: make([]File, len(files)), Bases: opts.Bases}
	var st Stats
	var jobs []job
	var total int64
	fds := make([]*os.File, len(files))
	defer func() {
		for _, f := range fds {
			if f != nil {
				f.Close()
			}
		}
	}()
	for fi, src := range files {
		f, err := os.Open(src.Path)
		if err != nil {
			return Manifest{}, st, fmt.Errorf("cas: upload: %w", err)
		}
		fds[fi] = f
		info, err := f.Stat()
		if err != nil {
			return Manifest{}, st, fmt.Errorf("cas: upload: %w", err)
		}
		size := info.Size()
		n := int((size + int64(s.cfg.ChunkSize) - 1) / int64(s.cfg.ChunkSize))
		m.Files[fi] = File{Name: src.Name, Size: size, Mode: info.Mode().Perm(), Chunks: make([]string, n)}
		data, err := dataChunks(f, size, s.cfg.ChunkSize)
		if err != nil {
			return Manifest{}, st, fmt.Errorf("cas: upload %s: find data: %w", src.Path, err)
		}
		for i := range n {
			if !data[i] {
				continue
			}
			jobs = append(jobs, job{fi, i})
			total += min(int64(s.cfg.ChunkSize), size-int64(i)*int64(s.cfg.ChunkSize))
		}
		st.Bytes += size
		st.Chunks += n
	}
	if err := m.validate(); err != nil {
		return Manifest{}, st, fmt.Errorf("cas: upload: %w", err)
	}
	u := &upload{s: s, m: &m, fds: fds, total: total, progress: progress}
	if err := u.run(ctx, jobs); err != nil {
		return Manifest{}, u.stats(st), err
	}
	st = u.stats(st)
	for _, f := range m.Files {
		for _, c := range f.Chunks {
			if c == "" {
				st.ChunksZero++
			}
		}
	}
	for _, b := range m.Bases {
		if err := s.refreshManifest(ctx, b); err != nil {
			return Manifest{}, st, fmt.Errorf("cas: upload: base manifest %s: %w", b, err)
		}
	}
	b, id := m.encode()
	if err := s.cfg.Objects.Put(ctx, manifestKey(id), bytes.NewReader(b), int64(len(b))); err != nil {
		return Manifest{}, st, fmt.Errorf("cas: upload: write manifest: %w", err)
	}
	st.BytesAdded += int64(len(b))
	m.ID = id
	s.cfg.Log.Info("cas: uploaded", "manifest", id, "files", len(files), "bytes", st.Bytes,
		"bytes_added", st.BytesAdded, "chunks_added", st.ChunksAdded, "chunks_reused", st.ChunksReused)
	return m, st, nil
}

// refreshManifest checks that manifest id is in the store, and writes it
// again if it is older than RefreshAfter.
func (s *Store) refreshManifest(ctx context.Context, id string) error {
	info, err := s.cfg.Objects.Stat(ctx, manifestKey(id))
	if err != nil || s.fresh(info.ModTime) {
		return err
	}
	r, err := s.cfg.Objects.Get(ctx, manifestKey(id))
	if err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(r, 256<<20))
	r.Close()
	if err != nil {
		return err
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != id {
		return fmt.Errorf("corrupt: its bytes hash to %x", sum)
	}
	return s.cfg.Objects.Put(ctx, manifestKey(id), bytes.NewReader(b), int64(len(b)))
}

// dataChunks marks the chunks of f that hold data, using SEEK_DATA and
// SEEK_HOLE; where the file system cannot tell, every chunk is data.
func dataChunks(f *os.File, size int64, chunk int) ([]bool, error) {
	n := (size + int64(chunk) - 1) / int64(chunk)
	data := make([]bool, n)
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data past off
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			for i := range data {
				data[i] = true
			}
			return data, nil
		}
		if err != nil {
			return nil, err
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		for i := start / int64(chunk); i*int64(chunk) < end && i < n; i++ {
			data[i] = true
		}
		off = end
	}
	return data, nil
}

// upload is one Upload's shared state.
type upload struct {
	s        *Store
	m        *Manifest // Files[f].Chunks[i] written by the job for (f, i) alone
	fds      []*os.File
	total    int64
	progress func(Progress)

	done                      atomic.Int64
	read, added, refreshed    atomic.Int64
	nAdded, nReused, nRefresh atomic.Int64
	progressMu                sync.Mutex
	inflight                  sync.Map // Hash → *once: one put per chunk per upload
}

// once is the put of one chunk, shared by the jobs that hold it.
type once struct {
	done chan struct{}
	err  error
}

func (u *upload) stats(st Stats) Stats {
	st.BytesRead = u.read.Load()
	st.BytesAdded = u.added.Load()
	st.BytesRefreshed = u.refreshed.Load()
	st.ChunksAdded = int(u.nAdded.Load())
	st.ChunksReused = int(u.nReused.Load())
	st.ChunksRefreshed = int(u.nRefresh.Load())
	return st
}

func (u *upload) run(ctx context.Context, jobs []job) error {
	err := forEach(ctx, u.s.cfg.Parallel, jobs, func() func(context.Context, job) error {
		buf := make([]byte, u.s.cfg.ChunkSize)
		return func(ctx context.Context, j job) error { return u.chunk(ctx, j, buf) }
	})
	if err != nil {
		return fmt.Errorf("cas: upload: %w", err)
	}
	return nil
}

// chunk reads, hashes and stores chunk j.
func (u *upload) chunk(ctx context.Context, j job, buf []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f := &u.m.Files[j.f]
	off := int64(j.i) * int64(u.s.cfg.ChunkSize)
	b := buf[:min(int64(len(buf)), f.Size-off)]
	if _, err := u.fds[j.f].ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read %s at %d: %w", f.Name, off, err)
	}
	u.read.Add(int64(len(b)))
	if !allZero(b) {
		h := Hash(sha256.Sum256(b))
		if err := u.store(ctx, h, b); err != nil {
			return fmt.Errorf("chunk %d (%s) of %s: %w", j.i, h, f.Name, err)
		}
		f.Chunks[j.i] = h.String()
	}
	if u.progress != nil {
		done := u.done.Add(int64(len(b)))
		u.progressMu.Lock()
		u.progress(Progress{Done: done, Total: u.total})
		u.progressMu.Unlock()
	}
	return nil
}

// store makes chunk h durable in the store, once per upload.
func (u *upload) store(ctx context.Context, h Hash, b []byte) error {
	o := &once{done: make(chan struct{})}
	if prev, loaded := u.inflight.LoadOrStore(h, o); loaded {
		o = prev.(*once)
		select {
		case <-o.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if o.err == nil {
			u.nReused.Add(1)
		}
		return o.err
	}
	o.err = u.put(ctx, h, b)
	close(o.done)
	return o.err
}

// put writes chunk h unless the store has it, fresh.
func (u *upload) put(ctx context.Context, h Hash, b []byte) error {
	s := u.s
	if t, ok := s.lastWritten(h); ok && s.fresh(t) {
		u.nReused.Add(1)
		return nil
	}
	refresh := false
	info, err := s.cfg.Objects.Stat(ctx, chunkKey(h))
	switch {
	case err == nil && s.fresh(info.ModTime):
		s.remember(h, info.ModTime)
		u.nReused.Add(1)
		return nil
	case err == nil:
		refresh = true
	case !errors.Is(err, objstore.ErrNotFound):
		return err
	}
	z := s.enc.EncodeAll(b, make([]byte, 0, len(b)/2))
	now := s.cfg.Now()
	if err := s.cfg.Objects.Put(ctx, chunkKey(h), bytes.NewReader(z), int64(len(z))); err != nil {
		return err
	}
	s.remember(h, now)
	if refresh {
		u.refreshed.Add(int64(len(z)))
		u.nRefresh.Add(1)
	} else {
		u.added.Add(int64(len(z)))
		u.nAdded.Add(1)
	}
	return nil
}

// zeros is compared against: bytes.Equal runs at memory speed.
var zeros = make([]byte, 16<<20)

func allZero(b []byte) bool { return bytes.Equal(b, zeros[:len(b)]) }
