package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/vmm"
)

// Template versions and images in the object store (issue 18).
//
// A snapshot rests on files it does not hold: a clone's disk overlay on
// its template version's disk, which rests on the image's root file
// system (qcow2 backing files, named by absolute path), and a clone's RAM
// file shares most of its pages with the version's. So the object store
// keeps those too, each under a manifest of its own, and each manifest
// names the one it rests on (cas.Manifest.Bases): a clone's names its
// template version's, which names its image's; a session booted from an
// image names the image's. A manifest is written only once its base is
// in the store: a session is never stored while what it rests on is not.
// And a GC keeps whatever a kept manifest rests on.
//
// A template version is uploaded in the background once it is ready (and
// at a restart while it is not stored), and its record gets the manifest
// (store.TemplateVersion.StoredManifest); an image is uploaded by its
// builder (ImageStore) before the first manifest resting on it.
//
// A wake that finds files of the chain missing on this host restores, in
// order, the image, the template version and the session's own files,
// whichever are missing: each verified chunk by chunk, the session's
// seeded by the version's files. They go back to the paths they had, so
// the overlays' backing file names hold. While it runs, the session's
// inspect shows its progress (api.Session.Restore).

// ImageStore keeps images' files in the object store; *image.Builder
// (with its Objects set) is one. When Config.Images is one, the snapshots
// resting on an image name its manifest as their base; when it is not,
// they name none, and a host must have the image to wake them.
type ImageStore interface {
	// Store uploads the files of the image whose root file system is at
	// rootFS, unless they are stored, and returns their manifest ID.
	Store(ctx context.Context, rootFS string) (string, error)
	// Missing reports whether any file of image manifest m is missing
	// from this host.
	Missing(m cas.Manifest) bool
	// Fetch puts image manifest m's files back where they are missing,
	// every chunk verified, at the paths overlays name them by.
	Fetch(ctx context.Context, m cas.Manifest, progress func(cas.Progress)) (cas.RestoreStats, error)
}

func (m *Manager) imageStore() ImageStore {
	is, _ := m.cfg.Images.(ImageStore)
	return is
}

// backingFile returns the backing file the qcow2 file at path rests on,
// as the driver's Disks read it: absolute, "" for none, an error wrapping
// vmm.ErrNotQcow2 for a file that is not qcow2 (a raw root file system,
// which rests on nothing).
func (m *Manager) backingFile(ctx context.Context, path string) (string, error) {
	b, _, err := m.disks.Backing(ctx, path)
	return b, err
}

// checkBacking follows disk's chain of backing files and fails, naming
// it, at the first one missing.
func (m *Manager) checkBacking(ctx context.Context, disk string) error {
	for range 8 {
		b, err := m.backingFile(ctx, disk)
		if errors.Is(err, vmm.ErrNotQcow2) {
			return nil
		}
		if err != nil || b == "" {
			return err
		}
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("disk %s rests on %s: %w", disk, b, err)
		}
		disk = b
	}
	return fmt.Errorf("disk %s: backing chain too long", disk)
}

// imageBase returns the manifest ID of the image the qcow2 overlay disk
// rests on, uploading the image first if it is not stored; "" when
// Config.Images keeps no images in the store or disk rests on nothing.
func (m *Manager) imageBase(ctx context.Context, disk string) (string, error) {
	is := m.imageStore()
	if is == nil {
		return "", nil
	}
	backing, err := m.backingFile(ctx, disk)
	if err != nil || backing == "" {
		return "", err
	}
	return is.Store(ctx, backing)
}

// version reads template name's version record and its machine, whose
// files need not be on this host, with its paths in this node's home
// (versionHere).
func (m *Manager) version(ctx context.Context, name string, version int) (store.TemplateVersion, machine, error) {
	vs, err := m.cfg.Store.ListTemplateVersions(ctx, name)
	if err != nil {
		return store.TemplateVersion{}, machine{}, err
	}
	for _, v := range vs {
		if v.Version != max(version, 1) {
			continue
		}
		mach, err := decodeMachine(v.Snapshot)
		if err == nil && mach.Parked == nil {
			err = errors.New("no snapshot recorded")
		}
		if err != nil {
			return v, machine{}, fmt.Errorf("template %s version %d: %w", name, version, err)
		}
		return v, m.versionHere(mach), nil
	}
	return store.TemplateVersion{}, machine{}, fmt.Errorf("template %s has no version %d", name, version)
}

