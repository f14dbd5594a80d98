package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu/qemutest"
)

// GuestCgroupsEnv names the cgroup v2 roots this test binary checks the
// driver's limits in, when it runs inside a guest (see TestCgroupV2): the
// guest's kernel gives a cgroup v2 hierarchy every controller, which a
// cgroup v1 host such as this one cannot.
const GuestCgroupsEnv = "COVE_TEST_GUEST_CGROUPS"

func TestMain(m *testing.M) {
	if roots := os.Getenv(GuestCgroupsEnv); roots != "" {
		os.Exit(guestCgroups(strings.Fields(roots)))
	}
	os.Exit(m.Run())
}

// GuestCgroupResult is what guestCgroups found in one cgroup root.
type GuestCgroupResult struct {
	Root    string
	Setup   string // the driver's refusal, or ""
	Where   string // the driver's description of its limits
	Limit   string // the error of placing the process, or ""
	Limits  qemutest.Limits
	Read    string // the error of reading the limits back, or ""
	Removed bool   // the process's cgroup went once it ended
}

// guestCgroups runs, in a guest, what the driver does for a VM's QEMU
// process in each cgroup root, to a sleep process instead (there is no
// QEMU in the guest): it sets the cgroups up as New does (no limit may be
// missing: AllowNoCgroups is off), places the process with a 256 MiB, 2
// CPU VM's limits, reads the limits in force on it back through the
// kernel, ends it and removes its cgroup. It writes one JSON result per
// root.
func guestCgroups(roots []string) int {
	enc := json.NewEncoder(os.Stdout)
	for _, root := range roots {
		res := GuestCgroupResult{Root: root}
		d := &Driver{cfg: Config{CgroupRoot: root, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}}
		if err := d.setupCgroups(); err != nil {
			res.Setup = err.Error()
		}
		if d.cgroups != nil {
			res.Where = d.cgroups.describe()
			guestPlace(d, &res)
		}
		if err := enc.Encode(res); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

// guestPlace limits a sleep process as d limits a VM's QEMU and records
// what it finds in res.
func guestPlace(d *Driver, res *GuestCgroupResult) {
	cmd := exec.Command("/bin/sleep", "600")
	if err := cmd.Start(); err != nil {
		res.Limit = err.Error()
		return
	}
	spec := vmm.Spec{ID: "g-guest", MemoryMiB: 256, CPUs: 2}
	if err := d.limit(spec, cmd.Process.Pid); err != nil {
		res.Limit = err.Error()
	}
	l, err := qemutest.ReadLimits(cmd.Process.Pid)
	res.Limits = l
	if err != nil {
		res.Read = err.Error()
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	d.unlimit(spec.ID)
	res.Removed = true
	for _, dir := range d.cgroups.dirs(spec.ID) {
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			res.Removed = false
		}
	}
}
