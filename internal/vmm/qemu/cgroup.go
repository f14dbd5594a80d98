package qemu

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/vmm"
)

// Each VM's QEMU process runs in cgroups of its own, named for the VM (a
// claimed spare keeps its spare's name), under a "cove" subtree:
//
//   - cgroup v1 (a tmpfs at the root with one hierarchy per controller):
//     ROOT/memory/cove/ID (memory.limit_in_bytes), ROOT/cpu/cove/ID
//     (cpu.cfs_quota_us) and, where the pids controller is mounted,
//     ROOT/pids/cove/ID (pids.max).
//   - cgroup v2 (the root is a cgroup2 file system, or a directory in
//     one, such as a systemd unit's delegated cgroup): ROOT/cove/ID with
//     memory.max, cpu.max and pids.max. The memory, cpu and pids
//     controllers must be available in ROOT (cgroup.controllers); the
//     driver enables them for ROOT's and ROOT/cove's children
//     (cgroup.subtree_control), which needs ROOT to hold no process of its
//     own unless it is the hierarchy's root.
//
// Which one is told by the file system type of the root, at New.

// cgroupSubtree is the directory, in each hierarchy, of the VMs' cgroups.
const cgroupSubtree = "cove"

// pidsMax bounds the tasks (threads) of one QEMU process: vCPUs, I/O
// workers (at most 64 in QEMU's pool), RCU and the main loop need far
// fewer.
const pidsMax = 512

// cgroups places QEMU processes in per-VM cgroups with limits.
type cgroups struct {
	v2    bool
	root  string
	ctrls []string // the controllers that limit: "memory", "cpu", "pids"
	tag   string   // Config.CgroupTag: a VM's cgroup is "TAG.ID", or "ID" when empty
}

// CgroupTag is the tag of the cgroups of the VMs of a server whose data
// directory is home (Config.CgroupTag): 8 hex digits of the SHA-256 of its
// absolute path, so that servers of different homes on one host never
// sweep each other's cgroups.
func CgroupTag(home string) string {
	if abs, err := filepath.Abs(home); err == nil {
		home = abs
	}
	sum := sha256.Sum256([]byte(home))
	return hex.EncodeToString(sum[:4])
}

// CgroupName is the name of the cgroup (under the cove subtree) of VM id
// of the server whose data directory is home.
func CgroupName(home, id string) string { return taggedName(CgroupTag(home), id) }

// CgroupID is the VM id of the cgroup named name, when it belongs to the
// server whose data directory is home.
func CgroupID(home, name string) (id string, ok bool) {
	return strings.CutPrefix(name, CgroupTag(home)+".")
}

// taggedName is the cgroup name of VM id under tag ("" for none).
func taggedName(tag, id string) string {
	if tag == "" {
		return id
	}
	return tag + "." + id
}

// cgroupName is the name of VM id's cgroup.
func (cg *cgroups) cgroupName(id string) string { return taggedName(cg.tag, id) }

// wantCtrls are the controllers VMs are limited by; on v1, pids is used
// where mounted but not required.
var wantCtrls = []string{"memory", "cpu", "pids"}

// detectCgroups finds which hierarchy root is, makes the cove subtree and
// enables the controllers it can. It returns what it set up (nil when
// nothing), and an error naming each limit that cannot be applied and why.
func detectCgroups(root string) (*cgroups, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return nil, fmt.Errorf("cgroup root %s: %w", root, err)
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return detectV2(root)
	}
	return detectV1(root)
}

func detectV1(root string) (*cgroups, error) {
	cg := &cgroups{root: root}
	var problems []string
	for _, ctrl := range wantCtrls {
		dir := filepath.Join(root, ctrl)
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			if ctrl != "pids" {
				problems = append(problems, fmt.Sprintf("%s: no cgroup v1 %s hierarchy mounted there, and %s is not a cgroup v2 file system", dir, ctrl, root))
			}
			continue
		}
		if err := os.MkdirAll(filepath.Join(dir, cgroupSubtree), 0o755); err != nil {
			problems = append(problems, fmt.Sprintf("cgroup v1 %s: %v", ctrl, err))
			continue
		}
		cg.ctrls = append(cg.ctrls, ctrl)
	}
	if len(cg.ctrls) == 0 {
		cg = nil
	}
	if len(problems) > 0 {
		return cg, errors.New(strings.Join(problems, "; "))
	}
	return cg, nil
}

func detectV2(root string) (*cgroups, error) {
	b, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("cgroup v2 at %s: %w", root, err)
	}
	avail := strings.Fields(string(b))
	removeV1Leftovers(root)
	sub := filepath.Join(root, cgroupSubtree)
	if err := os.MkdirAll(sub, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup v2 at %s: %w", root, err)
	}
	cg := &cgroups{v2: true, root: root}
	var problems, missing []string
	for _, ctrl := range wantCtrls {
		if !slices.Contains(avail, ctrl) {
			missing = append(missing, ctrl)
			continue
		}
		var err error
		for _, dir := range []string{root, sub} {
			if err = os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+ctrl), 0o644); err != nil {
				err = fmt.Errorf("enable %s in %s/cgroup.subtree_control: %w", ctrl, dir, err)
				if errors.Is(err, unix.EBUSY) {
					err = fmt.Errorf("%w (the cgroup holds processes: use a cgroup with none as the cgroup root)", err)
				}
				break
			}
		}
		if err != nil {
			problems = append(problems, "cgroup v2: "+err.Error())
			continue
		}
		cg.ctrls = append(cg.ctrls, ctrl)
	}
	if len(missing) > 0 {
		problems = append(problems, fmt.Sprintf("cgroup v2 at %s: controllers %s not available (cgroup.controllers: %q): bound to a cgroup v1 hierarchy, or not delegated to this cgroup",
			root, strings.Join(missing, ", "), strings.Join(avail, " ")))
	}
	if len(problems) > 0 {
		return cg, errors.New(strings.Join(problems, "; "))
	}
	return cg, nil
}

