package objstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Dir is a Store in a local directory: the object under key "a/b" is the
// file DIR/a/b. Each Put writes a temporary file beside its target, syncs
// it, renames it into place and syncs the directory, so a crash leaves the
// old object or the new one, and concurrent writers of one key each
// install a whole object (the last rename wins).
type Dir struct {
	root string
}

// OpenDir opens (creating it if missing) the directory store rooted at an
// absolute path.
func OpenDir(root string) (*Dir, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("objstore: open dir %q: path is not absolute", root)
	}
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("objstore: open dir: %w", err)
	}
	return &Dir{root: filepath.Clean(root)}, nil
}

func (d *Dir) String() string { return "file://" + d.root }

func (d *Dir) path(key string) string { return filepath.Join(d.root, filepath.FromSlash(key)) }

// Put implements Store.
func (d *Dir) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("objstore: put: %w", err)
	}
	if err := d.put(ctx, key, r, size); err != nil {
		return fmt.Errorf("objstore: put %s in %s: %w", key, d, err)
	}
	return nil
}

func (d *Dir) put(ctx context.Context, key string, r io.Reader, size int64) error {
	dst := d.path(key)
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, ".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	n, err := io.Copy(f, ctxReader{ctx, io.LimitReader(r, size+1)})
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("read %d bytes, want %d", n, size)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// ctxReader stops a copy once its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Get implements Store.
func (d *Dir) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, fmt.Errorf("objstore: get: %w", err)
	}
	f, err := os.Open(d.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("objstore: get %s in %s: %w", key, d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("objstore: get %s: %w", key, err)
	}
	return f, nil
}

// Stat implements Store.
func (d *Dir) Stat(ctx context.Context, key string) (Info, error) {
	if err := checkKey(key); err != nil {
		return Info{}, fmt.Errorf("objstore: stat: %w", err)
	}
	fi, err := os.Stat(d.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("objstore: stat %s in %s: %w", key, d, ErrNotFound)
	}
	if err != nil {
		return Info{}, fmt.Errorf("objstore: stat %s: %w", key, err)
	}
	return Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Delete implements Store.
func (d *Dir) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("objstore: delete: %w", err)
	}
	err := os.Remove(d.path(key))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("objstore: delete %s: %w", key, err)
	}
	return nil
}

// staleTemp is the age past which a temporary file is taken to be left by
// a Put that crashed: no Put of a live process takes a day.
const staleTemp = 24 * time.Hour

// removeStaleTemp removes the temporary file at p if a crashed Put left
// it.
func removeStaleTemp(p string, e fs.DirEntry) {
	if !strings.HasPrefix(e.Name(), ".tmp-") {
		return
	}
	if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleTemp {
		os.Remove(p)
	}
}

// List implements Store. It walks only the directories the prefix can
// reach and skips temporary files of Puts in flight, removing those that
// crashed Puts left more than a day ago.
func (d *Dir) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := checkPrefix(prefix); err != nil {
		return fmt.Errorf("objstore: list: %w", err)
	}
	start := d.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = d.path(prefix[:i])
	}
	err := filepath.WalkDir(start, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed during the walk, or a prefix with no objects
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(e.Name(), ".") && p != start {
			if e.IsDir() {
				return fs.SkipDir
			}
			removeStaleTemp(p, e)
			return nil
		}
		rel, err := filepath.Rel(d.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if e.IsDir() {
			// Descend only where keys below can still match the prefix.
			if p != start && !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		return fn(Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	if err != nil {
		return fmt.Errorf("objstore: list %q in %s: %w", prefix, d, err)
	}
	return nil
}
