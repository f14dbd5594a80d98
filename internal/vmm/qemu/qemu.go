// Package qemu is the vmm.Driver for QEMU's microvm machine: it builds the
// command line, runs QEMU jailed (seccomp sandbox, unprivileged user,
// cgroup limits, private directory), drives it over QMP and re-adopts QEMU
// processes that outlived the server.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/qmp"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qcow2"
)

// Files in a VM's directory.
const (
	QMPSocket   = "qmp.sock"
	AgentSocket = "agent.sock"
	ConsoleLog  = "console.log"
	QEMULog     = "qemu.log"
	MemFile     = vmm.MemFile
)

// Ids on QEMU's command line and in QMP.
const (
	agentChardev = "agent" // the agent channel's chardev
	memBackend   = "mem"   // the guest RAM's memory backend
	diskNode     = "root"  // the root disk's block node
)

// tbSizeMiB bounds TCG's translation cache per VM (QEMU's default is 1 GiB).
const tbSizeMiB = 256

// Config configures the driver.
type Config struct {
	// Binary is the QEMU executable; default qemu-system-x86_64.
	Binary string
	// Accel is "auto" (default), "kvm" or "tcg".
	Accel string
	// User runs QEMU as this unprivileged user when the server is root.
	// A server that is not root runs QEMU as itself.
	User string
	// AllowRootVMs lets a server that is root run QEMU as root when User
	// is empty, missing or root itself. Without it New fails then: a
	// guest that escaped QEMU would hold the host.
	AllowRootVMs bool
	// CgroupRoot is where each VM's cgroup limits are set (see cgroup.go):
	// "/sys/fs/cgroup" on cgroup v1 hosts (one hierarchy per controller)
	// and cgroup v2 ones, or a delegated directory in a cgroup v2
	// hierarchy. Empty means no cgroup limits, said once by New.
	CgroupRoot string
	// AllowNoCgroups lets VMs run without the limits the cgroup root
	// cannot apply (said once by New). Without it, New fails then, and so
	// does a start whose limits cannot be set.
	AllowNoCgroups bool
	// CgroupTag, when set, names each VM's cgroup "TAG.ID" and makes
	// Sweep remove only the cgroups with this tag: a server passes
	// CgroupTag(home). Empty: bare ids, and Sweep removes every empty VM
	// cgroup on the host.
	CgroupTag string
	// ConsoleMaxBytes bounds each of a VM's two console files (see
	// console.go); 0 means DefaultConsoleMaxBytes.
	ConsoleMaxBytes int64
	// GuestCmdline is added to the kernel command line of every guest
	// booted (before a Spec's own Cmdline): "loglevel=7 cove.debug", say,
	// puts the kernel's messages and the agent's boot progress marks on
	// each guest's console. A restore keeps the command line of its boot.
	GuestCmdline string
	// SpareDir is where spare QEMU processes wait to be claimed by a
	// restore (see Prewarm); it must be on the VMs' file system. Empty
	// means no spares.
	SpareDir string
	// Spares is how many spares are kept ready for each machine shape
	// restored lately; 0 means 1.
	Spares int
	Log    *slog.Logger
	// CrashPoint, if set, is called at each named step of a save and a
	// restore (see crashPoint): tests of crash safety kill the process
	// there. Never set in production.
	CrashPoint func(name string)
}

// Driver is the QEMU vmm.Driver.
type Driver struct {
	cfg      Config
	accel    string
	uid, gid int      // -1 when not changing user
	cgroups  *cgroups // nil: no cgroup limits
	tscKHz   int      // host TSC rate passed to TCG guests; 0: unknown
	spares   *spares  // nil without Config.SpareDir
}

