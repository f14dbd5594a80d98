package session_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmm/qemu/qemutest"
	"github.com/cove-dev/cove/internal/vmtest"
)

// TestBadRequestsChangeNothing checks the errors of requests that name
// things that do not exist: clear codes, and no record or VM left behind.
func TestBadRequestsChangeNothing(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	const missing = "s-doesnotexist"

	_, err := r.mgr.Get(ctx, missing)
	wantCode(t, "Get of an unknown session", err, api.CodeNotFound)
	_, err = r.mgr.Exec(ctx, missing, api.ExecRequest{Argv: []string{"true"}})
	wantCode(t, "Exec in an unknown session", err, api.CodeNotFound)
	_, err = r.mgr.Open(ctx, missing, "/etc/hostname")
	wantCode(t, "Open in an unknown session", err, api.CodeNotFound)
	wantCode(t, "WriteFile in an unknown session", r.mgr.WriteFile(ctx, missing, "/x", 0o644, strings.NewReader("x")), api.CodeNotFound)
	wantCode(t, "Delete of an unknown session", r.mgr.Delete(ctx, missing), api.CodeNotFound)

	_, err = r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Image: "no-such-image"})
	wantCode(t, "Create from an unknown image", err, api.CodeInvalid)
	if !strings.Contains(err.Error(), "tiny") {
		t.Errorf("unknown image error %q does not list the known images", err)
	}
	_, err = r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{BootTimeout: "soon"})
	wantCode(t, "Create with a bad boot timeout", err, api.CodeInvalid)

	// A known image that was never built: a builder over an empty home.
	empty := &image.Builder{Home: t.TempDir(), AgentPath: vmtest.Get(t).Agent}
	unbuilt := openRig(t, rigOptions{images: empty, dir: r.dir, db: filepath.Join(t.TempDir(), "state.db")})
	_, err = unbuilt.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Image: "tiny"})
	wantCode(t, "Create from an image not built", err, api.CodeNotFound)
	if !strings.Contains(err.Error(), "cove image build tiny") {
		t.Errorf("not-built error %q does not say how to build it", err)
	}

	for _, m := range []*rig{r, unbuilt} {
		if ss, err := m.mgr.List(ctx); err != nil || len(ss) != 0 {
			t.Errorf("sessions after refused creates: %+v, %v", ss, err)
		}
	}
	if ents := sessionEntries(r.dir); len(ents) != 0 {
		t.Errorf("refused creates left %v in the sessions dir", ents)
	}
}

// hangDriver boots guests whose kernel panics before init and then waits
// forever (panic=0, last on the command line, wins): QEMU runs on, and
// the agent never answers.
type hangDriver struct{ vmm.Driver }

func (d hangDriver) Boot(ctx context.Context, spec vmm.Spec) (vmm.VM, error) {
	spec.Cmdline = strings.TrimSpace(spec.Cmdline + " rdinit=/no-such-init panic=0")
	return d.Driver.Boot(ctx, spec)
}

// TestBootTimeoutFailsCleanly protects the two rules of a boot timeout. One
// too short to be meant (under a second: "1ns", "1ms") is refused with 400
// and leaves nothing. One that passes during the boot (a guest that never
// answers) fails the create with a timeout and leaves the session failed
// with the reason, for whoever asks later (the client may have gone), and
// neither a QEMU process nor the session's directory.
func TestBootTimeoutFailsCleanly(t *testing.T) {
	r := newRig(t, rigOptions{driver: func(d vmm.Driver) vmm.Driver { return hangDriver{d} }})
	ctx := context.Background()
	for _, d := range []string{"1ns", "1ms", "999ms"} {
		_, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{BootTimeout: d})
		wantCode(t, "Create with a "+d+" boot timeout", err, api.CodeInvalid)
		if !strings.Contains(err.Error(), "at least 1s") {
			t.Errorf("error %q does not say the minimum", err)
		}
	}
	if ss, err := r.mgr.List(ctx); err != nil || len(ss) != 0 {
		t.Fatalf("sessions after refused boot timeouts: %+v, %v; want none", ss, err)
	}
	if ents := sessionEntries(r.dir); len(ents) != 0 {
		t.Errorf("refused creates left %v in the sessions dir", ents)
	}
	_, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{BootTimeout: "2s"})
	wantCode(t, "Create of a guest that never answers, with a 2s boot timeout", err, api.CodeTimeout)
	// The boot timeout passes while the guest boots ("guest agent did not
	// answer within 2s") or, on a loaded host, while QEMU itself starts
	// ("VMM did not start within 2s"): either names it.
	bootTimedOut := regexp.MustCompile(`(guest agent did not answer|VMM did not start) within 2s`)
	if !bootTimedOut.MatchString(err.Error()) {
		t.Errorf("error %q does not say which timeout passed", err)
	}
	s := onlySession(t, r)
	if s.State != api.StateFailed || !bootTimedOut.MatchString(s.Error) {
		t.Fatalf("record after a boot timeout: %+v, want failed with the reason", s)
	}
	wantGone(t, r, s.ID)
	_, err = r.mgr.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"true"}})
	wantCode(t, "Exec in a failed session", err, api.CodeConflict)
	if err := r.mgr.Delete(ctx, s.ID); err != nil {
		t.Fatalf("Delete of a failed session: %v", err)
	}
}

