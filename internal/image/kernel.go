package image

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// KernelPackage is the Debian package whose dependency names the kernel.
const KernelPackage = "linux-image-amd64"

// rootModules are the modules the guest needs; their dependencies are
// found from each module's .modinfo (the package ships no modules.dep).
// crc32c_generic is only a soft dependency of ext4, so it is named here.
var rootModules = []string{
	"crc32c_generic", "virtio_mmio", "virtio_blk", "virtio_console",
	"virtio_net", "virtio_rng", "ext4",
}

// Kernel is an unpacked guest kernel.
type Kernel struct {
	Version string // e.g. 6.1.0-56-amd64
	// Vmlinux is the uncompressed ELF kernel, booted directly through its
	// PVH entry point (no decompression in the guest).
	Vmlinux string
	// Modules lists the module files in load order.
	Modules []string
}

// kernelDir is where kernels are unpacked.
func (b *Builder) kernelDir() string { return filepath.Join(b.Home, "kernels") }

// Kernel returns the guest kernel, fetching Debian's package with
// apt-get download and unpacking it under the data dir the first time.
// It is never installed on the host.
func (b *Builder) Kernel(ctx context.Context, progress func(string)) (Kernel, error) {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	if b.kernel != nil {
		return *b.kernel, nil
	}
	unlock, err := lockFile(filepath.Join(b.kernelDir(), ".lock"))
	if err != nil {
		return Kernel{}, err
	}
	defer unlock()
	// A kernel already unpacked is used as it is: fetching again needs the
	// network and changes nothing until the package moves.
	if k, err := b.loadKernel(); err == nil {
		b.kernel = &k
		return k, nil
	}
	k, err := b.fetchKernel(ctx, progress)
	if err != nil {
		return Kernel{}, err
	}
	b.kernel = &k
	return k, nil
}

func (b *Builder) loadKernel() (Kernel, error) {
	cur, err := os.ReadFile(filepath.Join(b.kernelDir(), "current"))
	if err != nil {
		return Kernel{}, err
	}
	dir := filepath.Join(b.kernelDir(), strings.TrimSpace(string(cur)))
	order, err := os.ReadFile(filepath.Join(dir, "modules", "order"))
	if err != nil {
		return Kernel{}, err
	}
	k := Kernel{Version: strings.TrimSpace(string(cur)), Vmlinux: filepath.Join(dir, "vmlinux")}
	if _, err := os.Stat(k.Vmlinux); err != nil {
		return Kernel{}, err
	}
	for _, m := range strings.Fields(string(order)) {
		k.Modules = append(k.Modules, filepath.Join(dir, "modules", m))
	}
	return k, nil
}