// New returns a driver, choosing the accelerator (see DetectAccel) and
// checking the jail's parts. It logs what it chose and why.
func New(cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if _, err := exec.LookPath(cfg.Binary); err != nil {
		return nil, fmt.Errorf("qemu: %s not found (install qemu-system-x86): %w", cfg.Binary, err)
	}
	accel, reason, err := DetectAccel(cfg.Accel)
	if err != nil {
		return nil, err
	}
	cfg.Log.Info("qemu accelerator", "accel", accel, "why", reason)
	d := &Driver{cfg: cfg, accel: accel, uid: -1, gid: -1}
	if accel == "tcg" {
		d.tscKHz = hostTSCkHz()
		if d.tscKHz == 0 {
			cfg.Log.Warn("host TSC rate unknown (no 'cpu MHz' in /proc/cpuinfo): guests boot slowly under TCG")
		}
	}
	if os.Geteuid() == 0 {
		if err := d.setUser(); err != nil {
			return nil, err
		}
	}
	if err := d.setupCgroups(); err != nil {
		return nil, err
	}
	if cfg.SpareDir != "" {
		if d.cfg.Spares <= 0 {
			d.cfg.Spares = 1
		}
		if err := os.MkdirAll(cfg.SpareDir, 0o711); err != nil {
			return nil, fmt.Errorf("qemu: spare dir: %w", err)
		}
		d.cleanSpares()
		d.spares = &spares{idle: map[shape][]*VM{}, starting: map[shape]int{}, failures: map[shape]int{}}
		d.spares.stop, d.spares.cancel = context.WithCancel(context.Background())
	}
	return d, nil
}

// setUser finds the unprivileged user a root server runs QEMU as. It fails
// closed: with no such user (none named, none of that name, or one that is
// root) it refuses, unless Config.AllowRootVMs, and says how to go on.
func (d *Driver) setUser() error {
	name := d.cfg.User
	var why string
	if name == "" {
		why = "no unprivileged user is named for it"
		name = "cove-vm"
	} else if u, err := user.Lookup(name); err != nil {
		why = fmt.Sprintf("user %s: %v", name, err)
		if _, ok := errors.AsType[user.UnknownUserError](err); ok {
			why = fmt.Sprintf("user %s does not exist", name)
		}
	} else {
		uid, uerr := strconv.Atoi(u.Uid)
		gid, gerr := strconv.Atoi(u.Gid)
		switch {
		case uerr != nil || gerr != nil:
			why = fmt.Sprintf("user %s has uid %q and gid %q, not numbers", name, u.Uid, u.Gid)
		case uid == 0:
			why = fmt.Sprintf("user %s is root (uid 0)", name)
		default:
			d.uid, d.gid = uid, gid
			return nil
		}
	}
	if d.cfg.AllowRootVMs {
		d.cfg.Log.Warn("qemu runs VMs as root (--allow-root-vms): a guest that escapes QEMU holds the host", "why", why)
		return nil
	}
	return fmt.Errorf("qemu: refusing to run VMs as root: %s; create the user ('make deps' does, or: useradd --system --no-create-home --shell /usr/sbin/nologin %s), "+
		"name another unprivileged user with --qemu-user, or start the server with --allow-root-vms to run QEMU as root", why, name)
}

// crashPoint marks a named step for Config.CrashPoint.
func (d *Driver) crashPoint(name string) {
	if d.cfg.CrashPoint != nil {
		d.cfg.CrashPoint(name)
	}
}

// Accel returns "kvm" or "tcg".
func (d *Driver) Accel() string { return d.accel }

// Disks makes the VMs' qcow2 disk files with qemu-img.
func (d *Driver) Disks() vmm.Disks { return qcow2.Disks{} }

// DetectAccel resolves "auto" (or "") to kvm or tcg and says why. KVM is
// used only where it is usable: /dev/kvm must open, and not be provided by
// PVM (kvm_pvm), under which a stock kernel never finishes booting.
func DetectAccel(requested string) (accel, reason string, err error) {
	switch requested {
	case "kvm":
		return "kvm", "requested", nil
	case "tcg":
		return "tcg", "requested", nil
	case "", "auto":
	default:
		return "", "", fmt.Errorf("qemu: unknown accelerator %q (want auto, kvm or tcg)", requested)
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return "tcg", "/dev/kvm is provided by PVM (kvm_pvm), which does not run a stock guest kernel", nil
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg", fmt.Sprintf("/dev/kvm not usable: %v", err), nil
	}
	f.Close()
	return "kvm", "/dev/kvm is usable", nil
}

