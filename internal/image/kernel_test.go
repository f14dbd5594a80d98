package image

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/testenv"
)

// writeModule writes a minimal ELF relocatable object with a .modinfo
// section holding the given key=value strings, which is all that
// moduleDepends reads of a kernel module.
func writeModule(t *testing.T, path string, modinfo ...string) {
	t.Helper()
	var info []byte
	for _, kv := range modinfo {
		info = append(append(info, kv...), 0)
	}
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize = 64
	infoOff := ehsize
	shstrOff := infoOff + len(info)
	shOff := (shstrOff + len(shstr) + 7) &^ 7
	var buf bytes.Buffer
	binary.Write(&buf, binary.LittleEndian, elf.Header64{
		Ident:     [elf.EI_NIDENT]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)},
		Type:      uint16(elf.ET_REL),
		Machine:   uint16(elf.EM_X86_64),
		Version:   uint32(elf.EV_CURRENT),
		Shoff:     uint64(shOff),
		Ehsize:    ehsize,
		Shentsize: 64,
		Shnum:     3,
		Shstrndx:  2,
	})
	buf.Write(info)
	buf.Write(shstr)
	buf.Write(make([]byte, shOff-buf.Len()))
	binary.Write(&buf, binary.LittleEndian, []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: uint64(infoOff), Size: uint64(len(info)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: uint64(shstrOff), Size: uint64(len(shstr)), Addralign: 1},
	})
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestModuleDepends(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		modinfo []string
		want    []string
	}{
		{[]string{"license=GPL", "depends=jbd2,mbcache,crc16", "name=ext4"}, []string{"jbd2", "mbcache", "crc16"}},
		{[]string{"depends=", "name=virtio"}, nil},
		{[]string{"name=old"}, nil}, // no depends= at all
		{[]string{"depends=virtio-ring,net_failover"}, []string{"virtio_ring", "net_failover"}}, // dashes are underscores
	}
	for i, tc := range cases {
		p := filepath.Join(dir, "m"+string(rune('0'+i))+".ko")
		writeModule(t, p, tc.modinfo...)
		got, err := moduleDepends(p)
		if err != nil {
			t.Fatalf("%v: %v", tc.modinfo, err)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%v: depends %q, want %q", tc.modinfo, got, tc.want)
		}
	}
	os.WriteFile(filepath.Join(dir, "not-elf.ko"), []byte("garbage"), 0o644)
	if _, err := moduleDepends(filepath.Join(dir, "not-elf.ko")); err == nil || !strings.Contains(err.Error(), "not-elf.ko") {
		t.Fatalf("a module that is no ELF: %v, want an error naming it", err)
	}
}

