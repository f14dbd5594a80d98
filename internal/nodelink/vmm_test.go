package nodelink

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/fake"
	"github.com/cove-dev/cove/internal/vmm/remote"
	"github.com/cove-dev/cove/internal/vmm/vmmtest"
)

// The server drives a node's VMM driver over the node's control
// connection (Hub.Dial): a boot, the guest agent's protocol end to end,
// a disk call whose error keeps its meaning, a stop that ends the VM.
func TestFakeDriverOverTheLink(t *testing.T) {
	f := newFixture(t, openStore(t), testJoinToken)
	fd := fake.New()
	f.nodeHandler = remote.Handler(fd, remote.HandlerConfig{})
	a, _ := f.runAgent(t.TempDir(), testJoinToken, time.Hour)
	eventually(t, "node connected", func() bool { return a.NodeID() != "" && f.hub.Connected(a.NodeID()) })
	id := a.NodeID()
	d := remote.New(func(ctx context.Context) (net.Conn, error) { return f.hub.Dial(ctx, id) })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if got := d.Accel(); got != "fake" {
		t.Errorf("Accel over the link: %q", got)
	}
	dir := t.TempDir()
	vm, err := d.Boot(ctx, vmm.Spec{ID: "s1", Dir: dir, Kernel: "/fake/vmlinux", Disk: filepath.Join(dir, "disk.qcow2"), MemoryMiB: 64, CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := agentproto.Connect(ctx, vm.DialAgent)
	if err != nil {
		t.Fatalf("agent over the link: %v", err)
	}
	if err := c.Write(ctx, "/tmp/f", 0o644, strings.NewReader("over the link")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	raw := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(raw, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.Disks().Backing(ctx, raw); !errors.Is(err, vmm.ErrNotQcow2) {
		t.Errorf("Backing of a raw file over the link: %v, want vmm.ErrNotQcow2", err)
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.Done():
	default:
		t.Error("Done not closed when Stop returned")
	}
	if ids := fd.Running(); len(ids) != 0 {
		t.Errorf("VMs left running on the node: %v", ids)
	}
	if _, err := f.hub.Dial(ctx, "node-unknown"); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Dial of a node not connected: %v, want ErrNotConnected", err)
	}
}

// The vmm conformance suite passes on a node's fake driver called over the
// node's control connection: every upgrade (agent relay, call streams)
// and long poll works on yamux streams as on TCP.
func TestFakeConformanceOverTheLink(t *testing.T) {
	vmmtest.Run(t, func(t *testing.T) vmmtest.Harness {
		f := newFixture(t, openStore(t), testJoinToken)
		fd := fake.New()
		f.nodeHandler = remote.Handler(fd, remote.HandlerConfig{})
		a, _ := f.runAgent(t.TempDir(), testJoinToken, time.Hour)
		eventually(t, "node connected", func() bool { return a.NodeID() != "" && f.hub.Connected(a.NodeID()) })
		id := a.NodeID()
		t.Cleanup(func() {
			if ids := fd.Running(); len(ids) != 0 {
				t.Errorf("VMs left running on the node: %v", ids)
			}
		})
		return vmmtest.Harness{
			Driver: remote.New(func(ctx context.Context) (net.Conn, error) { return f.hub.Dial(ctx, id) }),
			Spec: func(t *testing.T) vmm.Spec {
				dir := t.TempDir()
				disk := filepath.Join(dir, "disk.qcow2")
				if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M").CombinedOutput(); err != nil {
					t.Fatalf("qemu-img: %v: %s", err, out)
				}
				return vmm.Spec{ID: "s-" + filepath.Base(dir), Dir: dir, Kernel: "/fake/vmlinux", Disk: disk, MemoryMiB: 64, CPUs: 1}
			},
			Kill: func(t *testing.T, vm vmm.VM) {
				for _, id := range fd.Running() {
					if v := fd.Find(id); v != nil && v.PID() == vm.PID() {
						v.Kill()
						return
					}
				}
				t.Fatalf("no VM of PID %d on the node", vm.PID())
			},
			Pause:   func(t *testing.T, spec vmm.Spec, _ vmm.VM) { fd.Find(spec.ID).Pause() },
			Timeout: 30 * time.Second,
			MemFile: fake.MemFile,
		}
	})
}
