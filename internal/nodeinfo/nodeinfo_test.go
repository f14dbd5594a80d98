package nodeinfo_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/nodeinfo"
)

// Probe on this host gives values a scheduler can trust: the CPUs Go
// sees, some memory and free disk, a CPU model with flags, the kernel
// release, and QEMU's version where QEMU is installed.
func TestProbeThisHost(t *testing.T) {
	c, err := nodeinfo.Probe(t.Context(), t.TempDir(), "tcg")
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if c.VCPUs != runtime.NumCPU() || c.VCPUs < 1 {
		t.Errorf("VCPUs = %d, want %d", c.VCPUs, runtime.NumCPU())
	}
	if c.MemoryMiB < 64 || c.MemoryMiB > 1<<32 {
		t.Errorf("MemoryMiB = %d, not a host's memory", c.MemoryMiB)
	}
	if c.DiskBytes <= 0 {
		t.Errorf("DiskBytes = %d, want the free bytes of a writable directory", c.DiskBytes)
	}
	if c.Accel != "tcg" {
		t.Errorf("Accel = %q, want the one given", c.Accel)
	}
	if runtime.GOARCH == "amd64" {
		if c.CPUModel == "" {
			t.Error("CPUModel is empty")
		}
		if !slices.Contains(c.CPUFlags, "sse2") {
			t.Errorf("CPUFlags = %q, want sse2 among them (every amd64 CPU has it)", c.CPUFlags)
		}
	}
	if c.KernelVersion == "" || !strings.ContainsAny(c.KernelVersion, "0123456789") {
		t.Errorf("KernelVersion = %q, want a release", c.KernelVersion)
	}
	if _, err := exec.LookPath(nodeinfo.QEMUBinary); err == nil {
		if !strings.HasPrefix(c.QEMUVersion, "QEMU emulator version ") {
			t.Errorf("QEMUVersion = %q, want the first line of --version", c.QEMUVersion)
		}
	}
}

// A home that does not exist is an error, not a node with no disk.
func TestProbeMissingHome(t *testing.T) {
	if _, err := nodeinfo.Probe(t.Context(), t.TempDir()+"/missing", "tcg"); err == nil {
		t.Fatal("Probe of a missing home succeeded")
	}
}

// A heartbeat's probe asks the QEMU binary its version once, not at every
// probe, and asks again once the binary is replaced (an upgrade).
func TestProbeAsksQEMUOnce(t *testing.T) {
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	bin := filepath.Join(dir, nodeinfo.QEMUBinary)
	write := func(version string) {
		t.Helper()
		script := "#!/bin/sh\necho run >> " + calls + "\necho 'QEMU emulator version " + version + "'\necho 'Copyright'\n"
		tmp := bin + ".new"
		if err := os.WriteFile(tmp, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, bin); err != nil {
			t.Fatal(err)
		}
	}
	runs := func() int {
		b, _ := os.ReadFile(calls)
		return strings.Count(string(b), "run")
	}
	t.Setenv("PATH", dir)
	write("7.2.22")
	for range 3 {
		c, err := nodeinfo.Probe(t.Context(), dir, "tcg")
		if err != nil {
			t.Fatal(err)
		}
		if c.QEMUVersion != "QEMU emulator version 7.2.22" {
			t.Fatalf("QEMU version %q", c.QEMUVersion)
		}
	}
	if n := runs(); n != 1 {
		t.Fatalf("QEMU asked %d times for its version over three probes, want once", n)
	}
	write("9.2.0-upgraded")
	c, err := nodeinfo.Probe(t.Context(), dir, "tcg")
	if err != nil {
		t.Fatal(err)
	}
	if c.QEMUVersion != "QEMU emulator version 9.2.0-upgraded" || runs() != 2 {
		t.Fatalf("after an upgrade: version %q, asked %d times", c.QEMUVersion, runs())
	}
}
