package remote_test

import (
	"os"
	"testing"

	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmm/vmmtest"
	"github.com/cove-dev/cove/internal/vmtest"
)

// TestQEMURemoteConformance runs the conformance suite against the QEMU
// driver served over the wire, booting the tiny image: the real guest
// agent's protocol runs through the node's relay.
func TestQEMURemoteConformance(t *testing.T) {
	vmmtest.Run(t, func(t *testing.T) vmmtest.Harness {
		vmtest.Require(t)
		qd, err := qemu.New(qemu.Config{Accel: os.Getenv("COVE_ACCEL"), User: "cove-vm", CgroupRoot: "/sys/fs/cgroup"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(qd.Close)
		d, _ := serve(t, qd)
		return vmtest.QEMUHarness(d, "r")
	})
}
