package qemu_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmm/qemu/qemutest"
)

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// mountCgroup2 mounts a cgroup v2 hierarchy (on a v1 or hybrid host, the
// one hierarchy v2 has, with the controllers v1 does not hold) and returns
// a fresh directory in it.
func mountCgroup2(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Skipf(t, "mounting a cgroup2 hierarchy needs root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "cgroup2", "none", mnt).CombinedOutput(); err != nil {
		testenv.Skipf(t, "cannot mount cgroup2 here: %v: %s", err, out)
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

// TestCgroupV2 points the driver at a cgroup v2 hierarchy on the host. It
// must see v2 (no "memory" or "cpu" directories made in it, as a v1 driver
// would), refuse to start without the limits it cannot apply unless
// allowed, and run a VM in a cgroup of its own there with the limits of
// the controllers the hierarchy has. A host whose controllers are bound to
// cgroup v1 (as this one: its v2 hierarchy has none of them) cannot show
// v2 limits in force, so the VM's guest, whose kernel gives its v2
// hierarchy every controller, runs the driver's cgroup code on a process
// of its own, in a hierarchy's root and in a delegated cgroup below it
// (as systemd's Delegate=yes gives), and the limits are read back there.
func TestCgroupV2(t *testing.T) {
	root := mountCgroup2(t)
	avail := strings.Fields(readTrim(t, filepath.Join(root, "cgroup.controllers")))
	t.Logf("cgroup v2 controllers available on the host: %q", avail)
	complete := slices.Contains(avail, "memory") && slices.Contains(avail, "cpu") && slices.Contains(avail, "pids")

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
	defer c.Close()
	dir := filepath.Join(root, "cove", spec.ID)
	want := qemutest.Limits{Memory: strconv.Itoa((256 + 256 + 256) << 20), CPU: "100000 100000", Pids: "512"}
	t.Run("VM on the host", func(t *testing.T) {
		rel, err := filepath.Rel(filepath.Dir(root), dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := v2Cgroup(t, vm.PID()); got != "/"+rel {
			t.Fatalf("QEMU's cgroup v2 is %q, want %q", got, "/"+rel)
		}
		l, err := qemutest.ReadLimits(vm.PID())
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{"memory": l.Memory, "cpu": l.CPU, "pids": l.Pids}
		for ctrl, v := range map[string]string{"memory": want.Memory, "cpu": want.CPU, "pids": want.Pids} {
			if !slices.Contains(avail, ctrl) {
				t.Logf("%s: bound to cgroup v1 on this host; its v2 limit is checked in the guest", ctrl)
				continue
			}
			if got[ctrl] != v || !l.V2[ctrl] || l.Dirs[ctrl] != dir {
				t.Errorf("%s: limit %s in %s (v2: %v), want %s in %s", ctrl, got[ctrl], l.Dirs[ctrl], l.V2[ctrl], v, dir)
			}
		}
	})

	t.Run("in a guest kernel", func(t *testing.T) {
		// The limits of guestCgroups' process: a 256 MiB, 2 CPU VM's.
		want := qemutest.Limits{Memory: strconv.Itoa((256 + 256 + 256) << 20), CPU: "200000 100000", Pids: "512"}
		bin := guestTestBinary(t)
		f, err := os.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Write(ctx, "/root/qemu.test", 0o755, f); err != nil {
			t.Fatalf("copy the test binary into the guest: %v", err)
		}
		// A v2 hierarchy at the usual place, and below its root a cgroup
		// with the controllers delegated to it and no process, as systemd
		// hands a unit with Delegate=yes.
		out, code := guestSh(t, c, `set -e
mount -t cgroup2 none /sys/fs/cgroup
echo "+memory +cpu +pids" > /sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/delegated
cat /sys/fs/cgroup/cgroup.controllers`)
		if code != 0 {
			t.Fatalf("guest cgroup2 mount: exit %d: %s", code, out)
		}
		t.Logf("guest cgroup v2 controllers: %s", out)
		roots := []string{"/sys/fs/cgroup", "/sys/fs/cgroup/delegated"}
		out, code = guestSh(t, c, "/root/qemu.test", qemu.GuestCgroupsEnv+"="+strings.Join(roots, " "))
		if code != 0 {
			t.Fatalf("the driver's cgroup code in the guest: exit %d: %s", code, out)
		}
		dec := json.NewDecoder(strings.NewReader(out))
		for _, root := range roots {
			var res qemu.GuestCgroupResult
			if err := dec.Decode(&res); err != nil {
				t.Fatalf("the guest's result for %s: %v in %q", root, err, out)
			}
			t.Logf("guest: %+v", res)
			dir := filepath.Join(root, "cove", "g-guest")
			switch {
			case res.Root != root:
				t.Errorf("result for %s, want %s", res.Root, root)
			case res.Setup != "" || res.Limit != "" || res.Read != "":
				t.Errorf("%s: setup %q, limit %q, read %q: want no error", root, res.Setup, res.Limit, res.Read)
			case !strings.HasPrefix(res.Where, "cgroup v2 at "+root+": memory, cpu, pids"):
				t.Errorf("%s: the driver says %q, want cgroup v2 with memory, cpu and pids", root, res.Where)
			}
			l := res.Limits
			if l.Memory != want.Memory || l.CPU != want.CPU || l.Pids != want.Pids {
				t.Errorf("%s: limits in force: memory %s, cpu %s, pids %s; want %s, %s, %s", root, l.Memory, l.CPU, l.Pids, want.Memory, want.CPU, want.Pids)
			}
			for _, ctrl := range []string{"memory", "cpu", "pids"} {
				if l.Dirs[ctrl] != dir || !l.V2[ctrl] {
					t.Errorf("%s: the process's %s cgroup is %q (v2: %v), want %s", root, ctrl, l.Dirs[ctrl], l.V2[ctrl], dir)
				}
			}
			if !res.Removed {
				t.Errorf("%s: the cgroup %s is left after its process ended", root, dir)
			}
		}
	})

	if err := vm.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("VM's cgroup %s left after it stopped", dir)
	}
}

// v2Cgroup is process pid's cgroup in the v2 hierarchy (/proc/PID/cgroup's
// "0::PATH" line).
func v2Cgroup(t *testing.T, pid int) string {
	t.Helper()
	for _, l := range strings.Split(readTrim(t, "/proc/"+strconv.Itoa(pid)+"/cgroup"), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p
		}
	}
	t.Fatalf("process %d is in no cgroup v2", pid)
	return ""
}

// guestTestBinary builds this package's test binary statically (the tiny
// guest has no C library), for a guest to run (see GuestCgroupsEnv).
func guestTestBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "qemu.test")
	// go test runs in the package's directory.
	cmd := exec.Command("go", "test", "-c", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the test binary for the guest: %v: %s", err, out)
	}
	return bin
}

