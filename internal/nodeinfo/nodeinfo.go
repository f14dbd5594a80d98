// Package nodeinfo probes what a VM host offers: its CPUs, memory, free
// disk, accelerator, CPU model and flags, and the QEMU and kernel
// versions a snapshot's compatibility depends on. The embedded node of
// `cove server` and the `cove node` agent both report it.
package nodeinfo

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/store"
)

// QEMUBinary is the emulator whose version Probe reports.
const QEMUBinary = "qemu-system-x86_64"

// Probe reports the host's capacity: vCPUs (the CPUs this process may
// use), MemTotal from /proc/meminfo, the bytes free under home (which
// must exist), accel as given ("kvm" or "tcg": the caller's driver knows
// which it uses), the CPU model and flags from /proc/cpuinfo, the first
// line of `qemu-system-x86_64 --version` and the kernel release (uname
// -r). A missing QEMU leaves QEMUVersion empty rather than failing: the
// node then refuses VMs on its own, with its driver's error.
func Probe(ctx context.Context, home, accel string) (store.NodeCapacity, error) {
	c := store.NodeCapacity{VCPUs: runtime.NumCPU(), Accel: accel}
	var err error
	if c.MemoryMiB, err = memTotalMiB(); err != nil {
		return store.NodeCapacity{}, fmt.Errorf("nodeinfo: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(home, &st); err != nil {
		return store.NodeCapacity{}, fmt.Errorf("nodeinfo: free disk under %s: %w", home, err)
	}
	c.DiskBytes = int64(st.Bavail) * st.Bsize
	if c.CPUModel, c.CPUFlags, err = cpuInfo(); err != nil {
		return store.NodeCapacity{}, fmt.Errorf("nodeinfo: %w", err)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return store.NodeCapacity{}, fmt.Errorf("nodeinfo: uname: %w", err)
	}
	c.KernelVersion = unix.ByteSliceToString(uts.Release[:])
	if ctx.Err() != nil {
		return store.NodeCapacity{}, fmt.Errorf("nodeinfo: %w", ctx.Err())
	}
	c.QEMUVersion = qemuVersion(ctx)
	return c, nil
}

// memTotalMiB is MemTotal from /proc/meminfo, in MiB.
func memTotalMiB() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("read meminfo: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		rest, ok := strings.CutPrefix(line, "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		kib, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("meminfo: MemTotal %q: %w", f[0], err)
		}
		return kib / 1024, nil
	}
	return 0, fmt.Errorf("meminfo: no MemTotal line")
}

// cpuInfo is the "model name" and "flags" of the first CPU in
// /proc/cpuinfo; the flags sorted as the kernel lists them.
func cpuInfo() (model string, flags []string, err error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "", nil, fmt.Errorf("read cpuinfo: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "model name":
			if model == "" {
				model = strings.TrimSpace(v)
			}
		case "flags":
			if flags == nil {
				flags = strings.Fields(v)
			}
		}
		if model != "" && flags != nil {
			break
		}
	}
	if err := sc.Err(); err != nil {
		return "", nil, fmt.Errorf("read cpuinfo: %w", err)
	}
	return model, flags, nil
}

// qemuVersion is the first line of `qemu-system-x86_64 --version`, or ""
// if it cannot be run. Probe runs at every heartbeat: the answer is kept
// for as long as the binary found in PATH is the same file, unchanged (an
// upgrade replaces it), so a heartbeat starts no process.
func qemuVersion(ctx context.Context) string {
	path, err := exec.LookPath(QEMUBinary)
	if err != nil {
		return ""
	}
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	key := versionKey{path: path, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	versionCache.Lock()
	defer versionCache.Unlock()
	if v, ok := versionCache.m[key]; ok {
		return v
	}
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := bytes.Cut(out, []byte("\n"))
	v := strings.TrimSpace(string(line))
	versionCache.m = map[versionKey]string{key: v} // the newest binary only
	return v
}

// versionKey is a QEMU binary as it is on disk.
type versionKey struct {
	path        string
	size, mtime int64
}

// versionCache holds the version of the QEMU binary last asked.
var versionCache struct {
	sync.Mutex
	m map[versionKey]string
}
