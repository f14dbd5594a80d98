package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/store"
)

// Images in the object store (issue 18).
//
// A root file system is what every disk overlay of the sessions and
// template versions booted from it rests on (their qcow2 backing file,
// named by its absolute path). So that a host that lost it (or never had
// it) can wake them, the image's files go to the object store too, as
// content-addressed chunks (package cas), and its manifest ID is
// recorded on its record (store.Image.StoredManifest) while the record
// names that build; the manifests resting on it name it as a base
// (cas.Manifest.Bases), which keeps it out of a GC as long as they are
// kept. Its files are named in the manifest by their path under the
// images directory ("tiny/KEY/rootfs.raw"), so a restore puts them back
// where the overlays look for them.

// Objects is what the builder needs of the object store; *cas.Store is
// one.
type Objects interface {
	UploadWith(ctx context.Context, files []cas.Source, opts cas.UploadOptions) (cas.Manifest, cas.Stats, error)
	LoadManifest(ctx context.Context, id string) (cas.Manifest, error)
	Restore(ctx context.Context, m cas.Manifest, dir string, opts cas.RestoreOptions) (cas.RestoreStats, error)
}

// imageFiles are an image directory's files, as uploaded.
var imageFiles = []string{"rootfs.raw", "manifest.json"}

// ImageOf returns the built image whose root file system is at rootFS,
// a path under the images directory.
func (b *Builder) ImageOf(rootFS string) (Image, error) {
	rel, err := filepath.Rel(b.imagesDir(), rootFS)
	parts := strings.Split(filepath.ToSlash(rel), "/")
	if err != nil || len(parts) != 3 || parts[2] != "rootfs.raw" || parts[0] == ".." {
		return Image{}, fmt.Errorf("image: %s is not an image's root file system under %s", rootFS, b.imagesDir())
	}
	im, err := b.load(parts[0], parts[1])
	if err != nil {
		return Image{}, fmt.Errorf("image: %s: %w", rootFS, err)
	}
	return im, nil
}

// Store uploads the files of the image whose root file system is at
// rootFS to Objects, unless they are there already, and returns their
// manifest ID. The image's record gets it while the record names this
// build (the same Key); an older build's manifest is kept in the store
// by the manifests that rest on it. Calls for one image wait for each
// other, and for its builds.
func (b *Builder) Store(ctx context.Context, rootFS string) (string, error) {
	if b.Objects == nil {
		return "", errors.New("image: no object store")
	}
	im, err := b.ImageOf(rootFS)
	if err != nil {
		return "", err
	}
	mu := b.buildLock(im.Name)
	mu.Lock()
	defer mu.Unlock()
	b.bmu.Lock()
	id := b.stored[im.Key]
	b.bmu.Unlock()
	if id != "" {
		return id, nil
	}
	rec, recErr := b.getRecord(ctx, im.Name)
	if recErr == nil && rec.Key == im.Key && rec.StoredManifest != "" {
		b.remember(im.Key, rec.StoredManifest)
		return rec.StoredManifest, nil
	}
	dir := filepath.Dir(im.RootFS)
	var srcs []cas.Source
	for _, f := range imageFiles {
		srcs = append(srcs, cas.Source{Name: path.Join(im.Name, im.Key, f), Path: filepath.Join(dir, f)})
	}
	m, st, err := b.Objects.UploadWith(ctx, srcs, cas.UploadOptions{})
	if err != nil {
		return "", fmt.Errorf("image: store %s (key %s): %w", im.Name, im.Key, err)
	}
	if recErr == nil && rec.Key == im.Key {
		rec.StoredManifest = m.ID
		if err := b.Records.PutImage(ctx, rec); err != nil {
			return "", fmt.Errorf("image: store %s (key %s): record: %w", im.Name, im.Key, err)
		}
	}
	b.remember(im.Key, m.ID)
	if b.Log != nil {
		b.Log.Info("image stored", "image", im.Name, "key", im.Key, "manifest", m.ID, "bytes_added", st.BytesAdded)
	}
	return m.ID, nil
}

func (b *Builder) remember(key, manifest string) {
	b.bmu.Lock()
	defer b.bmu.Unlock()
	if b.stored == nil {
		b.stored = map[string]string{}
	}
	b.stored[key] = manifest
}

func (b *Builder) getRecord(ctx context.Context, name string) (store.Image, error) {
	if b.Records == nil {
		return store.Image{}, store.ErrNotFound
	}
	return b.Records.GetImage(ctx, name)
}