// versionFiles are the sources of a template version's files, named as
// in its directory dir.
func versionFiles(name string, version int, mach machine) (srcs []cas.Source, dir string, err error) {
	dir = filepath.Dir(mach.Parked.Mem)
	for _, p := range []string{mach.Parked.Mem, mach.Parked.State, mach.Disk} {
		if filepath.Dir(p) != dir {
			return nil, "", fmt.Errorf("template %s version %d: file %s is not in %s", name, version, p, dir)
		}
		srcs = append(srcs, cas.Source{Name: filepath.Base(p), Path: p})
	}
	return srcs, dir, nil
}

// templateBase returns the manifest of a template version's files,
// uploading them (on their image) and recording it on the version the
// first time, and the directory they lie in on this host. Calls for one
// version wait for each other.
func (m *Manager) templateBase(ctx context.Context, name string, version int) (cas.Manifest, string, error) {
	key := name + "/" + strconv.Itoa(version)
	m.ups.mu.Lock()
	b := m.ups.bases[key]
	if b == nil {
		b = &baseEntry{}
		m.ups.bases[key] = b
	}
	m.ups.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	v, mach, err := m.version(ctx, name, version)
	if err != nil {
		return cas.Manifest{}, "", err
	}
	srcs, dir, err := versionFiles(name, version, mach)
	if err != nil {
		return cas.Manifest{}, "", err
	}
	if v.StoredManifest != "" {
		if b.m != nil && b.m.ID == v.StoredManifest {
			return *b.m, dir, nil
		}
		man, err := m.cfg.Objects.LoadManifest(ctx, v.StoredManifest)
		if err != nil {
			return cas.Manifest{}, "", fmt.Errorf("template %s version %d: %w", name, version, err)
		}
		b.m = &man
		return man, dir, nil
	}
	if v.State != store.VersionReady {
		return cas.Manifest{}, "", fmt.Errorf("template %s version %d is %s", name, version, v.State)
	}
	var opts cas.UploadOptions
	img, err := m.imageBase(ctx, mach.Disk)
	if err != nil {
		return cas.Manifest{}, "", fmt.Errorf("template %s version %d: its image: %w", name, version, err)
	}
	if img != "" {
		opts.Bases = []string{img}
	}
	man, st, err := m.cfg.Objects.UploadWith(ctx, srcs, opts)
	if err != nil {
		return cas.Manifest{}, "", fmt.Errorf("template %s version %d: %w", name, version, err)
	}
	if err := m.recordVersionStored(ctx, name, v, man.ID); err != nil {
		// The manifest is good: the snapshots resting on it name it,
		// which keeps it.
		m.cfg.Log.Warn("template version stored but not recorded", "template", name, "version", version, "err", err)
	}
	m.cfg.Log.Info("template version stored", "template", name, "version", version, "manifest", man.ID,
		"image_manifest", img, "bytes_added", st.BytesAdded)
	b.m = &man
	return man, dir, nil
}

// recordVersionStored records manifest on template name's version read
// as v, if its record still names the same ready snapshot.
func (m *Manager) recordVersionStored(ctx context.Context, name string, read store.TemplateVersion, manifest string) error {
	tl := m.templateLock(name)
	tl.Lock()
	defer tl.Unlock()
	vs, err := m.cfg.Store.ListTemplateVersions(ctx, name)
	if err != nil {
		return err
	}
	for _, v := range vs {
		if v.Version != read.Version {
			continue
		}
		if v.State != store.VersionReady || !bytes.Equal(v.Snapshot, read.Snapshot) {
			return fmt.Errorf("version %d is %s now, or another build", v.Version, v.State)
		}
		v.StoredManifest = manifest
		return m.cfg.Store.PutTemplateVersion(ctx, v)
	}
	return fmt.Errorf("version %d is gone", read.Version)
}