// removeV1Leftovers removes the empty cgroups that drivers which took
// every hierarchy for v1 made in a v2 one: ROOT/memory/cove/ID,
// ROOT/cpu/cove/ID. Any with a process in it stays.
func removeV1Leftovers(root string) {
	for _, ctrl := range []string{"memory", "cpu"} {
		sub := filepath.Join(root, ctrl, cgroupSubtree)
		ents, _ := os.ReadDir(sub)
		for _, e := range ents {
			if e.IsDir() {
				_ = os.Remove(filepath.Join(sub, e.Name()))
			}
		}
		_ = os.Remove(sub)
		_ = os.Remove(filepath.Join(root, ctrl))
	}
}

// dirs are the cgroup directories of the VM cgroup name.
func (cg *cgroups) dirs(id string) []string {
	name := cg.cgroupName(id)
	if cg.v2 {
		return []string{filepath.Join(cg.root, cgroupSubtree, name)}
	}
	var out []string
	for _, ctrl := range cg.ctrls {
		out = append(out, filepath.Join(cg.root, ctrl, cgroupSubtree, name))
	}
	return out
}

// limitFiles are the files that hold spec's limits, by controller.
func (cg *cgroups) limitFiles(spec vmm.Spec) map[string][2]string {
	mem := strconv.FormatInt(memLimit(spec.MemoryMiB), 10)
	quota := spec.CPUs * 100000
	if cg.v2 {
		return map[string][2]string{
			"memory": {"memory.max", mem},
			"cpu":    {"cpu.max", fmt.Sprintf("%d 100000", quota)},
			"pids":   {"pids.max", strconv.Itoa(pidsMax)},
		}
	}
	return map[string][2]string{
		"memory": {"memory.limit_in_bytes", mem},
		"cpu":    {"cpu.cfs_quota_us", strconv.Itoa(quota)},
		"pids":   {"pids.max", strconv.Itoa(pidsMax)},
	}
}

// memLimit is the memory limit of a VM of memMiB: its RAM, TCG's
// translation cache and QEMU's own.
func memLimit(memMiB int) int64 { return int64(memMiB+tbSizeMiB+256) << 20 }

// place makes the VM's cgroups named name with spec's limits and moves pid
// into them.
func (cg *cgroups) place(name string, spec vmm.Spec, pid int) error {
	files := cg.limitFiles(spec)
	set := func(dir string, ctrls []string) error {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, ctrl := range ctrls {
			f := files[ctrl]
			if err := os.WriteFile(filepath.Join(dir, f[0]), []byte(f[1]), 0o644); err != nil {
				return fmt.Errorf("%s: %w", f[0], err)
			}
		}
		return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
	}
	if cg.v2 {
		if err := set(cg.dirs(name)[0], cg.ctrls); err != nil {
			return fmt.Errorf("cgroup v2 %s: %w", name, err)
		}
		return nil
	}
	for _, ctrl := range cg.ctrls {
		if err := set(filepath.Join(cg.root, ctrl, cgroupSubtree, cg.cgroupName(name)), []string{ctrl}); err != nil {
			return fmt.Errorf("cgroup v1 %s %s: %w", ctrl, name, err)
		}
	}
	return nil
}

// remove removes the VM's cgroups (they must hold no process).
func (cg *cgroups) remove(name string) {
	for _, dir := range cg.dirs(name) {
		_ = os.Remove(dir)
	}
}

// clean removes the VM cgroups whose name keep reports false; those with
// processes in them stay (rmdir fails).
func (cg *cgroups) clean(keep func(name string) bool) {
	parents := []string{filepath.Join(cg.root, cgroupSubtree)}
	if !cg.v2 {
		parents = parents[:0]
		for _, ctrl := range cg.ctrls {
			parents = append(parents, filepath.Join(cg.root, ctrl, cgroupSubtree))
		}
	}
	for _, p := range parents {
		ents, _ := os.ReadDir(p)
		for _, e := range ents {
			id := e.Name()
			if cg.tag != "" {
				var ours bool
				if id, ours = strings.CutPrefix(id, cg.tag+"."); !ours {
					continue // another home's VM
				}
			}
			if e.IsDir() && !keep(id) {
				_ = os.Remove(filepath.Join(p, e.Name()))
			}
		}
	}
}

// describe says what limits VMs get, for the start log.
func (cg *cgroups) describe() string {
	v := "v1"
	if cg.v2 {
		v = "v2"
	}
	return fmt.Sprintf("cgroup %s at %s: %s", v, cg.root, strings.Join(cg.ctrls, ", "))
}
