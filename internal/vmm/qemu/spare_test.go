package qemu_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmm/qemu/qemutest"
	"github.com/cove-dev/cove/internal/vmtest"
)

func newSpareDriver(t *testing.T, dir string) *qemu.Driver {
	t.Helper()
	d, err := qemu.New(qemu.Config{Accel: os.Getenv("COVE_ACCEL"), User: "cove-vm", CgroupRoot: "/sys/fs/cgroup", SpareDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func waitSpare(t *testing.T, d *qemu.Driver, spec vmm.Spec) {
	t.Helper()
	if !waitUntil(30*time.Second, func() bool { return d.ReadySpares(spec.MemoryMiB, spec.CPUs) > 0 }) {
		t.Fatal("no spare QEMU process ready after 30s")
	}
}

func alive(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// TestRestoreIntoSpare restores a saved VM into spare QEMU processes,
// several times: the guest must go on as after any restore (processes,
// disk), the VM must be adoptable by a later driver and found by its id
// as an orphan; spares left by a driver that died are killed, and a
// restore passes over a spare that died.
func TestRestoreIntoSpare(t *testing.T) {
	spareDir := filepath.Join(vmtest.Dir(t), "spares")
	d := newSpareDriver(t, spareDir)
	vm, c, spec := bootTiny(t, d)
	run(t, c, "sh", "-c", "(i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done) >/dev/null 2>&1 & echo $! > /tmp/pid")
	pid := run(t, c, "cat", "/tmp/pid")
	c.Close()
	d.Prewarm(spec.MemoryMiB, spec.CPUs)

	ctx := context.Background()
	state := filepath.Join(spec.Dir, "state")
	for i := 0; i < 2; i++ {
		if _, err := d.Save(ctx, vm, state); err != nil {
			t.Fatal(err)
		}
		waitSpare(t, d, spec)
		restored, st, err := d.Restore(ctx, spec, state)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { restored.Stop(context.Background()) })
		vm = restored
		if !st.Spare {
			t.Fatalf("restore %d: a spare was ready but not used: %+v", i, st)
		}
		t.Logf("restore into spare: %+v", st)
		c2 := connect(t, vm, "after restore into spare")
		countPast(t, c2, countPast(t, c2, 0))
		if got := run(t, c2, "sh", "-c", "kill -0 "+pid+" && echo alive"); got != "alive" {
			t.Fatalf("background process %s gone after restore into spare", pid)
		}
		// The disk is the VM's: what was written before is there, and a
		// write reaches the overlay.
		run(t, c2, "sh", "-c", "echo "+strconv.Itoa(i)+" >> /root/log && sync")
		if got := run(t, c2, "cat", "/root/log"); got != map[int]string{0: "0", 1: "0\n1"}[i] {
			t.Fatalf("disk after restore %d: /root/log is %q", i, got)
		}
		c2.Close()
	}
	for _, f := range []string{qemu.QMPSocket, qemu.AgentSocket, qemu.ConsoleLog, qemu.QEMULog} {
		if _, err := os.Stat(filepath.Join(spec.Dir, f)); err != nil {
			t.Errorf("claimed spare's %s not in the VM's directory: %v", f, err)
		}
	}

	// A later driver adopts it through the sockets moved into spec.Dir.
	if err := vm.Release(); err != nil {
		t.Fatal(err)
	}
	adopted, err := newDriver(t).Adopt(ctx, vm.Handle())
	if err != nil {
		t.Fatalf("adopt a VM restored into a spare: %v", err)
	}
	c3 := connect(t, adopted, "adopted VM")
	if got := run(t, c3, "cat", "/root/log"); got != "0\n1" {
		t.Fatalf("adopted VM: /root/log is %q", got)
	}
	c3.Close()

	// Orphans knows it by the VM's id, not the spare's name.
	var ids []string
	orphans := qemu.Orphans(filepath.Dir(spec.Dir), func(id string) bool { ids = append(ids, id); return id == spec.ID })
	for _, p := range orphans {
		if p == adopted.PID() {
			t.Fatalf("the VM in a claimed spare is an orphan; ids seen: %v", ids)
		}
	}
	found := false
	for _, p := range qemu.Orphans(filepath.Dir(spec.Dir), func(string) bool { return false }) {
		found = found || p == adopted.PID()
	}
	if !found {
		t.Fatal("Orphans does not find the VM in a claimed spare")
	}

	// A spare left by a driver that died is killed by the next one.
	waitSpare(t, d, spec)
	var left []int
	for p := range vmtest.QEMUProcs(spareDir) {
		if p != adopted.PID() {
			left = append(left, p)
		}
	}
	if len(left) != 1 {
		t.Fatalf("want one idle spare, got processes %v", left)
	}
	newSpareDriver(t, spareDir)
	deadline := time.Now().Add(10 * time.Second)
	for alive(left[0]) {
		if time.Now().After(deadline) {
			t.Fatalf("leftover spare %d still running", left[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !alive(adopted.PID()) {
		t.Fatal("the next driver killed a claimed spare (a running VM)")
	}
	ents, _ := os.ReadDir(spareDir)
	if len(ents) != 1 {
		t.Fatalf("spare dir holds %d entries, want only the claimed spare's", len(ents))
	}
	// d's spare was killed by the driver after it: d passes it over and
	// starts QEMU afresh. The adopted VM's cgroups (named for its spare,
	// which the handle records) go with it.
	var h struct {
		Cgroup string `json:"cgroup"`
	}
	if err := json.Unmarshal(adopted.Handle(), &h); err != nil || !strings.HasPrefix(h.Cgroup, "spare-") {
		t.Fatalf("handle of a VM in a claimed spare: %s (%v): want its spare's cgroup", adopted.Handle(), err)
	}
	l, err := qemutest.ReadLimits(adopted.PID())
	if err != nil {
		t.Fatal(err)
	}
	for _, ctrl := range []string{"memory", "cpu", "pids"} {
		if filepath.Base(l.Dirs[ctrl]) != h.Cgroup {
			t.Errorf("the VM in a claimed spare is in %s cgroup %q, want its spare's %s", ctrl, l.Dirs[ctrl], h.Cgroup)
		}
	}
	if want := strconv.Itoa((256 + 256 + 256) << 20); l.Memory != want || l.CPU != "100000 100000" || l.Pids != "512" {
		t.Errorf("limits in force on the VM in a claimed spare: memory %s, cpu %s, pids %s; want its VM's: %s, 100000 100000, 512", l.Memory, l.CPU, l.Pids, want)
	}
	if _, err := d.Save(ctx, adopted, state); err != nil {
		t.Fatal(err)
	}
	for ctrl, dir := range l.Dirs {
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("%s cgroup %s left after its VM stopped", ctrl, dir)
		}
	}
	restored, st, err := d.Restore(ctx, spec, state)
	if err != nil {
		t.Fatalf("restore with the spare killed: %v", err)
	}
	t.Cleanup(func() { restored.Stop(context.Background()) })
	if st.Spare {
		t.Fatal("restore claimed a killed spare")
	}
	c4 := connect(t, restored, "after a restore past a dead spare")
	if got := run(t, c4, "cat", "/root/log"); got != "0\n1" {
		t.Fatalf("after a restore past a dead spare: /root/log is %q", got)
	}
	c4.Close()
}

// TestSpareStartRetried: a spare that fails to start (here its QEMU exits
// at once, the first time) is started again later, so spares come back
// after a failure without a restore asking for one.
func TestSpareStartRetried(t *testing.T) {
	vmtest.Require(t)
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal(err)
	}
	dir := vmtest.Dir(t)
	failed := filepath.Join(dir, "failed-once")
	wrapper := filepath.Join(dir, "qemu")
	script := "#!/bin/sh\ncase \" $* \" in *' --preconfig '*) [ -e " + failed + " ] || { touch " + failed + "; exit 1; } ;; esac\nexec " + bin + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// QEMU runs as root here (the wrapper marks its first start in the
	// test's directory, which only root may write).
	d, err := qemu.New(qemu.Config{Binary: wrapper, Accel: os.Getenv("COVE_ACCEL"), AllowRootVMs: true, SpareDir: filepath.Join(dir, "spares")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	spec := vmm.Spec{MemoryMiB: 256, CPUs: 1}
	d.Prewarm(spec.MemoryMiB, spec.CPUs)
	waitSpare(t, d, spec)
	if _, err := os.Stat(failed); err != nil {
		t.Fatalf("the first spare start did not fail as arranged: %v", err)
	}
}

// TestCloseCutsSpareStarts: Close does not wait out a spare's start. The
// spare here is a stand-in for a QEMU that never answers QMP (a spare
// starts at the lowest priority, and on a loaded host a real one took
// longer than a server's exit may): Close must end it well within the
// start's own timeout (2 minutes), and leave no process or directory.
func TestCloseCutsSpareStarts(t *testing.T) {
	vmtest.Require(t)
	dir := vmtest.Dir(t)
	mute := filepath.Join(dir, "mute-qemu")
	if err := os.WriteFile(mute, []byte("#!/bin/sh\nexec sleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	spares := filepath.Join(dir, "spares")
	d, err := qemu.New(qemu.Config{Binary: mute, Accel: "tcg", User: "cove-vm", CgroupRoot: "/sys/fs/cgroup", SpareDir: spares})
	if err != nil {
		t.Fatal(err)
	}
	d.Prewarm(256, 1)
	var pid int
	if !waitUntil(time.Minute, func() bool { pid = spareProcess(spares); return pid != 0 }) {
		t.Fatal("the spare's process never started")
	}
	closed := make(chan struct{})
	go func() { d.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(90 * time.Second):
		t.Fatal("Close still waits for a spare's start after 90 s (its start timeout is 2 minutes)")
	}
	if !waitUntil(30*time.Second, func() bool { return !alive(pid) }) {
		t.Errorf("the spare's process %d outlived Close", pid)
	}
	if entries, _ := os.ReadDir(spares); len(entries) != 0 {
		t.Errorf("spare directories left after Close: %v", entries)
	}
}

// spareProcess is the PID of a process running in a spare's directory
// under dir (QEMU starts in its VM's directory), or 0.
func spareProcess(dir string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd"); err == nil && strings.HasPrefix(cwd, dir+"/") {
			return pid
		}
	}
	return 0
}

func waitUntil(limit time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}