// TestCgroupSweepKeepsOtherHomes: a driver with a cgroup tag (a server's,
// CgroupTag of its home) sweeps only its own empty VM cgroups, never those
// of a server on another home, which may be booting a VM into one.
func TestCgroupSweepKeepsOtherHomes(t *testing.T) {
	root := mountCgroup2(t)
	tagA, tagB := qemu.CgroupTag("/srv/cove-a"), qemu.CgroupTag("/srv/cove-b")
	if tagA == tagB || tagA != qemu.CgroupTag("/srv/cove-a/") {
		t.Fatalf("tags: %q %q", tagA, tagB)
	}
	d, err := qemu.New(qemu.Config{Accel: os.Getenv("COVE_ACCEL"), User: "cove-vm", CgroupRoot: root, CgroupTag: tagA, AllowNoCgroups: true})
	if err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(root, "cove", tagA+".s-1")
	theirs := filepath.Join(root, "cove", tagB+".s-2")
	untagged := filepath.Join(root, "cove", "s-3")
	for _, dir := range []string{mine, theirs, untagged} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(dir) })
	}
	d.CleanCgroups(func(string) bool { return false })
	if _, err := os.Stat(mine); err == nil {
		t.Error("the driver's own empty cgroup is left")
	}
	for _, dir := range []string{theirs, untagged} {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("another home's cgroup %s was swept: %v", filepath.Base(dir), err)
		}
	}
}