// startVersionUpload uploads template name's version in the background,
// unless it is stored: the first clone's upload then finds its base.
func (m *Manager) startVersionUpload(name string, version int) {
	if m.cfg.Objects == nil {
		return
	}
	m.mu.Lock()
	select {
	case <-m.stop:
		m.mu.Unlock()
		return // the next server uploads it
	default:
	}
	m.bg.Add(1) // under mu: never after stopLoops closed stop
	m.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	u := &upload{cancel: cancel, done: make(chan struct{})}
	key := "template " + name + "/" + strconv.Itoa(version) // no session id looks like it
	m.ups.mu.Lock()
	if old := m.ups.running[key]; old != nil {
		old.cancel()
	}
	m.ups.running[key] = u
	m.ups.mu.Unlock()
	go func() {
		defer m.bg.Done()
		defer cancel()
		defer func() {
			close(u.done)
			m.ups.mu.Lock()
			if m.ups.running[key] == u {
				delete(m.ups.running, key)
			}
			m.ups.mu.Unlock()
		}()
		select {
		case m.ups.slots <- struct{}{}:
			defer func() { <-m.ups.slots }()
		case <-ctx.Done():
			return
		}
		if _, _, err := m.templateBase(ctx, name, version); err != nil && ctx.Err() == nil {
			m.cfg.Log.Warn("template version not stored; its clones' uploads try again", "template", name, "version", version, "err", err)
		}
	}()
}

// uploadVersions starts the uploads of the ready template versions not
// stored whose files are on this host (a server stopped mid-upload, or
// one that ran without an object store).
func (m *Manager) uploadVersions(ctx context.Context) {
	if m.cfg.Objects == nil {
		return
	}
	ts, err := m.cfg.Store.ListTemplates(ctx)
	if err != nil {
		m.cfg.Log.Warn("template versions not uploaded: list templates", "err", err)
		return
	}
	for _, t := range ts {
		vs, err := m.cfg.Store.ListTemplateVersions(ctx, t.Name)
		if err != nil {
			m.cfg.Log.Warn("template versions not uploaded: list versions", "template", t.Name, "err", err)
			continue
		}
		for _, v := range vs {
			if v.State != store.VersionReady || v.StoredManifest != "" {
				continue
			}
			if mach, err := decodeMachine(v.Snapshot); err == nil && mach.Parked != nil && !filesGone(m.versionHere(mach)) {
				m.startVersionUpload(t.Name, v.Version)
			}
		}
	}
}

// restoreProgress is a wake's restore from the object store under way.
type restoreProgress struct {
	done, total atomic.Int64
}

// restoring returns session id's restore under way, or nil.
func (m *Manager) restoring(id string) *api.RestoreProgress {
	m.ups.mu.Lock()
	p := m.ups.restoring[id]
	m.ups.mu.Unlock()
	if p == nil {
		return nil
	}
	return &api.RestoreProgress{DoneBytes: p.done.Load(), TotalBytes: p.total.Load()}
}

// dataBytes is what a restore of manifest man writes: its chunks that are
// not zero.
func dataBytes(man cas.Manifest) int64 {
	var n int64
	for _, f := range man.Files {
		for i, c := range f.Chunks {
			if c != "" {
				n += min(int64(man.ChunkSize), f.Size-int64(i)*int64(man.ChunkSize))
			}
		}
	}
	return n
}

// restoreStep is one manifest's files to put back on this host.
type restoreStep struct {
	what string // for the log and errors
	man  cas.Manifest
	run  func(ctx context.Context, progress func(cas.Progress)) (cas.RestoreStats, error)
}

// chainGone reports whether a file that parked machine mach rests on is
// missing from this host: its own, its template version's (ver, if a
// clone) or the image's root file system.
func (m *Manager) chainGone(ctx context.Context, mach machine, ver *machine) bool {
	if filesGone(mach) {
		return true
	}
	base := mach.Disk
	if ver != nil {
		if filesGone(*ver) {
			return true
		}
		base = ver.Disk
	}
	b, err := m.backingFile(ctx, base)
	if err != nil || b == "" {
		return false // the wake says what is wrong
	}
	_, err = os.Stat(b)
	return errors.Is(err, os.ErrNotExist)
}

