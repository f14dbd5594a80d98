// Package image builds what a microVM boots from: the guest kernel
// (Debian's, unpacked, never installed on the host), the initramfs that
// carries cove-agent and the kernel modules, and read-only root file system
// images (tiny, debian). Everything is cached under the data dir, keyed by
// the hash of its inputs: a build with the same inputs reuses the result.
package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agent"
	"github.com/cove-dev/cove/internal/command"
	"github.com/cove-dev/cove/internal/store"
)

// Builder builds and caches kernels, initramfs images and root file systems
// under Home. Its zero value is not usable: set Home and AgentPath.
type Builder struct {
	// Home is the data dir (COVE_HOME).
	Home string
	// AgentPath is the static cove-agent binary put into every initramfs.
	AgentPath string
	// Mirror is the Debian mirror for debootstrap; empty means the first
	// one in the host's apt sources, else deb.debian.org.
	Mirror string
	// Records, if set, is told of every image built or found cached, so
	// the state store lists them.
	Records Records
	// Objects, if set, is where images' files are kept off the host (see
	// objects.go: Store, Fetch).
	Objects Objects
	// Log, if set, is told of images stored.
	Log *slog.Logger

	kmu    sync.Mutex
	kernel *Kernel // guarded by kmu

	bmu    sync.Mutex
	builds map[string]*sync.Mutex // guarded by bmu: one build per image name
	stored map[string]string      // guarded by bmu: manifest IDs by image key
}

// Records keeps image records (the state store does).
type Records interface {
	PutImage(ctx context.Context, im store.Image) error
	GetImage(ctx context.Context, name string) (store.Image, error)
}

// record records im, keeping the manifest of its files in the object
// store when the record names the same build.
func (b *Builder) record(ctx context.Context, im Image) {
	if b.Records == nil {
		return
	}
	rec := store.Image{Name: im.Name, Key: im.Key, Dir: filepath.Dir(im.RootFS),
		SizeBytes: im.SizeBytes, CreatedAt: im.CreatedAt, BuildMillis: im.BuildMs}
	if old, err := b.Records.GetImage(ctx, im.Name); err == nil && old.Key == im.Key {
		rec.StoredManifest = old.StoredManifest
	}
	_ = b.Records.PutImage(ctx, rec)
}

// buildLock is the lock of image name's builds (and uploads, and
// restores).
func (b *Builder) buildLock(name string) *sync.Mutex {
	b.bmu.Lock()
	defer b.bmu.Unlock()
	if b.builds == nil {
		b.builds = map[string]*sync.Mutex{}
	}
	mu := b.builds[name]
	if mu == nil {
		mu = &sync.Mutex{}
		b.builds[name] = mu
	}
	return mu
}

// Recipe describes how an image is built.
type Recipe struct {
	Name string
	// Inputs are the strings whose hash keys the image.
	Inputs func() ([]string, error)
	// SizeMiB is the size of the ext4 file system (sparse).
	SizeMiB int
	// Populate fills dir with the root file system.
	Populate func(ctx context.Context, dir string, progress func(string)) error
}

// Recipes lists the images cove knows how to build.
func (b *Builder) Recipes() []Recipe {
	return []Recipe{tinyRecipe(), debianRecipe(b)}
}

func (b *Builder) recipe(name string) (Recipe, error) {
	var names []string
	for _, r := range b.Recipes() {
		if r.Name == name {
			return r, nil
		}
		names = append(names, r.Name)
	}
	return Recipe{}, api.Errorf(api.CodeInvalid, "unknown image %q (known: %s)", name, strings.Join(names, ", "))
}

// Known reports whether name is an image b has a recipe for: nil, or a
// not-found error listing the images it knows.
func (b *Builder) Known(name string) error {
	_, err := b.recipe(name)
	var ae *api.Error
	if errors.As(err, &ae) {
		return api.Errorf(api.CodeNotFound, "%s", ae.Message)
	}
	return err
}

// Manifest is written next to each built image.
type Manifest struct {
	Name      string    `json:"name"`
	Key       string    `json:"key"`
	Inputs    []string  `json:"inputs"`
	SizeBytes int64     `json:"size_bytes"` // bytes on disk
	CreatedAt time.Time `json:"created_at"`
	BuildMs   int64     `json:"build_ms"`
}