// fakeModTree writes a lib/modules/VERSION tree: modules under kernel/,
// and modules.builtin.
func fakeModTree(t *testing.T, mods map[string]string, builtin ...string) string {
	t.Helper()
	dir := t.TempDir()
	for rel, deps := range mods {
		writeModule(t, filepath.Join(dir, "kernel", rel), "license=GPL", "depends="+deps)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(strings.Join(builtin, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestResolveModulesOrdersDependenciesFirst(t *testing.T) {
	dir := fakeModTree(t, map[string]string{
		"fs/ext4/ext4.ko":                      "jbd2,mbcache,crc16,libcrc32c",
		"fs/jbd2/jbd2.ko":                      "",
		"fs/mbcache.ko":                        "",
		"lib/crc16.ko":                         "",
		"drivers/block/virtio_blk.ko":          "virtio,virtio_ring",
		"drivers/virtio/virtio.ko":             "",
		"drivers/virtio/virtio_ring.ko":        "",
		"drivers/char/hw_random/virtio-rng.ko": "virtio,virtio-ring",
		"drivers/unused/unused.ko":             "virtio",
	}, "kernel/lib/libcrc32c.ko")
	got, err := resolveModules(dir, []string{"virtio_blk", "virtio_rng", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range got {
		names = append(names, filepath.Base(p))
	}
	// Depth first, dependencies sorted: the order is deterministic. The
	// built-in libcrc32c and the unneeded module are left out.
	want := []string{"virtio.ko", "virtio_ring.ko", "virtio_blk.ko", "virtio-rng.ko", "crc16.ko", "jbd2.ko", "mbcache.ko", "ext4.ko"}
	if !slices.Equal(names, want) {
		t.Fatalf("order %q\nwant  %q", names, want)
	}
	for _, p := range got {
		if !strings.HasPrefix(p, filepath.Join(dir, "kernel")+"/") {
			t.Errorf("%s: want a path inside the module tree", p)
		}
	}
}

func TestResolveModulesErrors(t *testing.T) {
	dir := fakeModTree(t, map[string]string{
		"a.ko": "b",
		"b.ko": "a",
		"c.ko": "nowhere",
	})
	if _, err := resolveModules(dir, []string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("a cycle: %v, want a cycle error", err)
	}
	if _, err := resolveModules(dir, []string{"c"}); err == nil || !strings.Contains(err.Error(), "nowhere") {
		t.Errorf("a missing dependency: %v, want an error naming it", err)
	}
	if _, err := resolveModules(dir, []string{"absent"}); err == nil {
		t.Error("a missing root module: no error")
	}
	if _, err := resolveModules(t.TempDir(), []string{"ext4"}); err == nil {
		t.Error("a tree without kernel/: no error")
	}
}

// needXz skips when xz is absent (fails under CI) and returns its path.
func needXz(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("xz")
	if err != nil {
		testenv.Skipf(t, "xz not found (install xz-utils; the kernel fetch needs it too)")
	}
	return p
}

func TestExtractVmlinux(t *testing.T) {
	needXz(t)
	dir := t.TempDir()
	// A bzImage stand-in: setup code, an xz stream holding an ELF, and
	// trailing bytes after the stream.
	kernel := filepath.Join(dir, "kernel.elf")
	writeModule(t, kernel, "name=vmlinux")
	want, _ := os.ReadFile(kernel)
	xz, err := exec.Command("xz", "-c", "--check=crc32", kernel).Output()
	if err != nil {
		t.Fatal(err)
	}
	setup := make([]byte, 4000)
	rand.NewChaCha8([32]byte{7}).Read(setup)
	setup = bytes.ReplaceAll(setup, []byte{0xfd}, []byte{0}) // no false magic
	bz := filepath.Join(dir, "vmlinuz")
	os.WriteFile(bz, slices.Concat(setup, xz, []byte("trailer: size and CRC fields")), 0o644)

	out := filepath.Join(dir, "vmlinux")
	if err := extractVmlinux(context.Background(), bz, out); err != nil {
		t.Fatalf("extractVmlinux: %v", err)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, want) {
		t.Fatalf("extracted %d bytes, want the %d-byte ELF that was packed", len(got), len(want))
	}
}

func TestExtractVmlinuxRejectsNonKernels(t *testing.T) {
	dir := t.TempDir()
	fixed := func(b []byte) func(*testing.T) []byte { return func(*testing.T) []byte { return b } }
	cases := map[string]func(*testing.T) []byte{
		"no xz stream":      fixed([]byte("MZ this is not a bzImage at all")),
		"xz stream, no ELF": fixed(append([]byte("setup\xfd7zXZ\x00"), bytes.Repeat([]byte("garbage"), 100)...)),
		"valid xz of not-ELF": func(t *testing.T) []byte {
			xz := needXz(t)
			plain := filepath.Join(dir, "plain.txt")
			if err := os.WriteFile(plain, []byte("just text, no kernel"), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(xz, "-c", plain).Output()
			if err != nil {
				t.Fatalf("xz: %v", err)
			}
			return append([]byte("setup"), out...)
		},
		"empty file": fixed([]byte{}),
	}
	for name, makeData := range cases {
		t.Run(name, func(t *testing.T) {
			data := makeData(t)
			in := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
			os.WriteFile(in, data, 0o644)
			out := in + ".vmlinux"
			err := extractVmlinux(context.Background(), in, out)
			if err == nil {
				t.Fatal("extractVmlinux succeeded on a file that holds no kernel")
			}
			if !strings.HasPrefix(err.Error(), "image: kernel: ") {
				t.Errorf("error %q: want it to say it is about the kernel", err)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s was created from a bad kernel", out)
			}
		})
	}
	if err := extractVmlinux(context.Background(), filepath.Join(dir, "missing"), filepath.Join(dir, "out")); err == nil {
		t.Error("a missing bzImage: no error")
	}
}