// restoreChain puts back, in order, what of stored session rec's chain is
// missing from this host: its image, its template version, its own
// snapshot files; the caller holds the session's lock.
func (m *Manager) restoreChain(ctx context.Context, rec store.Session, mach machine, log *slog.Logger) (cas.RestoreStats, error) {
	steps, err := m.restoreSteps(ctx, rec, mach)
	if err != nil {
		return cas.RestoreStats{}, err
	}
	p := &restoreProgress{}
	for _, s := range steps {
		p.total.Add(dataBytes(s.man))
	}
	m.ups.mu.Lock()
	m.ups.restoring[rec.ID] = p
	m.ups.mu.Unlock()
	defer func() {
		m.ups.mu.Lock()
		delete(m.ups.restoring, rec.ID)
		m.ups.mu.Unlock()
	}()
	var sum cas.RestoreStats
	next := int64(0)
	for _, s := range steps {
		log.Info("restoring from the object store", "what", s.what, "what_manifest", s.man.ID, "bytes", dataBytes(s.man))
		base := p.done.Load()
		st, err := s.run(ctx, func(pr cas.Progress) {
			done := base + pr.Done
			p.done.Store(done)
			if total := p.total.Load(); done >= next {
				log.Info("restoring from the object store", "done_bytes", done, "total_bytes", total)
				next = done + total/4
			}
		})
		sum.ChunksFetched += st.ChunksFetched
		sum.BytesFetched += st.BytesFetched
		sum.ChunksFromSeeds += st.ChunksFromSeeds
		sum.ChunksZero += st.ChunksZero
		if err != nil {
			return sum, fmt.Errorf("%s: %w", s.what, err)
		}
		p.done.Store(base + dataBytes(s.man))
	}
	if err := m.rebaseHome(ctx, mach.Disk, mach.FromHome, m.home()); err != nil {
		return sum, err
	}
	if err := m.checkBacking(ctx, mach.Disk); err != nil {
		return sum, err
	}
	return sum, nil
}

// restoreSteps lists what of rec's chain is missing, from the image up.
func (m *Manager) restoreSteps(ctx context.Context, rec store.Session, mach machine) ([]restoreStep, error) {
	own, err := m.cfg.Objects.LoadManifest(ctx, rec.StoredManifest)
	if err != nil {
		return nil, err
	}
	var (
		steps []restoreStep
		onto  = own // the manifest resting on the image
		ver   *cas.Manifest
		vmach machine
		vdir  string
	)
	if rec.Template != "" {
		v, vm, err := m.version(ctx, rec.Template, rec.TemplateVersion)
		if err != nil {
			return nil, err
		}
		vmach = vm
		id := v.StoredManifest
		if len(own.Bases) > 0 {
			id = own.Bases[0] // what the snapshot was uploaded on
		}
		if _, vdir, err = versionFiles(rec.Template, rec.TemplateVersion, vmach); err != nil {
			return nil, err
		}
		if id != "" {
			man, err := m.cfg.Objects.LoadManifest(ctx, id)
			if err != nil {
				return nil, fmt.Errorf("template %s version %d: %w", rec.Template, rec.TemplateVersion, err)
			}
			ver, onto = &man, man
		} else if filesGone(vmach) {
			return nil, fmt.Errorf("template %s version %d: its files are gone from this host and it is not in the object store",
				rec.Template, rec.TemplateVersion)
		}
	}
	if is := m.imageStore(); is != nil && len(onto.Bases) > 0 {
		img, err := m.cfg.Objects.LoadManifest(ctx, onto.Bases[0])
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		if is.Missing(img) {
			steps = append(steps, restoreStep{what: "image " + rec.Image, man: img, run: func(ctx context.Context, p func(cas.Progress)) (cas.RestoreStats, error) {
				return is.Fetch(ctx, img, p)
			}})
		}
	}
	if ver != nil && filesGone(vmach) {
		man := *ver
		steps = append(steps, restoreStep{what: fmt.Sprintf("template %s version %d", rec.Template, rec.TemplateVersion), man: man,
			run: func(ctx context.Context, p func(cas.Progress)) (cas.RestoreStats, error) {
				return m.restoreVersion(ctx, rec.Template, vmach, man, vdir, p)
			}})
	}
	if filesGone(mach) {
		if _, err := m.snapshotSources(rec.ID, mach); err != nil {
			return nil, err
		}
		// Its own files still here (some of them may be) and its
		// version's are read for the chunks they hold.
		opts := cas.RestoreOptions{Seeds: []cas.Seed{{Manifest: own, Dir: m.dir(rec.ID)}}}
		if ver != nil {
			opts.Seeds = append(opts.Seeds, cas.Seed{Manifest: *ver, Dir: vdir})
		}
		steps = append(steps, restoreStep{what: "snapshot", man: own, run: func(ctx context.Context, p func(cas.Progress)) (cas.RestoreStats, error) {
			if err := os.MkdirAll(m.dir(rec.ID), 0o700); err != nil {
				return cas.RestoreStats{}, err
			}
			opts.Progress = p
			return m.cfg.Objects.Restore(ctx, own, m.dir(rec.ID), opts)
		}})
	}
	return steps, nil
}