// Args returns QEMU's arguments for spec (without the binary).
func (d *Driver) Args(spec vmm.Spec) []string {
	return args(d.accel, d.tscKHz, spec)
}

func args(accel string, tscKHz int, spec vmm.Spec) []string {
	return machineArgs(accel, tscKHz, spec, true)
}

// machineArgs is QEMU's command line for spec; without guest, the machine
// lacks its RAM, kernel and disk (a spare adds them by QMP when claimed).
func machineArgs(accel string, tscKHz int, spec vmm.Spec, guest bool) []string {
	path := func(name string) string { return filepath.Join(spec.Dir, name) }
	// No crypto self-tests, CPU mitigations, audit or watchdog: each costs
	// boot time (most under emulation) and the guest is a sandbox anyway.
	// No pressure-stall accounting, and of the security modules only
	// Landlock (programs sandbox themselves with it) and Yama: the others
	// (AppArmor, TOMOYO, integrity…) have no policy in a guest, yet run
	// hooks on every exec, and under emulation every kernel path a woken
	// guest runs is translated afresh (about 1k fewer blocks from a wake
	// to an exec's result, with tsc=reliable below).
	cmdline := "console=ttyS0 quiet loglevel=4 panic=-1 pci=off random.trust_cpu=on" +
		" cryptomgr.notests mitigations=off audit=0 nowatchdog nokaslr" +
		" psi=0 lsm=landlock,yama" +
		// Unknown key=value parameters become init's environment: the
		// agent runs without async preemption, which translates fewer
		// blocks after a restore.
		" GODEBUG=asyncpreemptoff=1"
	cpu := "host"
	accelArg := "kvm"
	if accel == "tcg" {
		// Skip the calibration loops that take seconds under emulation.
		// Under TCG the guest's TSC ticks at the host's rate, so tell the
		// kernel that rate: without tsc_early_khz the microvm guest (no
		// PIT to calibrate against) stalls at boot; with a wrong guess
		// its clock runs at the wrong speed (2 GHz on a 2.6 GHz host made
		// sleeps end 1.3x early).
		// TCG's TSC is the host's clock: no watchdog need check it
		// against another clock source (a timer every half second).
		cmdline += " lpj=4000000 no_timer_check tsc=reliable"
		if tscKHz > 0 {
			cmdline += fmt.Sprintf(" tsc_early_khz=%d", tscKHz)
		}
		// Without ERMS the guest kernel copies and clears with rep
		// movsq/stosq instead of rep movsb/stosb: TCG runs a rep
		// string instruction one iteration per translated-block
		// execution, so byte steps cost 8x (16 MiB through a pipe in
		// the guest: 148 → 62 ms). ERMS is only a speed hint; a
		// snapshot of either kind restores on the other.
		cpu = "max,erms=off"
		accelArg = fmt.Sprintf("tcg,tb-size=%d", tbSizeMiB)
	}
	if spec.Cmdline != "" {
		cmdline += " " + spec.Cmdline
	}
	machine := "microvm,x-option-roms=off,rtc=on"
	if guest {
		machine += ",memory-backend=" + memBackend
	}
	a := []string{
		"-name", "cove-" + spec.ID + ",debug-threads=off",
		"-M", machine,
		"-accel", accelArg,
		"-cpu", cpu,
		"-smp", strconv.Itoa(spec.CPUs),
		"-m", strconv.Itoa(spec.MemoryMiB) + "M",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
	}
	if guest {
		a = append(a,
			"-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=on", memBackend, spec.MemoryMiB, path(MemFile)),
			"-kernel", spec.Kernel,
			"-initrd", spec.Initrd,
			"-append", cmdline,
			"-drive", "file="+spec.Disk+",if=none,id="+diskNode+",format=qcow2,discard=unmap,cache=writeback",
			"-device", "virtio-blk-device,drive="+diskNode)
	} else {
		// The disk node is added by QMP before the devices are made;
		// write-cache=on is what -drive's cache=writeback gives.
		a = append(a, "-device", "virtio-blk-device,drive="+diskNode+",write-cache=on")
	}
	return append(a,
		"-netdev", "user,id=net0,restrict=on",
		"-device", "virtio-net-device,netdev=net0",
		"-device", "virtio-rng-device",
		"-device", "virtio-serial-device,max_ports=4",
		// The kernel's console: errors and panics only (quiet), kept for
		// error messages about guests that crash or never answer. A
		// socket the driver reads into capped files (console.go).
		"-chardev", "socket,id=console,fd="+strconv.Itoa(consoleFD),
		"-serial", "chardev:console",
		"-chardev", "socket,id="+agentChardev+",path="+path(AgentSocket)+",server=on,wait=off",
		"-device", "virtserialport,chardev="+agentChardev+",name="+agentproto.PortName,
		"-qmp", "unix:"+path(QMPSocket)+",server=on,wait=off",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
	)
}

