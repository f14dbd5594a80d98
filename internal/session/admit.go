package session

import (
	"bufio"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/cove-dev/cove/api"
)

// Admission control: a VM is started (created, cloned, woken, or restored
// into a warm pool) only if the host can hold it beside the VMs already
// running here.
//
//   - A request larger than the host itself (more memory than the host
//     has, more vCPUs than it has CPUs) is invalid: 400.
//   - A request that does not fit now is refused with 503 and what is
//     left: memory is counted as each VM's guest memory plus
//     vmOverheadMiB for QEMU, against the host's memory times
//     MemoryOvercommit; vCPUs against the host's CPUs times CPUOvercommit.
//
// What counts: every VM this manager holds (running sessions, sessions
// being parked until their QEMU is gone, warm pool clones) and the starts
// under way. Parked sessions hold no memory. Spare QEMU processes are not
// counted: they hold no guest memory until a wake claims one, and that
// wake is counted. Template builds are not admitted: they are the
// operator's own.
//
// A wake is admitted like a create: a session parked while the host
// filled up stays parked (its snapshot intact) and the wake answers 503.
// An event for it stays pending and is delivered once there is room: the
// deliverer tries again every second.

// Admission sets how much of the host sessions may take. Its zero value
// is the defaults, over the host's own memory and CPUs.
type Admission struct {
	// MemoryOvercommit is how many MiB of VM memory one MiB of host memory
	// may back; 0 means DefaultMemoryOvercommit. Guest RAM is a shared
	// file mapping the host can write back under pressure, and idle
	// guests touch little of it.
	MemoryOvercommit float64
	// CPUOvercommit is how many vCPUs one host CPU may back; 0 means
	// DefaultCPUOvercommit. An idle guest's vCPUs sleep, and each VM's
	// cgroup bounds what it takes.
	CPUOvercommit float64
	// HostMemoryMiB and HostCPUs are the host's size; 0: its memory
	// (MemTotal) and CPUs.
	HostMemoryMiB int
	HostCPUs      int
}

// Default overcommit ratios, for agents that are mostly idle.
const (
	DefaultMemoryOvercommit = 1.5
	DefaultCPUOvercommit    = 16
)

// vmOverheadMiB is what one VM is charged beyond its guest memory: QEMU
// itself, and TCG's translation cache as an idle guest fills it.
const vmOverheadMiB = 128

// admitted is the resources of starts under way, reserved until their VM
// is counted among the manager's.
type admitted struct {
	mu     sync.Mutex
	memMiB int // guarded by mu
	cpus   int // guarded by mu
}

// hostFullError is a refusal for want of room now (503); the deliverer
// retries a wake refused so.
type hostFullError struct{ err *api.Error }

func (e *hostFullError) Error() string { return e.err.Message }
func (e *hostFullError) Unwrap() error { return e.err }

// admit reserves room for a VM of memMiB and cpus for op ("create",
// "wake"), or says why there is none. The caller calls release once the
// VM is among the manager's, or did not start.
func (m *Manager) admit(op string, memMiB, cpus int) (release func(), err error) {
	a := m.cfg.Admission
	hostMem, hostCPUs := a.HostMemoryMiB, a.HostCPUs
	if hostMem <= 0 {
		hostMem = hostMemoryMiB()
	}
	if hostCPUs <= 0 {
		hostCPUs = runtime.NumCPU()
	}
	memRatio, cpuRatio := a.MemoryOvercommit, a.CPUOvercommit
	if memRatio <= 0 {
		memRatio = DefaultMemoryOvercommit
	}
	if cpuRatio <= 0 {
		cpuRatio = DefaultCPUOvercommit
	}
	need := memMiB + vmOverheadMiB
	if hostMem > 0 && need > hostMem {
		return nil, api.Errorf(api.CodeInvalid, "memory_mib %d: more than this host holds (%d MiB, of which each VM's QEMU takes %d)", memMiB, hostMem, vmOverheadMiB)
	}
	if cpus > hostCPUs {
		return nil, api.Errorf(api.CodeInvalid, "cpus %d: more than this host has (%d)", cpus, hostCPUs)
	}
	m.admitted.mu.Lock()
	defer m.admitted.mu.Unlock()
	usedMem, usedCPUs := m.vmsHeld()
	usedMem += m.admitted.memMiB
	usedCPUs += m.admitted.cpus
	if capMem := int(float64(hostMem) * memRatio); hostMem > 0 && usedMem+need > capMem {
		return nil, &hostFullError{api.Errorf(api.CodeUnavailable,
			"%s refused: host has %d MiB left of %d (memory overcommit %g), the session needs %d (%d of memory, %d for QEMU)",
			op, max(capMem-usedMem, 0), capMem, memRatio, need, memMiB, vmOverheadMiB)}
	}
	if capCPUs := int(float64(hostCPUs) * cpuRatio); usedCPUs+cpus > capCPUs {
		return nil, &hostFullError{api.Errorf(api.CodeUnavailable,
			"%s refused: host has %d vCPUs left of %d (%d CPUs, cpu overcommit %g), the session needs %d",
			op, max(capCPUs-usedCPUs, 0), capCPUs, hostCPUs, cpuRatio, cpus)}
	}
	m.admitted.memMiB += need
	m.admitted.cpus += cpus
	var once sync.Once
	return func() {
		once.Do(func() {
			m.admitted.mu.Lock()
			m.admitted.memMiB -= need
			m.admitted.cpus -= cpus
			m.admitted.mu.Unlock()
		})
	}, nil
}

// vmsHeld sums the memory (with overhead) and vCPUs of the VMs the manager
// holds: live sessions and warm pool clones.
func (m *Manager) vmsHeld() (memMiB, cpus int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.live {
		memMiB += l.mach.MemoryMiB + vmOverheadMiB
		cpus += l.mach.CPUs
	}
	for _, p := range m.pools {
		for _, c := range p.ready {
			memMiB += c.l.mach.MemoryMiB + vmOverheadMiB
			cpus += c.l.mach.CPUs
		}
	}
	return memMiB, cpus
}

// hostMemoryMiB is MemTotal from /proc/meminfo, or 0.
func hostMemoryMiB() int {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err == nil {
				return kb >> 10
			}
		}
	}
	return 0
}

// isHostFull reports whether err is a refusal for want of room now.
func isHostFull(err error) bool {
	var h *hostFullError
	return errors.As(err, &h)
}
