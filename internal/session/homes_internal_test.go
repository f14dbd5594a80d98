package session

import (
	"testing"
	"time"
)

// A path moves from one home to another only where it lies in the old
// one, and a path already in the new home stays, even where one home
// lies in the other.
func TestMoveHome(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ p, from, to, want string }{
		{"/a/images/tiny/k/rootfs.raw", "/a", "/b", "/b/images/tiny/k/rootfs.raw"},
		{"/b/images/tiny/k/rootfs.raw", "/a", "/b", "/b/images/tiny/k/rootfs.raw"},
		{"/c/kernels/v/vmlinux", "/a", "/b", "/c/kernels/v/vmlinux"},
		{"/ab/kernels/v/vmlinux", "/a", "/b", "/ab/kernels/v/vmlinux"},
		{"", "/a", "/b", ""},
		// The new home inside the old one: in it already, it stays.
		{"/a/n/images/x", "/a", "/a/n", "/a/n/images/x"},
		{"/a/images/x", "/a", "/a/n", "/a/n/images/x"},
		// The old home inside the new one: it moves out.
		{"/a/n/images/x", "/a/n", "/a", "/a/images/x"},
		{"/a/images/x", "/a/n", "/a", "/a/images/x"},
	} {
		if got := moveHome(c.p, c.from, c.to); got != c.want {
			t.Errorf("moveHome(%q, %q, %q) = %q, want %q", c.p, c.from, c.to, got, c.want)
		}
	}
}

// A parked record moved from node A (home /ha) to node B (home /hb) names
// B's session dir for its own files, B's home for the rest, and keeps
// A's home for the wake's rebase; its last stored snapshot's record, made
// on a third node, moves from that node's dir and home, keeping the home
// its disk names.
func TestRehomeMovesEveryPath(t *testing.T) {
	t.Parallel()
	last := machine{V: machineVersion, Kernel: "/hc/kernels/v/vmlinux", Initrd: "/hc/initramfs/k.cpio",
		Disk: "/hc/sessions/s-1/disk.qcow2", FromHome: "/hd",
		Parked: &parked{State: "/hc/sessions/s-1/state", Mem: "/hc/sessions/s-1/mem"}}
	mach := machine{V: machineVersion, Kernel: "/ha/kernels/v/vmlinux", Initrd: "/ha/initramfs/k.cpio",
		Disk: "/ha/sessions/s-1/disk.qcow2", MemFrom: "/ha/sessions/s-1/checkpoints/c1",
		Parked:     &parked{State: "/ha/sessions/s-1/state", Mem: "/ha/sessions/s-1/mem", CreatedAt: time.Now()},
		LastStored: &lastStored{Manifest: "m1", Machine: last.encode()}}
	b := rehome(mach.encode(), "/ha/sessions/s-1", "/hb/sessions/s-1")
	got, err := decodeMachine(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Kernel != "/hb/kernels/v/vmlinux" || got.Initrd != "/hb/initramfs/k.cpio" || got.Disk != "/hb/sessions/s-1/disk.qcow2" ||
		got.MemFrom != "/hb/sessions/s-1/checkpoints/c1" || got.Parked.State != "/hb/sessions/s-1/state" ||
		got.Parked.Mem != "/hb/sessions/s-1/mem" || got.FromHome != "/ha" {
		t.Errorf("rehomed: %+v, parked %+v", got, got.Parked)
	}
	if mach.Parked.Mem != "/ha/sessions/s-1/mem" {
		t.Errorf("rehome changed the record it read: %+v", mach.Parked)
	}
	ls, err := decodeMachine(got.LastStored.Machine)
	if err != nil {
		t.Fatal(err)
	}
	if ls.Kernel != "/hb/kernels/v/vmlinux" || ls.Disk != "/hb/sessions/s-1/disk.qcow2" || ls.Parked.Mem != "/hb/sessions/s-1/mem" || ls.FromHome != "/hd" {
		t.Errorf("last stored, rehomed: %+v, parked %+v", ls, ls.Parked)
	}
	// Within one home nothing changes.
	if same := rehome(b, "/hb/sessions/s-1", "/hb/sessions/s-1"); string(same) != string(b) {
		t.Errorf("rehome within a home changed the record")
	}
}

// A template version built on another node is read in this node's home:
// its files in this node's dir for the version.
func TestVersionHere(t *testing.T) {
	t.Parallel()
	m := &Manager{cfg: Config{Dir: "/hb/sessions", TemplateDir: "/hb/templates"}}
	v := machine{V: machineVersion, Kernel: "/ha/kernels/v/vmlinux", Disk: "/ha/templates/py/v2/disk.qcow2",
		Parked: &parked{State: "/ha/templates/py/v2/state", Mem: "/ha/templates/py/v2/mem"}}
	got := m.versionHere(v)
	if got.Kernel != "/hb/kernels/v/vmlinux" || got.Disk != "/hb/templates/py/v2/disk.qcow2" ||
		got.Parked.Mem != "/hb/templates/py/v2/mem" || got.Parked.State != "/hb/templates/py/v2/state" || got.FromHome != "/ha" {
		t.Errorf("version here: %+v, parked %+v", got, got.Parked)
	}
	m.cfg.TemplateDir = "/ha/templates"
	if got := m.versionHere(v); got.Disk != v.Disk || got.FromHome != "" {
		t.Errorf("version of this home: %+v", got)
	}
}
