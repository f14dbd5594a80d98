package vmmtest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/cove-dev/cove/internal/vmm"
)

// KillVMs ends the VMM process of a VM under the directory it is given
// whose id matches, and no other: not one elsewhere, not one whose id does
// not match. The killed VM's handle no longer adopts.
func (s suite) killVMsEndsOnlyMatching(t *testing.T) {
	r := s.rig(t)
	a, aspec := r.boot()
	b, bspec := r.boot()
	handle := a.Handle()
	// Every id matches, but only a's directory is named: b runs on.
	pids := r.Driver.KillVMs(r.ctx(), aspec.Dir, func(string) bool { return true })
	if !slices.Equal(pids, []int{a.PID()}) {
		t.Fatalf("KillVMs under a's directory: PIDs %v, want [%d]", pids, a.PID())
	}
	r.waitDone(a, "VM ended by KillVMs")
	r.wantGone(handle, "VM ended by KillVMs")
	// b's directory, but no id matches: b runs on.
	if pids := r.Driver.KillVMs(r.ctx(), bspec.Dir, func(id string) bool { return id != bspec.ID }); len(pids) != 0 {
		t.Fatalf("KillVMs matching no VM: PIDs %v, want none", pids)
	}
	select {
	case <-b.Done():
		t.Fatal("KillVMs ended a VM it was not to end")
	default:
	}
	c := r.connect(b, "after KillVMs spared it")
	if out, code := r.run(c, "echo", "spared"); out != "spared\n" || code != 0 {
		t.Fatalf("echo in the spared VM: %q, exit %d", out, code)
	}
}

// The driver's Disks make overlays whose backing file Backing reads back
// (a relative name resolved against the overlay's directory), Flatten and
// a copying Rebase keep what a chain reads while leaving it on the base
// alone, and a Rebase without copy changes only the name.
func (s suite) disksStackAndFlatten(t *testing.T) {
	r := s.rig(t)
	d := r.Driver.Disks()
	ctx := r.ctx()
	dir := t.TempDir()
	at := func(name string) string { return filepath.Join(dir, name) }
	// base: a raw file of zeros; l1: an overlay on it that holds data,
	// written as a guest would (qemu-io, through the chain); l2 on l1.
	if err := os.WriteFile(at("base.raw"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.Overlay(ctx, at("l1.qcow2"), at("base.raw"), "raw"); err != nil {
		t.Fatalf("overlay on a raw base: %v", err)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 4096 65536", at("l1.qcow2")).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io write: %v: %s", err, out)
	}
	// Relative: resolved against l2's own directory.
	if err := d.Overlay(ctx, at("l2.qcow2"), "l1.qcow2", "qcow2"); err != nil {
		t.Fatalf("overlay on a relative qcow2 backing: %v", err)
	}
	wantBacking := func(path, file, format string) {
		t.Helper()
		f, ff, err := d.Backing(ctx, path)
		if err != nil || f != file || ff != format {
			t.Fatalf("Backing(%s): %q, %q, %v; want %q, %q", filepath.Base(path), f, ff, err, file, format)
		}
	}
	wantBacking(at("l1.qcow2"), at("base.raw"), "raw")
	wantBacking(at("l2.qcow2"), at("l1.qcow2"), "qcow2")
	if _, _, err := d.Backing(ctx, at("base.raw")); !errors.Is(err, vmm.ErrNotQcow2) {
		t.Fatalf("Backing of a raw file: %v, want vmm.ErrNotQcow2", err)
	}

	want := readDisk(t, at("l2.qcow2"))
	if !bytes.Equal(want[4096:4096+65536], bytes.Repeat([]byte{0x5a}, 65536)) {
		t.Fatal("the chain does not read what was written into l1")
	}
	if err := d.Flatten(ctx, at("l2.qcow2"), at("flat.qcow2"), at("base.raw"), "raw"); err != nil {
		t.Fatalf("flatten: %v", err)
	}
	wantBacking(at("flat.qcow2"), at("base.raw"), "raw")
	if !bytes.Equal(readDisk(t, at("flat.qcow2")), want) {
		t.Fatal("the flattened disk does not read as its source")
	}

	// Without copy only the name changes: l2 on a copy of l1 reads the same.
	if err := os.Link(at("l1.qcow2"), at("l1-copy.qcow2")); err != nil {
		t.Fatal(err)
	}
	if err := d.Rebase(ctx, at("l2.qcow2"), "l1-copy.qcow2", "qcow2", false); err != nil {
		t.Fatalf("rebase without copy: %v", err)
	}
	wantBacking(at("l2.qcow2"), at("l1-copy.qcow2"), "qcow2")
	// With copy, l2 takes in what l1 held and rests on the base alone.
	if err := d.Rebase(ctx, at("l2.qcow2"), at("base.raw"), "raw", true); err != nil {
		t.Fatalf("rebase with copy: %v", err)
	}
	wantBacking(at("l2.qcow2"), at("base.raw"), "raw")
	if err := os.Remove(at("l1.qcow2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(at("l1-copy.qcow2")); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readDisk(t, at("l2.qcow2")), want) {
		t.Fatal("the rebased disk does not read as before")
	}
}

// disksDiffAndRaw keeps a RAM-like raw file as what differs from another
// (Diff) and reads it back raw (Raw): the difference holds little more
// than the page that changed, a chain of two reads back exactly, and a
// zeroed page over the base's data reads as zeros.
func (s suite) disksDiffAndRaw(t *testing.T) {
	r := s.rig(t)
	d := r.Driver.Disks()
	ctx := r.ctx()
	dir := t.TempDir()
	at := func(name string) string { return filepath.Join(dir, name) }
	a := bytes.Repeat([]byte{0x11}, 4<<20)
	b := bytes.Clone(a)
	copy(b[1<<20:], bytes.Repeat([]byte{0x22}, 4096)) // one page changed
	c := bytes.Clone(b)
	clear(c[2<<20 : 2<<20+4096]) // one page zeroed
	for name, data := range map[string][]byte{"a.raw": a, "b.raw": b, "c.raw": c} {
		if err := os.WriteFile(at(name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Diff(ctx, at("b.qcow2"), at("b.raw"), at("a.raw"), "raw"); err != nil {
		t.Fatalf("diff on a raw base: %v", err)
	}
	if err := d.Diff(ctx, at("c.qcow2"), at("c.raw"), at("b.qcow2"), "qcow2"); err != nil {
		t.Fatalf("diff on a qcow2 base: %v", err)
	}
	for name, want := range map[string][]byte{"b": b, "c": c} {
		if err := d.Raw(ctx, at(name+".qcow2"), "qcow2", at(name+".out")); err != nil {
			t.Fatalf("raw of %s: %v", name, err)
		}
		got, err := os.ReadFile(at(name + ".out"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s read back raw differs from what it was", name)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(at("b.qcow2"), &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 1<<20 {
		t.Errorf("the difference of one page takes %d bytes, want well under the 4 MiB file", used)
	}
}

// readDisk returns what the disk file path's chain reads as, in full.
func readDisk(t *testing.T, path string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "read.raw")
	if out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, raw).CombinedOutput(); err != nil {
		t.Fatalf("read %s: %v: %s", filepath.Base(path), err, out)
	}
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
