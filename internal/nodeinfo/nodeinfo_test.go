package nodeinfo_test

import (
	"os/exec"
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