// hostTSCkHz is the host's TSC rate in kHz, from /proc/cpuinfo ("cpu
// MHz" is the TSC rate on CPUs with a constant TSC and in VMs), or 0.
func hostTSCkHz() int {
	tscOnce.Do(func() {
		b, err := os.ReadFile("/proc/cpuinfo")
		if err != nil {
			return
		}
		for _, l := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(l, ":")
			if ok && strings.TrimSpace(k) == "cpu MHz" {
				if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && mhz > 0 {
					tscKHz = int(mhz*1000 + 0.5)
				}
				return
			}
		}
	})
	return tscKHz
}

var (
	tscOnce sync.Once
	tscKHz  int
)

// handle is the versioned VM description stored with a session.
type handle struct {
	V         int    `json:"v"`
	ID        string `json:"id"`
	Dir       string `json:"dir"`
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`       // /proc/PID/stat field 22: guards against PID reuse
	Cgroup    string `json:"cgroup,omitempty"` // where it differs from ID: a claimed spare's
}

const handleVersion = 1

// Boot starts QEMU for spec and connects to its QMP socket.
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) (vmm.VM, error) {
	if spec.CPUs <= 0 || spec.MemoryMiB <= 0 {
		return nil, fmt.Errorf("qemu: boot %s: cpus and memory must be positive", spec.ID)
	}
	if d.cfg.GuestCmdline != "" {
		spec.Cmdline = strings.TrimSpace(d.cfg.GuestCmdline + " " + spec.Cmdline)
	}
	if d.accel == "tcg" {
		return d.bootWatched(ctx, spec, args(d.accel, d.tscKHz, spec))
	}
	return d.spawn(ctx, spec, args(d.accel, d.tscKHz, spec), spawnOpts{})
}

// spawnOpts are what differs between the QEMU processes of one driver.
type spawnOpts struct {
	extra    []*os.File // inherited from fd 3 on
	spareDir string     // a spare's own directory, removed when QEMU exits
	nice     int        // the nice value it starts at (a spare's: 19)
}

// spawn starts QEMU with argv in cgroups named for spec.ID and connects
// QMP.
func (d *Driver) spawn(ctx context.Context, spec vmm.Spec, argv []string, opts spawnOpts) (*VM, error) {
	if err := d.own(spec); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(spec.Dir, QEMULog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("qemu: %s: %w", spec.ID, err)
	}
	defer logf.Close()
	conHost, conQEMU, err := consolePair()
	if err != nil {
		return nil, fmt.Errorf("qemu: %s: %w", spec.ID, err)
	}
	extra, err := withConsole(opts.extra, conQEMU)
	if err != nil {
		unix.Close(conHost)
		conQEMU.Close()
		return nil, fmt.Errorf("qemu: %s: %w", spec.ID, err)
	}
	cmd := exec.Command(d.cfg.Binary, argv...)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.ExtraFiles = extra
	// Its own session: QEMU outlives a server that dies or restarts (the
	// next one adopts it) and ignores the terminal's Ctrl-C.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if d.uid >= 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(d.uid), Gid: uint32(d.gid)}
	}
	err = cmd.Start()
	// QEMU has its own copy: the copy of the host's console sees the end
	// of the file when QEMU exits.
	conQEMU.Close()
	if err != nil {
		unix.Close(conHost)
		return nil, fmt.Errorf("qemu: %s: start: %w", spec.ID, err)
	}
	vm := &VM{d: d, id: spec.ID, dir: spec.Dir, cgroup: spec.ID, spareDir: opts.spareDir,
		pid: cmd.Process.Pid, done: make(chan struct{})}
	con := startConsole(spec.Dir, d.consoleMax(), conHost)
	vm.console = con
	if opts.nice != 0 {
		// The threads QEMU makes from now on inherit it.
		setNice(vm.pid, opts.nice)
		vm.niced = true
	}
	go func() {
		_ = cmd.Wait()
		// However QEMU ended (Stop, a crash, a failed start), its cgroups
		// (and a spare's directory) go with it, and its last console
		// output is written, before anyone waiting on Done moves on.
		con.drain()
		d.unlimit(vm.cgroup)
		if opts.spareDir != "" {
			os.RemoveAll(opts.spareDir)
		}
		close(vm.done)
	}()
	vm.start, _ = procStartTime(vm.pid)
	if err := d.limit(spec, vm.pid); err != nil {
		_ = vm.kill()
		return nil, fmt.Errorf("qemu: %s: %w", spec.ID, err)
	}

	// QMP answers once QEMU has started: within the caller's deadline (a
	// boot's timeout, say; a loaded host can take long), or 15 s.
	limit := 15 * time.Second
	if d, ok := ctx.Deadline(); ok {
		limit = max(limit, time.Until(d))
	}
	qctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	go func() {
		select {
		case <-vm.done:
			cancel()
		case <-qctx.Done():
		}
	}()
	conn, err := qmp.Dial(qctx, filepath.Join(spec.Dir, QMPSocket))
	if err != nil {
		_ = vm.kill()
		return nil, fmt.Errorf("qemu: %s: %w; qemu said: %s", spec.ID, err, vm.logTail(QEMULog, 1000))
	}
	vm.qmp = conn
	return vm, nil
}

// Adopt re-attaches to a QEMU process booted by an earlier server.
func (d *Driver) Adopt(ctx context.Context, raw []byte) (vmm.VM, error) {
	var h handle
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("qemu: adopt: bad handle: %w", err)
	}
	if h.V != handleVersion {
		return nil, fmt.Errorf("qemu: adopt %s: handle version %d, want %d", h.ID, h.V, handleVersion)
	}
	st, err := procStartTime(h.PID)
	if err != nil || st != h.StartTime {
		return nil, fmt.Errorf("qemu: adopt %s: process %d is gone", h.ID, h.PID)
	}
	pidfd, err := unix.PidfdOpen(h.PID, 0)
	if err != nil {
		return nil, fmt.Errorf("qemu: adopt %s: pidfd: %w", h.ID, err)
	}
	cgroup := h.ID
	if h.Cgroup != "" {
		cgroup = h.Cgroup
	}
	// A claimed spare's own directory (its owner file) goes with it.
	spareDir := ""
	if strings.HasPrefix(cgroup, spareName) && d.cfg.SpareDir != "" && filepath.Base(cgroup) == cgroup {
		spareDir = filepath.Join(d.cfg.SpareDir, cgroup)
	}
	vm := &VM{d: d, id: h.ID, dir: h.Dir, cgroup: cgroup, spareDir: spareDir, pid: h.PID, start: h.StartTime, done: make(chan struct{})}
	go func() {
		defer unix.Close(pidfd)
		for {
			fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		d.unlimit(cgroup)
		if spareDir != "" {
			os.RemoveAll(spareDir)
		}
		close(vm.done)
	}()
	// An earlier server froze it (Freezer) and died: it runs on, as its
	// caller adopts only the VMs the store still records its own (its
	// monitor would not answer otherwise).
	if procStopped(h.PID) {
		d.cfg.Log.Warn("qemu: adopt: the VM was frozen; it is thawed", "vm", h.ID, "pid", h.PID)
		if err := vm.signal(unix.SIGCONT); err != nil {
			return nil, fmt.Errorf("qemu: adopt %s: thaw: %w", h.ID, err)
		}
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := qmp.Dial(qctx, filepath.Join(h.Dir, QMPSocket))
	if err != nil {
		return nil, fmt.Errorf("qemu: adopt %s: %w", h.ID, err)
	}
	vm.qmp = conn
	d.attachConsole(ctx, vm)
	return vm, nil
}

// VM is a QEMU process.
type VM struct {
	d *Driver
	// id and dir change when a spare is claimed, before the VM is handed
	// out; its cgroups keep the spare's name.
	id       string
	dir      string
	cgroup   string // the name of its cgroups
	spareDir string // a spare's own directory
	niced    bool   // started at low priority (a spare)
	pid      int
	start    uint64
	qmp      *qmp.Conn
	done     chan struct{}

	stopOnce sync.Once
	stopErr  error
	frozen   atomic.Bool // stopped by Freeze (SIGSTOP) until Thaw

	early sync.Mutex
	agent net.Conn // guarded by early: connected by Restore, for the first DialAgent

	conMu   sync.Mutex
	console *console // guarded by conMu: copies the console socket into its files; nil when not held
}

// connectAgentEarly connects to the agent's chardev and waits until QEMU
// has accepted the connection, for Restore before it loads the state.
func (vm *VM) connectAgentEarly(ctx context.Context) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(vm.dir, AgentSocket))
	if err != nil {
		return fmt.Errorf("connect agent channel: %w", err)
	}
	for i := 0; ; i++ {
		raw, err := vm.qmp.Execute(ctx, "query-chardev", nil)
		if err != nil {
			c.Close()
			return err
		}
		var chardevs []struct {
			Label    string `json:"label"`
			Filename string `json:"filename"`
		}
		if err := json.Unmarshal(raw, &chardevs); err != nil {
			c.Close()
			return fmt.Errorf("query-chardev: %w", err)
		}
		accepted := false
		for _, cd := range chardevs {
			if cd.Label == agentChardev && !strings.HasPrefix(cd.Filename, "disconnected:") {
				accepted = true
			}
		}
		if accepted {
			break
		}
		if i == 100 {
			// Not fatal: the guest then sees the connection open late.
			break
		}
		time.Sleep(time.Millisecond)
	}
	vm.early.Lock()
	vm.agent = c
	vm.early.Unlock()
	return nil
}

// PID is QEMU's process id.
func (vm *VM) PID() int { return vm.pid }

// Done is closed when QEMU exits.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// Handle describes the VM for Adopt.
func (vm *VM) Handle() []byte {
	h := handle{V: handleVersion, ID: vm.id, Dir: vm.dir, PID: vm.pid, StartTime: vm.start}
	if vm.cgroup != vm.id {
		h.Cgroup = vm.cgroup
	}
	b, _ := json.Marshal(h)
	return b
}

// DialAgent connects to the agent's virtio-serial chardev socket.
func (vm *VM) DialAgent(ctx context.Context) (net.Conn, error) {
	vm.early.Lock()
	c := vm.agent
	vm.agent = nil
	vm.early.Unlock()
	if c != nil {
		return c, nil
	}
	if err := vm.waitGuestPort(ctx); err != nil {
		return nil, err
	}
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", filepath.Join(vm.dir, AgentSocket))
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qemu: dial agent of %s: %w", vm.id, err)
		case <-vm.done:
			return nil, fmt.Errorf("qemu: dial agent of %s: qemu exited", vm.id)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// waitGuestPort waits until the guest has its end of the agent's port open
// (QMP: the chardev's frontend is open). A host that connects before that
// is not safe: QEMU reads nothing from it until the guest opens the port,
// a closed connection is then noticed late (the next ones queue behind
// it), and its notice that a host is connected can be lost to a guest
// whose control queue had no buffer free at that instant, after which the
// guest cannot answer on the connection at all. A running guest has the
// port open: this returns at once.
func (vm *VM) waitGuestPort(ctx context.Context) error {
	if vm.qmp == nil {
		return nil
	}
	for {
		raw, err := vm.qmp.Execute(ctx, "query-chardev", nil)
		if err != nil {
			return fmt.Errorf("qemu: agent port of %s: %w", vm.id, err)
		}
		var chardevs []struct {
			Label        string `json:"label"`
			FrontendOpen bool   `json:"frontend-open"`
		}
		if err := json.Unmarshal(raw, &chardevs); err != nil {
			return fmt.Errorf("qemu: agent port of %s: query-chardev: %w", vm.id, err)
		}
		for _, cd := range chardevs {
			if cd.Label == agentChardev && cd.FrontendOpen {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu: agent port of %s: the guest never opened it: %w", vm.id, ctx.Err())
		case <-vm.done:
			return fmt.Errorf("qemu: agent port of %s: qemu exited", vm.id)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Stop quits QEMU over QMP, killing it if it has not exited within ctx or
// 5 seconds.
func (vm *VM) Stop(ctx context.Context) error {
	vm.stopOnce.Do(func() {
		select {
		case <-vm.done:
		default:
			if vm.qmp != nil && !vm.frozen.Load() {
				qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, _ = vm.qmp.Execute(qctx, "quit", nil)
				cancel()
			}
			if !vm.frozen.Load() { // a frozen QEMU does not quit: it is killed as it is
				select {
				case <-vm.done:
				case <-ctx.Done():
				case <-time.After(5 * time.Second):
				}
			}
			vm.stopErr = vm.kill()
		}
		if vm.qmp != nil {
			vm.qmp.Close()
		}
		vm.early.Lock()
		if vm.agent != nil {
			vm.agent.Close()
			vm.agent = nil
		}
		vm.early.Unlock()
		vm.d.unlimit(vm.cgroup)
	})
	return vm.stopErr
}

func (vm *VM) kill() error {
	select {
	case <-vm.done:
		return nil
	default:
	}
	if st, err := procStartTime(vm.pid); err == nil && st == vm.start {
		_ = unix.Kill(vm.pid, unix.SIGKILL)
	}
	select {
	case <-vm.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("qemu: %s: process %d did not exit after SIGKILL", vm.id, vm.pid)
	}
}

// Release closes the QMP connection and leaves QEMU running: QEMU serves
// one QMP client at a time, and the next server adopts the VM.
func (vm *VM) Release() error {
	// The console's host end goes too: QEMU drops the guest's console
	// output until the next server adopts it.
	vm.setConsole(nil)
	// So does an agent connection made for a restore and never taken:
	// the channel takes one connection at a time.
	vm.early.Lock()
	if vm.agent != nil {
		vm.agent.Close()
		vm.agent = nil
	}
	vm.early.Unlock()
	if vm.qmp == nil {
		return nil
	}
	return vm.qmp.Close()
}

// Status says what the VM is doing, from QMP's query-status and
// query-migrate.
func (vm *VM) Status(ctx context.Context) (vmm.Status, error) {
	if vm.qmp == nil {
		return "", fmt.Errorf("qemu: status %s: no QMP connection", vm.id)
	}
	run, err := vm.runState(ctx)
	if err != nil {
		return "", err
	}
	switch run {
	case "inmigrate", "prelaunch":
		return vmm.StatusIncoming, nil
	case "finish-migrate":
		return vmm.StatusSaving, nil
	}
	mig, err := vm.migrationStatus(ctx)
	if err != nil {
		return "", err
	}
	if migrationActive(mig) {
		return vmm.StatusSaving, nil
	}
	if run == "running" {
		return vmm.StatusRunning, nil
	}
	return vmm.StatusPaused, nil
}

// runState is QEMU's run state (query-status).
func (vm *VM) runState(ctx context.Context) (string, error) {
	return vm.queryStatus(ctx, "query-status")
}

// migrationStatus is the state of the last migration (query-migrate).
func (vm *VM) migrationStatus(ctx context.Context) (string, error) {
	return vm.queryStatus(ctx, "query-migrate")
}

// queryStatus runs a QMP query whose answer has a "status".
func (vm *VM) queryStatus(ctx context.Context, cmd string) (string, error) {
	raw, err := vm.qmp.Execute(ctx, cmd, nil)
	if err != nil {
		return "", fmt.Errorf("qemu: status %s: %w", vm.id, err)
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("qemu: status %s: %s: %w", vm.id, cmd, err)
	}
	return st.Status, nil
}

// migrationActive reports whether a query-migrate status is of a
// migration under way.
func migrationActive(status string) bool {
	switch status {
	case "", "none", "completed", "failed", "cancelled":
		return false
	}
	return true
}

// Resume lets a paused guest run again (after a save cut short, say): a
// migration still under way is cancelled first, and waited for.
func (vm *VM) Resume(ctx context.Context) error {
	if vm.qmp == nil {
		return fmt.Errorf("qemu: resume %s: no QMP connection", vm.id)
	}
	for i := 0; ; i++ {
		mig, err := vm.migrationStatus(ctx)
		if err != nil {
			return err
		}
		if !migrationActive(mig) {
			break
		}
		if i == 0 {
			if _, err := vm.qmp.Execute(ctx, "migrate_cancel", nil); err != nil {
				return fmt.Errorf("qemu: resume %s: %w", vm.id, err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu: resume %s: migration still under way: %w", vm.id, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	run, err := vm.runState(ctx)
	if err != nil || run == "running" {
		return err
	}
	if _, err := vm.qmp.Execute(ctx, "cont", nil); err != nil {
		return fmt.Errorf("qemu: resume %s (%s): %w", vm.id, run, err)
	}
	return nil
}

// ConsoleTail returns the end of the guest console and QEMU's own log.
func (vm *VM) ConsoleTail() string {
	s := strings.TrimSpace(printable(vm.consoleBytes(1500)))
	if q := strings.TrimSpace(vm.logTail(QEMULog, 500)); q != "" {
		s += "\nqemu: " + q
	}
	return s
}

func (vm *VM) logTail(name string, n int64) string {
	f, err := os.Open(filepath.Join(vm.dir, name))
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-n, 0)
	buf := make([]byte, fi.Size()-off)
	_, _ = f.ReadAt(buf, off)
	// Guest output is hostile: keep printable text only.
	return printable(buf)
}

// procStartTime reads a process's start time (clock ticks since boot).
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, errors.New("bad stat")
	}
	// Field 22 overall; fields after ")" start at field 3.
	return strconv.ParseUint(f[19], 10, 64)
}

// setupCgroups finds the cgroup hierarchy under Config.CgroupRoot (see
// cgroup.go) and says once what limits VMs get. Limits it cannot apply
// fail New unless Config.AllowNoCgroups.
func (d *Driver) setupCgroups() error {
	if d.cfg.CgroupRoot == "" {
		d.cfg.Log.Warn("qemu runs VMs without cgroup limits (no cgroup root configured): a guest can take all the host's memory and CPU")
		return nil
	}
	cg, err := detectCgroups(d.cfg.CgroupRoot)
	if cg != nil {
		cg.tag = d.cfg.CgroupTag
	}
	d.cgroups = cg
	if err != nil && !d.cfg.AllowNoCgroups {
		return fmt.Errorf("qemu: cgroup limits cannot be applied: %w; run the server as root on a host with the memory, cpu and pids controllers "+
			"(cgroup v1, or cgroup v2 with them delegated to the cgroup root), or start it with --allow-no-cgroups to run VMs without these limits", err)
	}
	if err != nil {
		d.cfg.Log.Warn("qemu runs VMs without some cgroup limits (--allow-no-cgroups): a guest can take more of the host than it was given", "err", err)
	}
	if cg != nil {
		d.cfg.Log.Info("qemu cgroup limits", "where", cg.describe())
	}
	return nil
}

// limit puts QEMU in its VM's cgroups with spec's limits. It fails when
// they cannot be set, unless Config.AllowNoCgroups.
func (d *Driver) limit(spec vmm.Spec, pid int) error {
	if d.cgroups == nil {
		return nil
	}
	err := d.cgroups.place(spec.ID, spec, pid)
	if err != nil && d.cfg.AllowNoCgroups {
		d.cfg.Log.Warn("cgroup limits not set", "vm", spec.ID, "err", err)
		return nil
	}
	return err
}

func (d *Driver) unlimit(id string) {
	if d.cgroups != nil {
		d.cgroups.remove(id)
	}
}

// CleanCgroups removes the per-VM cgroups whose VM id keep reports false
// (left behind by VMs that died while no server ran).
func (d *Driver) CleanCgroups(keep func(id string) bool) {
	if d.cgroups != nil {
		d.cgroups.clean(keep)
	}
}
