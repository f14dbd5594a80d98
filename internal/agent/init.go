package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ModulesDir is where the initramfs keeps the kernel modules, and
// ModulesOrder the file listing them in load order.
const (
	ModulesDir   = "/lib/cove-modules"
	ModulesOrder = "/lib/cove-modules/order"
	// RootDevice is the guest's root disk: the first virtio-blk device.
	RootDevice = "/dev/vda"
	newRoot    = "/newroot"
)

// Init turns the process into the guest's init: it mounts the kernel file
// systems, loads the modules the initramfs carries, mounts the root disk
// and switches into it. It is called only as PID 1.
func Init() error {
	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := mount(m.src, m.dst, m.fs, 0, ""); err != nil {
			return err
		}
	}
	stdioToNull()
	b, _ := os.ReadFile("/proc/cmdline")
	debug = strings.Contains(string(b), "cove.debug")
	Mark("kernel file systems mounted")
	if err := loadModules(); err != nil {
		return err
	}
	Mark("modules loaded")
	if err := waitFor(RootDevice, 10*time.Second); err != nil {
		return err
	}
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	// noinit_itable and no_prefetch_block_bitmaps: no lazyinit thread,
	// which would zero inode tables and read every group's block bitmap
	// in the background, at times, for minutes after the boot — and after
	// every wake, all of it code that runs anew then (one traced wake ran
	// ≈350 blocks of ext4's bitmap prefetch, and the disk reads it sent;
	// with this option, ≈60 blocks of ext4 in all). A group's bitmap is
	// read when it is first allocated from instead.
	if err := mount(RootDevice, newRoot, "ext4", 0, "noinit_itable,no_prefetch_block_bitmaps"); err != nil {
		return err
	}
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		_ = os.MkdirAll(newRoot+d, 0o755)
		if err := unix.Mount(d, newRoot+d, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("init: move %s: %w", d, err)
		}
	}
	if err := switchRoot(newRoot); err != nil {
		return err
	}
	Mark("root switched")
	return setupRoot()
}

// debug is whether the kernel command line asks for cove.debug; set once,
// early in Init.
var debug bool

// Mark writes a boot progress mark to the kernel log when the kernel
// command line asks for cove.debug: the marks reach the console the host
// keeps, and show where a boot that never answers stopped.
func Mark(step string) {
	if !debug {
		return
	}
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		fmt.Fprintf(f, "<6>cove-agent: %s\n", step)
		f.Close()
	}
}

// switchRoot makes dir the root file system, as switch_root(8) does. The
// initramfs stays in memory (it holds only this binary and the modules).
func switchRoot(dir string) error {
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("init: chdir %s: %w", dir, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("init: move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("init: chroot: %w", err)
	}
	return unix.Chdir("/")
}

// setupRoot prepares the mounted root for commands: ptys, tmpfs dirs,
// hostname, loopback.
func setupRoot() error {
	_ = os.MkdirAll("/dev/pts", 0o755)
	if err := mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"); err != nil {
		return err
	}
	if _, err := os.Lstat("/dev/ptmx"); err != nil {
		_ = os.Symlink("pts/ptmx", "/dev/ptmx")
	}
	_ = os.MkdirAll("/dev/shm", 0o1777)
	_ = mount("tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777")
	for _, d := range []string{"/run", "/tmp"} {
		_ = os.MkdirAll(d, 0o755)
		mode := "mode=755"
		if d == "/tmp" {
			mode = "mode=1777"
		}
		if err := mount("tmpfs", d, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, mode); err != nil {
			return err
		}
	}
	_ = os.MkdirAll("/run/cove", 0o755)
	_ = os.MkdirAll(EventsDir, 0o755)
	// The agent is also a tool in the guest ('cove-agent event wait'):
	// put this binary, which lives in the initramfs, on the PATH. A link
	// to PID 1's executable costs nothing at boot, where a copy of it
	// would cost megabytes of tmpfs and the time to write them.
	if err := os.MkdirAll("/run/cove/bin", 0o755); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if err := os.Symlink("/proc/1/exe", "/run/cove/bin/cove-agent"); err != nil && !os.IsExist(err) {
		return fmt.Errorf("init: %w", err)
	}
	_ = unix.Sethostname([]byte("cove"))
	Mark("tmpfs mounted")
	if err := linkUp("lo"); err != nil {
		return fmt.Errorf("init: loopback: %w", err)
	}
	Mark("loopback up")
	quietKernel()
	Mark("kernel quieted")
	return nil
}

// quietKernel turns off periodic kernel work a sandbox has no use for:
// it runs at times in every guest, idle ones too, and after every wake,
// where under emulation each path run is translated afresh. Best effort:
// a kernel without a knob keeps its default.
//
// Writeback throttling stays on, though its latency timers run on the
// root disk too: turning it off (queue/wbt_lat_usec) freezes the disk's
// queue, and under TCG on a loaded host that freeze never ended in about
// one boot in ten, before the root was mounted or after — the guest idle
// with no timer armed, the agent's port never opened (boot progress
// marks, cove.debug, showed every such boot stopped at that write).
func quietKernel() {
	for _, k := range []struct{ path, value string }{
		// Proactive compaction: kcompactd wakes every half second.
		{"/proc/sys/vm/compaction_proactiveness", "0"},
		// The per-CPU statistics fold (vmstat_update): every 10 s, not
		// every second.
		{"/proc/sys/vm/stat_interval", "10"},
	} {
		_ = os.WriteFile(k.path, []byte(k.value), 0o644)
	}
}

func mount(src, dst, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(src, dst, fstype, flags, data); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("init: mount %s on %s: %w", fstype, dst, err)
	}
	return nil
}

func loadModules() error {
	f, err := os.Open(ModulesOrder)
	if errors.Is(err, os.ErrNotExist) {
		return nil // a kernel with everything built in
	}
	if err != nil {
		return fmt.Errorf("init: modules: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		if name == "" {
			continue
		}
		if err := loadModule(filepath.Join(ModulesDir, name)); err != nil {
			return err
		}
	}
	return sc.Err()
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("init: module: %w", err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("init: load module %s: %w", filepath.Base(path), err)
	}
	return nil
}

// waitFor waits for a device node that a module's probe creates. Probing
// can finish after the module is loaded.
func waitFor(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("init: %s did not appear within %s", path, limit)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// stdioToNull points fds 0-2 at /dev/null. The kernel opens /dev/console
// for init only if a console exists at that moment; without one they are
// closed, and the next files opened (the agent's port!) would take their
// numbers and receive stray writes to stderr.
func stdioToNull() {
	fd, err := unix.Open("/dev/null", unix.O_RDWR, 0)
	if err != nil {
		return
	}
	for i := 0; i < 3; i++ {
		if _, err := unix.FcntlInt(uintptr(i), unix.F_GETFD, 0); err != nil {
			_ = unix.Dup2(fd, i)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
}
