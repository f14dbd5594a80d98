package qcow2_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmm/qcow2"
)

// allocated is the bytes the file system holds for path.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	out, err := exec.Command("du", "-B1", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, c := range bytes.Fields(out)[0] {
		n = n*10 + int64(c-'0')
	}
	return n
}

// writeAt writes b into the file at path at off.
func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestDiffHoldsOnlyTheChangesAndRawReadsItBack keeps RAM files as they
// are kept for checkpoints: a base with data, a second file that differs
// in a page, a third in another. Each Diff holds about the changed
// cluster, not the data the base holds; Raw gives back each file exactly,
// sparse; a copying Rebase of the last onto the base (the middle one
// removed) keeps what it reads.
func TestDiffHoldsOnlyTheChangesAndRawReadsItBack(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		testenv.Skipf(t, "qemu-img not installed")
	}
	ctx := context.Background()
	d := qcow2.Disks{}
	dir := t.TempDir()
	at := func(name string) string { return filepath.Join(dir, name) }
	const size = 64 << 20
	data := bytes.Repeat([]byte("guest memory page"), (8<<20)/17)
	mk := func(name string) {
		t.Helper()
		f, err := os.Create(at(name))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		writeAt(t, at(name), 4<<20, data)
	}
	mk("base")
	mk("one")
	writeAt(t, at("one"), 5<<20, []byte("changed after the base"))
	mk("two")
	writeAt(t, at("two"), 5<<20, []byte("changed after the base"))
	writeAt(t, at("two"), 40<<20, []byte("a page the guest touched later"))
	// Memory the guest zeroed where its base holds data.
	writeAt(t, at("two"), 6<<20, make([]byte, 128<<10))

	if err := d.Diff(ctx, at("one.qcow2"), at("one"), at("base"), "raw"); err != nil {
		t.Fatalf("diff: %v", err)
	}
	// Relative: resolved against the file's own directory.
	if err := d.Diff(ctx, at("two.qcow2"), at("two"), "one.qcow2", "qcow2"); err != nil {
		t.Fatalf("diff on a qcow2 backing: %v", err)
	}
	for _, f := range []string{"one.qcow2", "two.qcow2"} {
		if got := allocated(t, at(f)); got > 1<<20 {
			t.Errorf("%s holds %d bytes for one changed page (the base holds %d)", f, got, allocated(t, at("base")))
		}
	}
	wantRaw := func(src, format, want string) {
		t.Helper()
		out := at(filepath.Base(src) + ".raw")
		os.Remove(out)
		if err := d.Raw(ctx, src, format, out); err != nil {
			t.Fatalf("raw %s: %v", src, err)
		}
		got, _ := os.ReadFile(out)
		w, _ := os.ReadFile(want)
		if !bytes.Equal(got, w) {
			t.Fatalf("raw %s does not read as %s", filepath.Base(src), filepath.Base(want))
		}
		if allocated(t, out) > allocated(t, want)+(1<<20) {
			t.Errorf("raw %s is not sparse: %d bytes, the original %d", filepath.Base(src), allocated(t, out), allocated(t, want))
		}
	}
	wantRaw(at("one.qcow2"), "qcow2", at("one"))
	wantRaw(at("two.qcow2"), "qcow2", at("two"))
	wantRaw(at("base"), "raw", at("base"))

	// two.qcow2 onto the base, one.qcow2 gone: it reads the same.
	if err := d.Rebase(ctx, at("two.qcow2"), at("base"), "raw", true); err != nil {
		t.Fatalf("rebase: %v", err)
	}
	if err := os.Remove(at("one.qcow2")); err != nil {
		t.Fatal(err)
	}
	wantRaw(at("two.qcow2"), "qcow2", at("two"))

	// No base: all of it, and a rebase onto none keeps what it reads.
	if err := d.Diff(ctx, at("solo.qcow2"), at("two"), "", ""); err != nil {
		t.Fatalf("diff on no base: %v", err)
	}
	wantRaw(at("solo.qcow2"), "qcow2", at("two"))
	if err := d.Rebase(ctx, at("two.qcow2"), "", "", true); err != nil {
		t.Fatalf("rebase onto none: %v", err)
	}
	if err := os.Remove(at("base")); err != nil {
		t.Fatal(err)
	}
	wantRaw(at("two.qcow2"), "qcow2", at("two"))

	// A raw file is never probed: one that looks like a qcow2 file reads
	// as its bytes.
	mk("fake")
	qhdr, err := os.ReadFile(at("two.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, at("fake"), 0, qhdr[:4096])
	wantRaw(at("fake"), "raw", at("fake"))
}