// Image is a built image ready to boot.
type Image struct {
	Manifest
	// RootFS is the read-only raw ext4 image sessions overlay.
	RootFS string
}

func (b *Builder) imagesDir() string { return filepath.Join(b.Home, "images") }

func key(inputs []string) string {
	h := sha256.New()
	for _, in := range inputs {
		fmt.Fprintf(h, "%d:%s\n", len(in), in)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Get returns the built image name for its current inputs, or a
// not-found error saying how to build it.
func (b *Builder) Get(ctx context.Context, name string) (Image, error) {
	r, err := b.recipe(name)
	if err != nil {
		return Image{}, err
	}
	inputs, err := r.Inputs()
	if err != nil {
		return Image{}, err
	}
	im, err := b.load(name, key(inputs))
	if err != nil {
		return Image{}, api.Errorf(api.CodeNotFound, "image %q is not built: run 'cove image build %s'", name, name)
	}
	return im, nil
}

func (b *Builder) load(name, k string) (Image, error) {
	dir := filepath.Join(b.imagesDir(), name, k)
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return Image{}, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Image{}, fmt.Errorf("image: %s manifest: %w", name, err)
	}
	return Image{Manifest: m, RootFS: filepath.Join(dir, "rootfs.raw")}, nil
}

// List returns the built images whose inputs are current.
func (b *Builder) List(ctx context.Context) ([]api.Image, error) {
	var out []api.Image
	for _, r := range b.Recipes() {
		im, err := b.Get(ctx, r.Name)
		if err != nil {
			continue
		}
		a := im.API()
		if rec, err := b.getRecord(ctx, im.Name); err == nil && rec.Key == im.Key {
			a.Stored = rec.StoredManifest != ""
		}
		out = append(out, a)
	}
	return out, nil
}

// API converts to the public type.
func (im Image) API() api.Image {
	return api.Image{Name: im.Name, Key: im.Key, SizeBytes: im.SizeBytes, CreatedAt: im.CreatedAt, BuildMs: im.BuildMs}
}

// Build builds the image name unless one with the same inputs exists.
// Concurrent builds of one name wait for each other.
func (b *Builder) Build(ctx context.Context, name string, progress func(string)) (api.Image, error) {
	im, err := b.BuildImage(ctx, name, progress)
	if err != nil {
		return api.Image{}, err
	}
	return im.API(), nil
}

// BuildImage is Build returning the local image.
func (b *Builder) BuildImage(ctx context.Context, name string, progress func(string)) (Image, error) {
	if progress == nil {
		progress = func(string) {}
	}
	r, err := b.recipe(name)
	if err != nil {
		return Image{}, err
	}
	mu := b.buildLock(name)
	mu.Lock()
	defer mu.Unlock()
	// Other processes (a second server, parallel test binaries) share
	// the cache: hold a file lock over the build.
	unlock, err := lockFile(filepath.Join(b.imagesDir(), name+".lock"))
	if err != nil {
		return Image{}, err
	}
	defer unlock()

	inputs, err := r.Inputs()
	if err != nil {
		return Image{}, err
	}
	k := key(inputs)
	if im, err := b.load(name, k); err == nil {
		progress(fmt.Sprintf("%s: cached (key %s)", name, k))
		b.record(ctx, im)
		return im, nil
	}
	// Stored by an earlier build of the same inputs: the very bytes the
	// overlays resting on it were made on, which a new build (file
	// system UUIDs, times) would not give.
	if im, ok := b.fetchStored(ctx, name, k, progress); ok {
		return im, nil
	}
	start := time.Now()
	progress(fmt.Sprintf("%s: building (key %s)", name, k))
	parent := filepath.Join(b.imagesDir(), name)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return Image{}, fmt.Errorf("image: %s: %w", name, err)
	}
	tmp, err := os.MkdirTemp(parent, ".build-")
	if err != nil {
		return Image{}, fmt.Errorf("image: %s: %w", name, err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Image{}, err
	}
	root := filepath.Join(tmp, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return Image{}, err
	}
	if err := r.Populate(ctx, root, progress); err != nil {
		return Image{}, err
	}
	progress(fmt.Sprintf("%s: making ext4 file system (%d MiB, sparse)", name, r.SizeMiB))
	raw := filepath.Join(tmp, "rootfs.raw")
	if _, err := run(ctx, "", "mkfs.ext4", "-q", "-F", "-L", "cove-root", "-d", root,
		"-E", "lazy_itable_init=1,lazy_journal_init=1", raw, fmt.Sprintf("%dM", r.SizeMiB)); err != nil {
		return Image{}, fmt.Errorf("image: %s: mkfs.ext4: %w", name, err)
	}
	if err := os.Chmod(raw, 0o444); err != nil {
		return Image{}, err
	}
	if err := os.RemoveAll(root); err != nil {
		return Image{}, err
	}
	m := Manifest{Name: name, Key: k, Inputs: inputs, SizeBytes: diskUsage(raw),
		CreatedAt: time.Now().UTC(), BuildMs: time.Since(start).Milliseconds()}
	data, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "manifest.json"), data, 0o644); err != nil {
		return Image{}, err
	}
	final := filepath.Join(parent, k)
	_ = os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		return Image{}, fmt.Errorf("image: %s: %w", name, err)
	}
	syncDir(parent)
	progress(fmt.Sprintf("%s: built in %s", name, time.Since(start).Round(time.Millisecond)))
	im, err := b.load(name, k)
	if err == nil {
		b.record(ctx, im)
	}
	return im, err
}

