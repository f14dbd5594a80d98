// Package qemutest reads back from the kernel the jail a process runs in:
// the cgroup limits in force on it and its credentials. Tests of the QEMU
// driver and of the session layer check with it that a running VM is
// limited, asking the kernel where its QEMU process is rather than trusting
// the paths the driver wrote to.
package qemutest

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// None is the value of a limit that is not set: the process's cgroup for
// that controller sets none, or no hierarchy holds the controller.
const None = "none"

// Limits are the limits of the cgroups a process is in, one per
// controller, in one form for cgroup v1 and v2.
type Limits struct {
	// Memory is the memory limit in bytes, or None.
	Memory string
	// CPU is "QUOTA PERIOD" in microseconds, or None.
	CPU string
	// Pids is the most tasks, or None.
	Pids string
	// Dirs are the process's cgroup directories by controller ("memory",
	// "cpu", "pids"), where a hierarchy holds the controller.
	Dirs map[string]string
	// V2 says, by controller, whether the cgroup v2 hierarchy holds it.
	V2 map[string]bool
}

// v1Unlimited is where cgroup v1 memory.limit_in_bytes starts meaning no
// limit (the kernel shows PAGE_COUNTER_MAX pages, rounded, in bytes).
const v1Unlimited = 1 << 62

// ReadLimits reads the limits in force on process pid: for each of the
// memory, cpu and pids controllers, the hierarchy that holds it (a cgroup
// v1 one, else the v2 one), the process's cgroup there (/proc/PID/cgroup),
// where that hierarchy is mounted (/proc/self/mountinfo) and its limit
// files.
func ReadLimits(pid int) (Limits, error) {
	l := Limits{Memory: None, CPU: None, Pids: None, Dirs: map[string]string{}, V2: map[string]bool{}}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return l, fmt.Errorf("qemutest: cgroups of %d: %w", pid, err)
	}
	mounts, err := cgroupMounts()
	if err != nil {
		return l, err
	}
	v1 := map[string]string{} // controller → the process's cgroup path in its v1 hierarchy
	v2 := ""                  // the process's cgroup path in the v2 hierarchy
	hasV2 := false
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			v2, hasV2 = f[2], true
			continue
		}
		for _, ctrl := range strings.Split(f[1], ",") {
			v1[ctrl] = f[2]
		}
	}
	for _, ctrl := range []string{"memory", "cpu", "pids"} {
		if path, ok := v1[ctrl]; ok {
			m, ok := mounts.find(func(m mount) bool { return !m.v2 && slices.Contains(m.opts, ctrl) }, path)
			if !ok {
				return l, fmt.Errorf("qemutest: the cgroup v1 %s hierarchy of %d is mounted nowhere", ctrl, pid)
			}
			l.Dirs[ctrl] = m
			continue
		}
		if !hasV2 {
			continue
		}
		m, ok := mounts.find(func(m mount) bool { return m.v2 }, v2)
		if !ok {
			return l, fmt.Errorf("qemutest: the cgroup v2 hierarchy of %d is mounted nowhere", pid)
		}
		// A v2 cgroup has a controller's files only where its parent
		// enabled it for its children.
		avail, err := os.ReadFile(filepath.Join(m, "cgroup.controllers"))
		if err != nil {
			return l, fmt.Errorf("qemutest: %w", err)
		}
		if slices.Contains(strings.Fields(string(avail)), ctrl) {
			l.Dirs[ctrl] = m
			l.V2[ctrl] = true
		}
	}
	if dir, ok := l.Dirs["memory"]; ok {
		if l.Memory, err = readMemory(dir, l.V2["memory"]); err != nil {
			return l, err
		}
	}
	if dir, ok := l.Dirs["cpu"]; ok {
		if l.CPU, err = readCPU(dir, l.V2["cpu"]); err != nil {
			return l, err
		}
	}
	if dir, ok := l.Dirs["pids"]; ok {
		v, err := readTrim(filepath.Join(dir, "pids.max"))
		if err != nil {
			return l, err
		}
		if v != "max" {
			l.Pids = v
		}
	}
	return l, nil
}

