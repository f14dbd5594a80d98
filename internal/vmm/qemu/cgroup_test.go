package qemu_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// procCgroups maps each hierarchy of /proc/PID/cgroup to the process's
// cgroup in it: "memory", "cpu", … for v1 (a line "4:memory:/cove/ID"),
// "" for v2 ("0::/cove/ID").
func procCgroups(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, ctrl := range strings.Split(f[1], ",") {
			out[ctrl] = f[2]
		}
	}
	return out
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestCgroupLimitsOnRunningVM reads back, from the cgroups a running QEMU
// process is in, the limits of its VM (256 MiB, 1 CPU): memory = RAM + 256
// MiB of translation cache + 256 MiB for QEMU, one CPU's quota, 512 tasks.
func TestCgroupLimitsOnRunningVM(t *testing.T) {
	d := newDriver(t)
	vm, c, spec := bootTiny(t, d)
	defer c.Close()
	const mem = (256 + 256 + 256) << 20
	cg := procCgroups(t, vm.PID())
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		dir := filepath.Join("/sys/fs/cgroup", cg[""])
		if filepath.Base(dir) != spec.ID {
			t.Fatalf("QEMU's cgroup v2 is %q: want one named for the VM %s", cg[""], spec.ID)
		}
		want[filepath.Join(dir, "memory.max")] = strconv.Itoa(mem)
		want[filepath.Join(dir, "cpu.max")] = "100000 100000"
		want[filepath.Join(dir, "pids.max")] = "512"
	} else {
		for ctrl, kv := range map[string][2]string{
			"memory": {"memory.limit_in_bytes", strconv.Itoa(mem)},
			"cpu":    {"cpu.cfs_quota_us", "100000"},
			"pids":   {"pids.max", "512"},
		} {
			if ctrl == "pids" {
				if _, err := os.Stat("/sys/fs/cgroup/pids/cgroup.procs"); err != nil {
					continue // no pids hierarchy: not required on v1
				}
			}
			if filepath.Base(cg[ctrl]) != spec.ID {
				t.Fatalf("QEMU's %s cgroup is %q: want one named for the VM %s", ctrl, cg[ctrl], spec.ID)
			}
			want[filepath.Join("/sys/fs/cgroup", ctrl, cg[ctrl], kv[0])] = kv[1]
		}
	}
	for path, v := range want {
		if got := readTrim(t, path); got != v {
			t.Errorf("%s = %q, want %q", path, got, v)
		}
	}
}

// mountCgroup2 mounts a cgroup v2 hierarchy (on a v1 or hybrid host, the
// one hierarchy v2 has, with the controllers v1 does not hold) and returns
// a fresh directory in it.
func mountCgroup2(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a cgroup2 hierarchy needs root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "cgroup2", "none", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount cgroup2 here: %v: %s", err, out)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	root := filepath.Join(mnt, "cove-test-"+hex.EncodeToString(b))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range []string{"memory/cove/s-left", "memory/cove", "memory", "cpu/cove/s-left", "cpu/cove", "cpu"} {
			_ = os.Remove(filepath.Join(root, d))
		}
		_ = os.Remove(filepath.Join(root, "cove"))
		_ = os.Remove(root)
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	// The hierarchy's root hands its children the controllers the test
	// root is to have (a systemd host has done so already).
	for _, ctrl := range strings.Fields(readTrim(t, filepath.Join(mnt, "cgroup.controllers"))) {
		if ctrl == "memory" || ctrl == "cpu" || ctrl == "pids" {
			_ = os.WriteFile(filepath.Join(mnt, "cgroup.subtree_control"), []byte("+"+ctrl), 0o644)
		}
	}
	return root
}

// TestCgroupV2 points the driver at a cgroup v2 hierarchy. It must see v2
// (no "memory" or "cpu" directories made in it, as a v1 driver would),
// refuse to start without the limits it cannot apply unless allowed, and
// run a VM in a cgroup of its own there with the limits of the
// controllers it has.
func TestCgroupV2(t *testing.T) {
	root := mountCgroup2(t)
	avail := strings.Fields(readTrim(t, filepath.Join(root, "cgroup.controllers")))
	t.Logf("cgroup v2 controllers available: %q", avail)
	has := func(c string) bool { return strings.Contains(" "+strings.Join(avail, " ")+" ", " "+c+" ") }
	complete := has("memory") && has("cpu") && has("pids")

	// What drivers that took every hierarchy for v1 left in a v2 one.
	for _, name := range []string{"memory", "cpu"} {
		if err := os.MkdirAll(filepath.Join(root, name, "cove", "s-left"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_, err := qemu.New(qemu.Config{Accel: os.Getenv("COVE_ACCEL"), User: "cove-vm", CgroupRoot: root})
	for _, name := range []string{"memory", "cpu"} {
		if _, serr := os.Stat(filepath.Join(root, name)); serr == nil {
			t.Errorf("a cgroup named %q is in the v2 hierarchy: made by a driver that took it for v1, or left", name)
		}
	}
	switch {
	case complete && err != nil:
		t.Fatalf("memory, cpu and pids are available, yet: %v", err)
	case !complete && err == nil:
		t.Fatal("the driver started though cgroup v2 lacks controllers it limits with")
	case !complete && !strings.Contains(err.Error(), "--allow-no-cgroups"):
		t.Fatalf("the refusal does not say how to go on: %v", err)
	}
	if err != nil {
		t.Logf("refused as it should be: %v", err)
	}

	d, err := qemu.New(qemu.Config{Accel: os.Getenv("COVE_ACCEL"), User: "cove-vm", CgroupRoot: root, AllowNoCgroups: true})
	if err != nil {
		t.Fatal(err)
	}
	vm, c, spec := bootTiny(t, d)
	c.Close()
	rel, err := filepath.Rel(filepath.Dir(root), filepath.Join(root, "cove", spec.ID))
	if err != nil {
		t.Fatal(err)
	}
	if got := procCgroups(t, vm.PID())[""]; got != "/"+rel {
		t.Fatalf("QEMU's cgroup v2 is %q, want %q", got, "/"+rel)
	}
	dir := filepath.Join(root, "cove", spec.ID)
	for ctrl, kv := range map[string][2]string{
		"memory": {"memory.max", strconv.Itoa((256 + 256 + 256) << 20)},
		"cpu":    {"cpu.max", "100000 100000"},
		"pids":   {"pids.max", "512"},
	} {
		if !has(ctrl) {
			t.Logf("%s: not available in this hierarchy, not checked", ctrl)
			continue
		}
		if got := readTrim(t, filepath.Join(dir, kv[0])); got != kv[1] {
			t.Errorf("%s = %q, want %q", kv[0], got, kv[1])
		}
	}
	if err := vm.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("VM's cgroup %s left after it stopped", dir)
	}
}
