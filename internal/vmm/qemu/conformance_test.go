package qemu_test

import (
	"testing"

	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/vmmtest"
	"github.com/cove-dev/cove/internal/vmtest"
)

// TestQEMUConformance runs the vmm conformance suite against the QEMU
// driver, booting the tiny image.
func TestQEMUConformance(t *testing.T) {
	vmmtest.Run(t, func(t *testing.T) vmmtest.Harness {
		d := newDriver(t)
		t.Cleanup(d.Close)
		return vmtest.QEMUHarness(d, "c")
	})
}

// tinySpec is the spec of a tiny-image VM in a fresh directory, with its
// own disk overlay.
func tinySpec(t *testing.T) vmm.Spec { return vmtest.TinySpec(t, "c") }
