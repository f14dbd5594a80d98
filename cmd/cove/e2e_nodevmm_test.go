package main_test

import (
	"context"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/remote"
	"github.com/cove-dev/cove/internal/vmtest"
)

// A real 'cove node' process serves its host's QEMU driver over its
// control connection: a server-side hub drives it through vmm/remote,
// booting the tiny image, running a command through the relayed agent
// channel, and stopping the VM.
func TestNodeServesItsQEMUDriver(t *testing.T) {
	t.Parallel()
	env := vmtest.Get(t)
	cove := testBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	const token = "e2e-node-vmm-join-token"
	hub := nodelink.NewHub(nodelink.HubConfig{Store: st, JoinToken: token})
	srv := httptest.NewServer(hub)
	t.Cleanup(func() { hub.Close(); srv.CloseClientConnections(); srv.Close() })

	vmDir := vmtest.Dir(t)
	nodeHome := vmtest.Dir(t)
	log := &lockedBuffer{}
	cmd := exec.Command(cove, "node", "--server", srv.URL, "--home", nodeHome, "--name", "vmm-node", "--heartbeat", "1s")
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "COVE_") }), "COVE_JOIN_TOKEN="+token)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		for pid, line := range vmtest.QEMUProcs(vmDir) {
			t.Errorf("QEMU %d left running: %.160s", pid, line)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	var id string
	waitFor(t, "the node joins and connects", log.String, func() bool {
		n, err := st.GetNodeByName(ctx, "vmm-node")
		id = n.ID
		return err == nil && hub.Connected(id)
	})
	d := remote.New(func(ctx context.Context) (net.Conn, error) { return hub.Dial(ctx, id) })
	if a := d.Accel(); a != "kvm" && a != "tcg" {
		t.Fatalf("the node's accelerator: %q; node log:\n%s", a, log.String())
	}

	im := env.Image(t, "tiny")
	disk := filepath.Join(vmDir, "disk.qcow2")
	if err := d.Disks().Overlay(ctx, disk, im.RootFS, "raw"); err != nil {
		t.Fatalf("overlay on the node: %v", err)
	}
	vm, err := d.Boot(ctx, vmm.Spec{ID: "nodevmm", Dir: vmDir, Kernel: env.Kernel.Vmlinux, Initrd: env.Initrd,
		Disk: disk, MemoryMiB: 256, CPUs: 1})
	if err != nil {
		t.Fatalf("boot on the node: %v; node log:\n%s", err, log.String())
	}
	t.Cleanup(func() { _ = vm.Stop(context.Background()) })
	c, _, err := agentproto.Connect(ctx, vm.DialAgent)
	if err != nil {
		t.Fatalf("agent through the node: %v; console: %s", err, vm.ConsoleTail())
	}
	p, err := c.Exec(ctx, agentproto.Exec{Argv: []string{"echo", "through the node"}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(p.Stdout())
	if got := string(out); err != nil || got != "through the node\n" {
		t.Errorf("echo in the guest: %q", got)
	}
	exit, err := p.Wait()
	if err != nil || exit.Code != 0 {
		t.Errorf("echo: exit %+v, %v", exit, err)
	}
	c.Close()
	if err := vm.Stop(ctx); err != nil {
		t.Fatalf("stop on the node: %v", err)
	}
	select {
	case <-vm.Done():
	default:
		t.Fatal("Done not closed when Stop returned")
	}
	if left := vmtest.VMProcs(vmDir); len(left) != 0 {
		t.Fatalf("QEMU still runs after Stop: %v", left)
	}
}