// panicDriver boots guests with a kernel command line that makes the
// kernel panic before init: the initramfs has no such init, and there is
// no root device to fall back to.
type panicDriver struct{ vmm.Driver }

func (d panicDriver) Boot(ctx context.Context, spec vmm.Spec) (vmm.VM, error) {
	spec.Cmdline = strings.TrimSpace(spec.Cmdline + " rdinit=/no-such-init")
	return d.Driver.Boot(ctx, spec)
}

// TestKernelPanicAtBootFailsClearly boots a guest whose kernel panics: the
// create fails fast (not at the boot timeout) with the console's panic in
// the message, the record says failed, nothing is left.
func TestKernelPanicAtBootFailsClearly(t *testing.T) {
	r := newRig(t, rigOptions{driver: func(d vmm.Driver) vmm.Driver { return panicDriver{d} }})
	ctx := context.Background()
	// A manager that waited for the boot timeout instead of noticing
	// QEMU's exit would answer a timeout, not the panic: the code and the
	// message tell, however long the guest takes to panic.
	start := time.Now()
	_, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{BootTimeout: "5m"})
	wantCode(t, "Create of a guest that panics", err, api.CodeUnavailable)
	t.Logf("panicking boot failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if !strings.Contains(err.Error(), "Kernel panic") {
		t.Errorf("error %q does not carry the console's kernel panic", err)
	}
	s := onlySession(t, r)
	if s.State != api.StateFailed || !strings.Contains(s.Error, "Kernel panic") {
		t.Fatalf("record: %+v, want failed with the panic", s)
	}
	wantGone(t, r, s.ID)
}

// TestKilledVMFailsOnlyItsSession kills the QEMU process of a running
// session: that session becomes failed with a clear error, commands in it
// are refused, and the other session goes on as before. The killed VM's
// cgroups, which held its limits while it ran, are gone once it is
// removed.
func TestKilledVMFailsOnlyItsSession(t *testing.T) {
	parallelVM(t)
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	victim := r.create(t, api.CreateSessionRequest{MemoryMiB: 256})
	other := r.create(t, api.CreateSessionRequest{MemoryMiB: 256})
	r.sh(t, other.ID, "echo before > /root/f")

	pid := qemuPID(t, r.dir, victim.ID)
	wantLimited(t, pid, r.dir, victim.ID)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var got api.Session
	if !waitFor(time.Minute, func() bool {
		got, _ = r.mgr.Get(ctx, victim.ID)
		return got.State == api.StateFailed
	}) {
		t.Fatalf("session of a killed VM: %+v, want failed", got)
	}
	if !strings.Contains(got.Error, "exited unexpectedly") {
		t.Errorf("failed session's error %q does not say the VM exited", got.Error)
	}
	_, err := r.mgr.Exec(ctx, victim.ID, api.ExecRequest{Argv: []string{"true"}})
	wantCode(t, "Exec in the killed session", err, api.CodeConflict)
	if err == nil || !strings.Contains(err.Error(), "failed") {
		t.Errorf("exec error %v does not say the session failed", err)
	}

	if g, err := r.mgr.Get(ctx, other.ID); err != nil || g.State != api.StateRunning {
		t.Fatalf("the other session: %+v, %v", g, err)
	}
	if out := r.sh(t, other.ID, "cat /root/f"); out != "before\n" {
		t.Fatalf("the other session's file: %q", out)
	}
	if err := r.mgr.Delete(ctx, victim.ID); err != nil {
		t.Fatalf("Delete of the killed session: %v", err)
	}
	wantGone(t, r, victim.ID)
}

