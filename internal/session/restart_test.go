package session_test

import (
	"context"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmtest"
)

// TestRecoverAfterRestart plays a server restart: manager A boots two
// sessions (one then parked and woken into a spare QEMU process) and goes
// away leaving their VMs running; while no manager runs,
// one VM dies and an unrecorded QEMU appears under the sessions dir. A new
// manager B on the same store file and dir re-adopts the live session
// (state, files and exec intact), marks the dead one failed, and kills the
// orphan.
func TestRecoverAfterRestart(t *testing.T) {
	parallelVM(t)
	a := newRig(t, rigOptions{})
	ctx := context.Background()
	keep := a.create(t, api.CreateSessionRequest{MemoryMiB: 256, Env: map[string]string{"WHO": "keep"}})
	lost := a.create(t, api.CreateSessionRequest{MemoryMiB: 256})
	if err := a.mgr.WriteFile(ctx, keep.ID, "/root/state", 0o600, strings.NewReader("survives\n")); err != nil {
		t.Fatal(err)
	}
	// A command still running in the guest when the server goes.
	r := a.run(t, keep.ID, api.ExecRequest{Argv: []string{"sh", "-c", "sleep 300 </dev/null >/dev/null 2>&1 & echo $!"}}, nil)
	sleeper := strings.TrimSpace(r.stdout)
	// keep runs in a claimed spare QEMU when the server goes: it is woken
	// twice, the second time into the spare the first wake started.
	for i := 0; i < 2; i++ {
		if _, err := a.mgr.Park(ctx, keep.ID); err != nil {
			t.Fatal(err)
		}
		if i == 1 && !waitFor(30*time.Second, func() bool { return a.driver.ReadySpares(256, 1) > 0 }) {
			t.Fatal("no spare QEMU process ready 30s after a wake")
		}
		if _, err := a.mgr.Wake(ctx, keep.ID); err != nil {
			t.Fatal(err)
		}
	}
	keepPID := qemuPID(t, a.dir, keep.ID)
	if cmd, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(keepPID), "cmdline")); !strings.Contains(string(cmd), "cove-spare-") {
		t.Fatalf("the twice-woken session does not run in a claimed spare: %q", cmd)
	}

	a.close()
	if qemuPID(t, a.dir, keep.ID) != keepPID {
		t.Fatal("closing the manager changed the QEMU of a session")
	}

	// While no manager runs: one VM dies…
	if err := syscall.Kill(qemuPID(t, a.dir, lost.ID), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool {
		_, alive := vmtest.QEMUProcs(a.dir)[keepPID]
		return alive && qemu.PIDOf(a.dir, lost.ID) == 0
	}) {
		t.Fatal("killed QEMU did not go away")
	}
	// …and an unrecorded QEMU runs under the sessions dir.
	orphan := bootOrphan(t, a)

	b := openRig(t, rigOptions{dir: a.dir, db: a.db})
	start := time.Now()
	if err := b.mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("Recover took %s", time.Since(start).Round(time.Millisecond))

	got, err := b.mgr.Get(ctx, keep.ID)
	if err != nil || got.State != api.StateRunning {
		t.Fatalf("re-adopted session: %+v, %v", got, err)
	}
	if qemuPID(t, b.dir, keep.ID) != keepPID {
		t.Fatal("the re-adopted session runs in another QEMU process: want the same one")
	}
	if out := b.sh(t, keep.ID, `cat /root/state; echo "$WHO"; kill -0 `+sleeper+` && echo sleeper-alive`); out != "survives\nkeep\nsleeper-alive\n" {
		t.Fatalf("re-adopted session: %q, want its file, its env and its running process", out)
	}
	rc, err := b.mgr.Open(ctx, keep.ID, "/root/state")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	if string(data) != "survives\n" {
		t.Fatalf("file read after re-adoption: %q", data)
	}

	got, err = b.mgr.Get(ctx, lost.ID)
	if err != nil || got.State != api.StateFailed || !strings.Contains(got.Error, "restart") {
		t.Fatalf("session whose VM died while no manager ran: %+v, %v; want failed, saying so", got, err)
	}
	_, err = b.mgr.Exec(ctx, lost.ID, api.ExecRequest{Argv: []string{"true"}})
	wantCode(t, "Exec in the lost session", err, api.CodeConflict)

	select {
	case <-orphan.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Recover did not kill the orphan QEMU under the sessions dir")
	}
	if _, err := b.mgr.Get(ctx, orphan.id); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("the orphan became a session: %v", err)
	}

	// The re-adopted session is fully managed: its deletion stops the VM.
	if err := b.mgr.Delete(ctx, keep.ID); err != nil {
		t.Fatal(err)
	}
	if _, alive := vmtest.QEMUProcs(b.dir)[keepPID]; alive {
		t.Fatal("QEMU of the deleted, re-adopted session still runs")
	}
	if err := b.mgr.Delete(ctx, lost.ID); err != nil {
		t.Fatal(err)
	}
}

// orphanVM is a VM booted by the driver behind the manager's back.
type orphanVM struct {
	vmm.VM
	id string
}

// bootOrphan boots a VM under r's sessions dir with an id no store knows.
func bootOrphan(t *testing.T, r *rig) orphanVM {
	t.Helper()
	env := vmtest.Get(t)
	im := env.Image(t, "tiny")
	id := "s-orphan" + hex.EncodeToString(randBytes(t, 3))
	dir := filepath.Join(r.dir, id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", im.RootFS, "-F", "raw", disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vm, err := r.driver.Boot(ctx, vmm.Spec{ID: id, Dir: dir, Kernel: env.Kernel.Vmlinux, Initrd: env.Initrd, Disk: disk, MemoryMiB: 256, CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Stop(context.Background()) })
	return orphanVM{VM: vm, id: id}
}