// Missing reports whether any file of the image manifest m is missing
// from this host.
func (b *Builder) Missing(m cas.Manifest) bool {
	for _, f := range m.Files {
		if _, err := os.Stat(filepath.Join(b.imagesDir(), filepath.FromSlash(f.Name))); err != nil {
			return true
		}
	}
	return false
}

// Fetch restores the image files of manifest m (one Store wrote) where
// they are missing from this host, every chunk verified, into the images
// directory: where the disk overlays resting on them name them.
func (b *Builder) Fetch(ctx context.Context, m cas.Manifest, progress func(cas.Progress)) (cas.RestoreStats, error) {
	if b.Objects == nil {
		return cas.RestoreStats{}, errors.New("image: no object store")
	}
	name, key, err := imageOfManifest(m)
	if err != nil {
		return cas.RestoreStats{}, err
	}
	mu := b.buildLock(name)
	mu.Lock()
	defer mu.Unlock()
	if !b.Missing(m) {
		return cas.RestoreStats{}, nil
	}
	unlock, err := lockFile(filepath.Join(b.imagesDir(), name+".lock"))
	if err != nil {
		return cas.RestoreStats{}, err
	}
	defer unlock()
	st, err := b.restore(ctx, m, name, key, progress)
	if err != nil {
		return st, err
	}
	b.remember(key, m.ID)
	return st, nil
}

// restore writes image manifest m's files (image name, key) into the
// images directory; the caller holds the build locks.
func (b *Builder) restore(ctx context.Context, m cas.Manifest, name, key string, progress func(cas.Progress)) (cas.RestoreStats, error) {
	// QEMU, which runs as another user, reads the root file system.
	for _, d := range []string{b.imagesDir(), filepath.Join(b.imagesDir(), name), filepath.Join(b.imagesDir(), name, key)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return cas.RestoreStats{}, fmt.Errorf("image: fetch %s: %w", name, err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return cas.RestoreStats{}, fmt.Errorf("image: fetch %s: %w", name, err)
		}
	}
	// A file of it still here is read for the chunks it holds.
	st, err := b.Objects.Restore(ctx, m, b.imagesDir(), cas.RestoreOptions{Progress: progress, Seeds: []cas.Seed{{Manifest: m, Dir: b.imagesDir()}}})
	if err != nil {
		return st, fmt.Errorf("image: fetch %s (key %s): %w", name, key, err)
	}
	return st, nil
}

// fetchStored restores image name built with key k from the object store
// if its record says it is stored there; the caller holds the build
// locks. It reports whether the image is in place.
func (b *Builder) fetchStored(ctx context.Context, name, k string, progress func(string)) (Image, bool) {
	rec, err := b.getRecord(ctx, name)
	if err != nil || b.Objects == nil || rec.Key != k || rec.StoredManifest == "" {
		return Image{}, false
	}
	progress(fmt.Sprintf("%s: fetching from the object store (key %s, manifest %s)", name, k, rec.StoredManifest))
	fail := func(err error) (Image, bool) {
		progress(fmt.Sprintf("%s: not fetched from the object store, building it: %v", name, err))
		return Image{}, false
	}
	m, err := b.Objects.LoadManifest(ctx, rec.StoredManifest)
	if err != nil {
		return fail(err)
	}
	if n, key, err := imageOfManifest(m); err != nil || n != name || key != k {
		return fail(fmt.Errorf("manifest %s is not of %s/%s", m.ID, name, k))
	}
	if _, err := b.restore(ctx, m, name, k, nil); err != nil {
		return fail(err)
	}
	im, err := b.load(name, k)
	if err != nil {
		return fail(err)
	}
	b.remember(k, m.ID)
	return im, true
}

// imageOfManifest checks that an image manifest's files are one image
// directory's, and returns the image's name and key.
func imageOfManifest(m cas.Manifest) (name, key string, err error) {
	for _, f := range m.Files {
		parts := strings.Split(f.Name, "/")
		if len(parts) != 3 || (name != "" && (parts[0] != name || parts[1] != key)) {
			return "", "", fmt.Errorf("image: manifest %s: file %q is not in one image's directory", m.ID, f.Name)
		}
		name, key = parts[0], parts[1]
	}
	if name == "" {
		return "", "", fmt.Errorf("image: manifest %s names no file", m.ID)
	}
	return name, key, nil
}