// fetchVersion puts back template name's version's files, and its
// image's, where they are missing from this host and the version is
// stored: a create from the template on a host that lost them (or never
// had them) clones as usual. The caller holds no template lock.
func (m *Manager) fetchVersion(ctx context.Context, name string, version int) error {
	if m.cfg.Objects == nil {
		return nil
	}
	v, vmach, err := m.version(ctx, name, version)
	if err != nil || v.StoredManifest == "" || !m.chainGone(ctx, vmach, nil) {
		return nil // the clone says what is wrong, if anything
	}
	log := m.cfg.Log.With("template", name, "version", version, "manifest", v.StoredManifest)
	log.Info("template version's files gone from this host: restoring them from the object store")
	man, err := m.cfg.Objects.LoadManifest(ctx, v.StoredManifest)
	if err != nil {
		return err
	}
	if is := m.imageStore(); is != nil && len(man.Bases) > 0 {
		img, err := m.cfg.Objects.LoadManifest(ctx, man.Bases[0])
		if err != nil {
			return fmt.Errorf("image: %w", err)
		}
		if is.Missing(img) {
			if _, err := is.Fetch(ctx, img, nil); err != nil {
				return err
			}
		}
	}
	_, dir, err := versionFiles(name, version, vmach)
	if err != nil {
		return err
	}
	st, err := m.restoreVersion(ctx, name, vmach, man, dir, nil)
	if err != nil {
		return err
	}
	log.Info("template version restored from the object store", "chunks_fetched", st.ChunksFetched, "bytes_fetched", st.BytesFetched)
	return m.checkBacking(ctx, vmach.Disk)
}

// restoreVersion puts a template version's files back into dir, under
// the template's lock (clones read them), unless another wake did.
func (m *Manager) restoreVersion(ctx context.Context, name string, vmach machine, man cas.Manifest, dir string, progress func(cas.Progress)) (cas.RestoreStats, error) {
	tl := m.templateLock(name)
	tl.Lock()
	defer tl.Unlock()
	if !filesGone(vmach) {
		return cas.RestoreStats{}, nil
	}
	if err := m.makeTemplateDir(name); err != nil {
		return cas.RestoreStats{}, err
	}
	// As the build left it: QEMU's user reaches the disk through it.
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return cas.RestoreStats{}, err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return cas.RestoreStats{}, err
	}
	// Its files still here (some of them may be) are read for the chunks
	// they hold.
	st, err := m.cfg.Objects.Restore(ctx, man, dir, cas.RestoreOptions{Progress: progress, Seeds: []cas.Seed{{Manifest: man, Dir: dir}}})
	if err != nil {
		return st, err
	}
	// Built on a node of another home, its disk names the image there.
	return st, m.rebaseHome(ctx, vmach.Disk, vmach.FromHome, filepath.Dir(m.cfg.TemplateDir))
}