func readMemory(dir string, v2 bool) (string, error) {
	if v2 {
		v, err := readTrim(filepath.Join(dir, "memory.max"))
		if err != nil || v == "max" {
			return None, err
		}
		return v, nil
	}
	v, err := readTrim(filepath.Join(dir, "memory.limit_in_bytes"))
	if err != nil || v == "max" {
		return None, err
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= v1Unlimited {
		return None, nil
	}
	return v, nil
}

func readCPU(dir string, v2 bool) (string, error) {
	if v2 {
		v, err := readTrim(filepath.Join(dir, "cpu.max"))
		if err != nil || strings.HasPrefix(v, "max") {
			return None, err
		}
		return v, nil
	}
	quota, err := readTrim(filepath.Join(dir, "cpu.cfs_quota_us"))
	if err != nil || quota == "-1" || quota == "max" {
		return None, err
	}
	period, err := readTrim(filepath.Join(dir, "cpu.cfs_period_us"))
	if err != nil {
		return None, err
	}
	return quota + " " + period, nil
}

// readTrim reads a limit file. A hierarchy's root cgroup has no limit
// files (pids.max, memory.max, …): it reads as "max".
func readTrim(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "max", nil
	}
	if err != nil {
		return "", fmt.Errorf("qemutest: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// mount is a cgroup file system mounted in this process's mount
// namespace.
type mount struct {
	v2    bool
	root  string   // the hierarchy's directory mounted (mountinfo field 4)
	point string   // where
	opts  []string // super options: the v1 controllers, among others
}

type mounts []mount

// cgroupMounts lists the cgroup file systems of /proc/self/mountinfo.
func cgroupMounts() (mounts, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("qemutest: %w", err)
	}
	defer f.Close()
	var out mounts
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL…] - TYPE SOURCE SUPER
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 3 || (b[0] != "cgroup" && b[0] != "cgroup2") {
			continue
		}
		out = append(out, mount{v2: b[0] == "cgroup2", root: unescape(a[3]), point: unescape(a[4]), opts: strings.Split(b[2], ",")})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("qemutest: mountinfo: %w", err)
	}
	return out, nil
}

// find returns the directory, through a mount that match accepts, of the
// cgroup at path in that hierarchy.
func (ms mounts) find(match func(mount) bool, path string) (string, bool) {
	for _, m := range ms {
		if !match(m) {
			continue
		}
		rel, err := filepath.Rel(m.root, path)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			continue
		}
		return filepath.Join(m.point, rel), true
	}
	return "", false
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				sb.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		sb.WriteByte(s[i])
	}
	return sb.String()
}

// Creds are a process's credentials, from /proc/PID/status.
type Creds struct {
	UIDs, GIDs [4]int // real, effective, saved, file system
	Groups     []int  // supplementary groups
	CapEff     string // effective capabilities, hex
}

// ReadCreds reads process pid's credentials.
func ReadCreds(pid int) (Creds, error) {
	var c Creds
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return c, fmt.Errorf("qemutest: credentials of %d: %w", pid, err)
	}
	seen := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		switch k {
		case "Uid", "Gid":
			ids := &c.UIDs
			if k == "Gid" {
				ids = &c.GIDs
			}
			if len(f) != 4 {
				return c, fmt.Errorf("qemutest: %d: bad %s line %q", pid, k, line)
			}
			for i := range f {
				if ids[i], err = strconv.Atoi(f[i]); err != nil {
					return c, fmt.Errorf("qemutest: %d: bad %s line %q", pid, k, line)
				}
			}
			seen++
		case "Groups":
			for _, g := range f {
				n, err := strconv.Atoi(g)
				if err != nil {
					return c, fmt.Errorf("qemutest: %d: bad Groups line %q", pid, line)
				}
				c.Groups = append(c.Groups, n)
			}
		case "CapEff":
			if len(f) == 1 {
				c.CapEff = f[0]
				seen++
			}
		}
	}
	if seen != 3 {
		return c, errors.New("qemutest: /proc/" + strconv.Itoa(pid) + "/status lacks Uid, Gid or CapEff")
	}
	return c, nil
}
