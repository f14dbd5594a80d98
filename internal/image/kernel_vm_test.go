package image_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/vmtest"
)

// The kernel the VM tests boot: its order file must load every module
// after the modules it depends on, or the guest's init fails. The test
// gets that kernel as the VM tests do (vmtest.Get fetches it into the test
// cache the first time, whichever package runs first), so it never depends
// on another package having run before it.
func TestRealKernelModuleOrder(t *testing.T) {
	k := vmtest.Get(t).Kernel
	if len(k.Modules) == 0 {
		t.Fatalf("kernel %s lists no modules", k.Version)
	}
	modDir := filepath.Dir(k.Modules[0])
	order, err := os.ReadFile(filepath.Join(modDir, "order"))
	if err != nil {
		t.Fatal(err)
	}
	names := strings.Fields(string(order))
	var listed []string
	for _, m := range k.Modules {
		listed = append(listed, filepath.Base(m))
	}
	if !slices.Equal(listed, names) {
		t.Fatalf("Kernel.Modules %q\norder file      %q", listed, names)
	}
	norm := func(s string) string { return strings.ReplaceAll(strings.TrimSuffix(s, ".ko"), "-", "_") }
	pos := map[string]int{}
	for i, n := range names {
		pos[norm(n)] = i
	}
	for _, r := range image.RootModules {
		if _, ok := pos[r]; !ok {
			t.Errorf("root module %s is not in the order file", r)
		}
	}
	for i, n := range names {
		deps, err := image.ModuleDepends(filepath.Join(modDir, n))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range deps {
			j, ok := pos[d]
			if !ok {
				t.Errorf("%s depends on %s, which the initramfs does not carry", n, d)
			} else if j >= i {
				t.Errorf("%s (position %d) depends on %s, loaded later (position %d)", n, i, d, j)
			}
		}
	}

	// resolveModules over the same files gives the same order.
	tree := t.TempDir()
	if err := os.MkdirAll(filepath.Join(tree, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := os.Symlink(filepath.Join(modDir, n), filepath.Join(tree, "kernel", n)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := image.ResolveModules(tree, image.RootModules)
	if err != nil {
		t.Fatal(err)
	}
	var gotNames []string
	for _, p := range got {
		gotNames = append(gotNames, filepath.Base(p))
	}
	if !slices.Equal(gotNames, names) {
		t.Fatalf("resolveModules: %q\norder file:     %q", gotNames, names)
	}
}
