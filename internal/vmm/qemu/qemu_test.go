package qemu_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

func newDriver(t *testing.T) *qemu.Driver {
	t.Helper()
	d, err := qemu.New(qemu.Config{Accel: os.Getenv("COVE_ACCEL"), User: "cove-vm", CgroupRoot: "/sys/fs/cgroup"})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// bootTiny boots the tiny image and returns the VM and a connected agent.
func bootTiny(t *testing.T, d *qemu.Driver) (vmm.VM, *agentproto.Client, vmm.Spec) {
	t.Helper()
	spec := tinySpec(t)
	// A generous deadline: other tests' guests share the host's CPUs.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := d.Boot(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Stop(context.Background()) })
	c, _, err := agentproto.Connect(ctx, vm.DialAgent)
	if err != nil {
		t.Fatalf("connect: %v; console: %s", err, vm.ConsoleTail())
	}
	return vm, c, spec
}

// connect connects to vm's agent (after a restore or an adoption, say:
// what), failing the test with the guest's console if it does not answer
// within 2 minutes.
func connect(t *testing.T, vm vmm.VM, what string) *agentproto.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, _, err := agentproto.Connect(ctx, vm.DialAgent)
	if err != nil {
		t.Fatalf("connect %s: %v; console: %s", what, err, vm.ConsoleTail())
	}
	return c
}

// TestBootRunsGuestKernel boots the tiny image, with the operator's extra
// kernel command line (Config.GuestCmdline) asking for debug output.
func TestBootRunsGuestKernel(t *testing.T) {
	d, err := qemu.New(qemu.Config{Accel: os.Getenv("COVE_ACCEL"), User: "cove-vm", CgroupRoot: "/sys/fs/cgroup",
		GuestCmdline: "loglevel=7 cove.debug"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	vm, c, _ := bootTiny(t, d)
	t.Logf("boot to hello: %s (accel %s)", time.Since(start), d.Accel())
	ctx := context.Background()
	h, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := exec.Command("uname", "-r").Output()
	if h.Kernel == "" || h.Kernel == strings.TrimSpace(string(host)) {
		t.Fatalf("guest kernel %q, host kernel %q: want a different, non-empty guest kernel", h.Kernel, host)
	}
	p, err := c.Exec(ctx, agentproto.Exec{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&errb, p.Stderr()); close(done) }()
	io.Copy(&out, p.Stdout())
	<-done
	exit, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "out\n" || errb.String() != "err\n" || exit.Code != 3 {
		t.Fatalf("got stdout %q stderr %q exit %d", out.String(), errb.String(), exit.Code)
	}
	// The extra command line reached the kernel, and with it the agent's
	// boot progress marks reached the console.
	if got := run(t, c, "cat", "/proc/cmdline"); !strings.HasSuffix(got, " loglevel=7 cove.debug") {
		t.Errorf("guest kernel command line %q does not end with the driver's GuestCmdline", got)
	}
	if tail := vm.ConsoleTail(); !strings.Contains(tail, "cove-agent: root switched") || !strings.Contains(tail, "cove-agent: port opened") {
		t.Errorf("console has no boot progress marks with cove.debug:\n%s", tail)
	}
	// What the driver says of a guest that does not answer: its run
	// state, the disk's and the agent port's rings (used by now), and
	// the level-triggered pins of the virtio devices.
	diag := vm.Diagnose(ctx)
	t.Logf("diagnosis of a running guest: %s", diag)
	for _, want := range []string{"run state running", "virtio-blk isr=", "virtio-serial isr=", " q0 avail=", "level", "ISR", "vCPU 0: RIP=", "HLT="} {
		if !strings.Contains(diag, want) {
			t.Errorf("Diagnose lacks %q: %s", want, diag)
		}
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.Done():
	default:
		t.Fatal("qemu still running after Stop")
	}
	if diag := vm.Diagnose(ctx); !strings.Contains(diag, "run state: ") {
		t.Errorf("Diagnose of a stopped VM: %q, want the run state's error", diag)
	}
}