func (b *Builder) fetchKernel(ctx context.Context, progress func(string)) (Kernel, error) {
	if err := os.MkdirAll(b.kernelDir(), 0o755); err != nil {
		return Kernel{}, fmt.Errorf("image: kernel: %w", err)
	}
	tmp, err := os.MkdirTemp(b.kernelDir(), ".fetch-")
	if err != nil {
		return Kernel{}, fmt.Errorf("image: kernel: %w", err)
	}
	defer os.RemoveAll(tmp)

	progress("kernel: apt-get download " + KernelPackage)
	meta, err := aptDownload(ctx, tmp, KernelPackage)
	if err != nil {
		return Kernel{}, err
	}
	dep, err := run(ctx, "", "dpkg-deb", "-f", meta, "Depends")
	if err != nil {
		return Kernel{}, fmt.Errorf("image: kernel: read depends: %w", err)
	}
	pkg := ""
	for _, d := range strings.Split(dep, ",") {
		d = strings.TrimSpace(strings.Fields(d + " ")[0])
		if strings.HasPrefix(d, "linux-image-") {
			pkg = d
			break
		}
	}
	if pkg == "" {
		return Kernel{}, fmt.Errorf("image: kernel: %s depends on no linux-image package (%q)", KernelPackage, dep)
	}
	progress("kernel: apt-get download " + pkg)
	deb, err := aptDownload(ctx, tmp, pkg)
	if err != nil {
		return Kernel{}, err
	}
	progress("kernel: unpacking " + filepath.Base(deb))
	root := filepath.Join(tmp, "root")
	if _, err := run(ctx, "", "dpkg-deb", "-x", deb, root); err != nil {
		return Kernel{}, fmt.Errorf("image: kernel: unpack: %w", err)
	}
	version := strings.TrimPrefix(pkg, "linux-image-")
	out := filepath.Join(tmp, version)
	if err := os.MkdirAll(filepath.Join(out, "modules"), 0o755); err != nil {
		return Kernel{}, err
	}
	bz := filepath.Join(root, "boot", "vmlinuz-"+version)
	if err := extractVmlinux(ctx, bz, filepath.Join(out, "vmlinux")); err != nil {
		return Kernel{}, err
	}
	order, err := resolveModules(filepath.Join(root, "lib", "modules", version), rootModules)
	if err != nil {
		return Kernel{}, err
	}
	var names []string
	for _, m := range order {
		name := filepath.Base(m)
		if err := copyFile(m, filepath.Join(out, "modules", name), 0o644); err != nil {
			return Kernel{}, err
		}
		names = append(names, name)
	}
	if err := os.WriteFile(filepath.Join(out, "modules", "order"), []byte(strings.Join(names, "\n")+"\n"), 0o644); err != nil {
		return Kernel{}, err
	}
	final := filepath.Join(b.kernelDir(), version)
	_ = os.RemoveAll(final)
	if err := os.Rename(out, final); err != nil {
		return Kernel{}, fmt.Errorf("image: kernel: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(b.kernelDir(), "current"), []byte(version+"\n"), 0o644); err != nil {
		return Kernel{}, err
	}
	progress("kernel: " + version + " ready")
	return b.loadKernel()
}

func aptDownload(ctx context.Context, dir, pkg string) (string, error) {
	if _, err := run(ctx, dir, "apt-get", "download", "-q", pkg); err != nil {
		return "", fmt.Errorf("image: apt-get download %s (is 'apt-get update' done?): %w", pkg, err)
	}
	m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if len(m) != 1 {
		return "", fmt.Errorf("image: apt-get download %s: no .deb found", pkg)
	}
	return m[0], nil
}

// extractVmlinux finds the xz stream in a bzImage and decompresses it to
// the ELF kernel.
func extractVmlinux(ctx context.Context, bzImage, out string) error {
	data, err := os.ReadFile(bzImage)
	if err != nil {
		return fmt.Errorf("image: kernel: %w", err)
	}
	i := bytes.Index(data, []byte("\xfd7zXZ\x00"))
	if i < 0 {
		return fmt.Errorf("image: kernel: %s holds no xz stream", bzImage)
	}
	f, err := os.Create(out + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, "xz", "-dc", "--single-stream")
	cmd.Stdin = bytes.NewReader(data[i:])
	cmd.Stdout = f
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// xz complains about the bzImage's trailing bytes; the stream is whole.
	_ = cmd.Run()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("image: kernel: decompressed kernel is no ELF (%s): %w", strings.TrimSpace(stderr.String()), err)
	}
	ef.Close()
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(out+".tmp", out)
}

// resolveModules returns the .ko paths of roots and their dependencies, in
// an order where every module comes after what it depends on.
func resolveModules(modDir string, roots []string) ([]string, error) {
	paths := map[string]string{}
	err := filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasSuffix(p, ".ko") {
			name := strings.ReplaceAll(strings.TrimSuffix(d.Name(), ".ko"), "-", "_")
			paths[name] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("image: modules: %w", err)
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string) error
	visit = func(name string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("image: modules: dependency cycle at %s", name)
		case 2:
			return nil
		}
		p, ok := paths[name]
		if !ok {
			if builtin(modDir, name) {
				state[name] = 2
				return nil
			}
			return fmt.Errorf("image: modules: %s not found in %s", name, modDir)
		}
		state[name] = 1
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, p)
		return nil
	}
	for _, r := range roots {
		if err := visit(r); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func builtin(modDir, name string) bool {
	b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		base := strings.ReplaceAll(strings.TrimSuffix(filepath.Base(l), ".ko"), "-", "_")
		if base == name {
			return true
		}
	}
	return false
}

// moduleDepends reads depends= from a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("image: module %s: %w", filepath.Base(path), err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, nil
	}
	data, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("image: module %s: %w", filepath.Base(path), err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				deps = append(deps, strings.ReplaceAll(d, "-", "_"))
			}
			return deps, nil
		}
	}
	return nil, nil
}