// onlySession returns the rig's one session record.
func onlySession(t *testing.T, r *rig) api.Session {
	t.Helper()
	ss, err := r.mgr.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 1 {
		t.Fatalf("%d sessions recorded, want 1: %+v", len(ss), ss)
	}
	return ss[0]
}

// wantGone checks that session id has no QEMU process and no directory.
func wantGone(t *testing.T, r *rig, id string) {
	t.Helper()
	if !waitFor(time.Minute, func() bool {
		return qemu.PIDOf(r.dir, id) == 0
	}) {
		t.Errorf("QEMU of %s still runs", id)
	}
	if _, err := os.Stat(filepath.Join(r.dir, id)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("directory of %s: %v, want it removed", id, err)
	}
	// The driver's per-VM cgroups go too (wantLimited shows that they
	// are where vmCgroups looks while the VM runs).
	for _, dir := range vmCgroups(t, r.dir, id) {
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("cgroup %s of %s: %v, want it removed", dir, id, err)
		}
	}
}

// vmCgroups are the directories of VM id's cgroups on this host, where the
// driver of the rig over sessions dir dir (cgroup root /sys/fs/cgroup, tag
// that of dir) makes them: cove/TAG.ID in a cgroup v2 hierarchy, or
// cove/TAG.ID in each cgroup v1 hierarchy of memory, cpu and pids. None
// when the rig runs without cgroups (COVE_NOCG).
func vmCgroups(t *testing.T, dir, id string) []string {
	t.Helper()
	if os.Getenv("COVE_NOCG") != "" {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return []string{filepath.Join("/sys/fs/cgroup", "cove", qemu.CgroupName(dir, id))}
	}
	var dirs []string
	for _, ctrl := range []string{"memory", "cpu", "pids"} {
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", ctrl, "cove", qemu.CgroupName(dir, id)))
	}
	return dirs
}

// wantLimited checks, through the kernel, that QEMU process pid runs in
// the cgroups of VM id of the rig over sessions dir sessions (those
// vmCgroups names) with the limits of a 256 MiB, 1 CPU session: 256 MiB
// of RAM + 256 MiB of TCG translation cache + 256 MiB for QEMU, one CPU's
// quota, 512 tasks.
func wantLimited(t *testing.T, pid int, sessions, id string) {
	t.Helper()
	if os.Getenv("COVE_NOCG") != "" {
		if testenv.CI() {
			t.Fatal("COVE_NOCG is set under CI: VMs run without the cgroup limits the tests must check")
		}
		t.Logf("COVE_NOCG: the rig runs VMs without cgroups; their limits are not checked")
		return
	}
	l, err := qemutest.ReadLimits(pid)
	if err != nil {
		t.Fatal(err)
	}
	want := qemutest.Limits{Memory: strconv.Itoa((256 + 256 + 256) << 20), CPU: "100000 100000", Pids: "512"}
	if l.Memory != want.Memory || l.CPU != want.CPU || l.Pids != want.Pids {
		t.Errorf("limits in force on the QEMU of %s: memory %s, cpu %s, pids %s; want %s, %s, %s",
			id, l.Memory, l.CPU, l.Pids, want.Memory, want.CPU, want.Pids)
	}
	dirs := vmCgroups(t, sessions, id)
	for ctrl, dir := range l.Dirs {
		if !slices.Contains(dirs, dir) {
			t.Errorf("the QEMU of %s is in %s cgroup %s, not one of its own (%v)", id, ctrl, dir, dirs)
		}
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("cgroup %s of the running %s: %v", dir, id, err)
		}
	}
}