// Initramfs returns the initramfs for kernel k and the current agent
// binary, building it if needed: /init is cove-agent, the modules sit in
// agent.ModulesDir with their load order.
func (b *Builder) Initramfs(k Kernel) (string, error) {
	agentBin, err := os.ReadFile(b.AgentPath)
	if err != nil {
		return "", fmt.Errorf("image: initramfs: agent binary: %w", err)
	}
	sum := sha256.Sum256(agentBin)
	inputs := []string{"initramfs/v1", k.Version, hex.EncodeToString(sum[:])}
	for _, m := range k.Modules {
		inputs = append(inputs, filepath.Base(m))
	}
	dir := filepath.Join(b.Home, "initramfs")
	path := filepath.Join(dir, key(inputs)+".cpio")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	add := func(name string, mode cpio.FileMode, data []byte) error {
		h := &cpio.Header{Name: name, Mode: mode, Size: int64(len(data)), Links: 1}
		if mode&cpio.TypeDir != 0 {
			h.Links, h.Size = 2, 0
		}
		if err := w.WriteHeader(h); err != nil {
			return err
		}
		_, err := w.Write(data)
		return err
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "lib", strings.TrimPrefix(agent.ModulesDir, "/")} {
		if err := add(d, cpio.TypeDir|0o755, nil); err != nil {
			return "", err
		}
	}
	if err := add("init", cpio.TypeReg|0o755, agentBin); err != nil {
		return "", err
	}
	var order []string
	for _, m := range k.Modules {
		data, err := os.ReadFile(m)
		if err != nil {
			return "", err
		}
		name := filepath.Base(m)
		order = append(order, name)
		if err := add(strings.TrimPrefix(agent.ModulesDir, "/")+"/"+name, cpio.TypeReg|0o644, data); err != nil {
			return "", err
		}
	}
	if err := add(strings.TrimPrefix(agent.ModulesOrder, "/"), cpio.TypeReg|0o644, []byte(strings.Join(order, "\n")+"\n")); err != nil {
		return "", err
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	if err := writeFileAtomic(path, buf.Bytes(), 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// run runs a command and returns its stdout; the error carries stderr.
func run(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := command.Output(ctx, cmd)
	return string(out), err
}

// runProgress runs a command, passing each line of its output to progress.
func runProgress(ctx context.Context, progress func(string), prefix, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 0, 4096)
		tmp := make([]byte, 4096)
		for {
			n, err := pr.Read(tmp)
			buf = append(buf, tmp[:n]...)
			for {
				i := bytes.IndexByte(buf, '\n')
				if i < 0 {
					break
				}
				line := strings.TrimSpace(string(buf[:i]))
				buf = buf[i+1:]
				if line != "" {
					progress(prefix + line)
					tail = append(tail, line)
					if len(tail) > 20 {
						tail = tail[1:]
					}
				}
			}
			if err != nil {
				return
			}
		}
	}()
	err := cmd.Run()
	pw.Close()
	<-done
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.Join(tail, "\n"))
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// diskUsage is the bytes a file really takes on disk (it may be sparse).
func diskUsage(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// lockFile takes an exclusive flock on path (created if missing) and
// returns its release.
func lockFile(path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("image: lock: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("image: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("image: lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
