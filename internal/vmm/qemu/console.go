package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The guest's serial console (ttyS0: the kernel's warnings and panics, and
// whatever the guest writes there) reaches the host through a socket, not
// a file QEMU appends to: the guest is hostile and may write without end.
// The driver holds the host end and keeps the newest output in two files
// of at most Config.ConsoleMaxBytes each: ConsoleLog, and ConsoleLog+".1"
// holding what came before.
//
// QEMU gets its end as descriptor consoleFD (-chardev socket,fd=…),
// connected before the guest runs, so nothing of a boot is lost. Which
// backend a chardev has is not part of a snapshot (the serial device's
// state is), so a machine saved with another backend (the file of older
// versions) restores with this one.
//
// While no driver holds the host end (the server is down: from its exit
// until the next one adopts the VM), QEMU's chardev is disconnected and
// drops what the guest writes. Adopt hands QEMU a new socket (getfd, then
// chardev-change). A guest writing faster than the host reads is slowed:
// its UART waits for the socket.

// consoleFD is the descriptor QEMU finds its console socket at. It is
// fixed, so that one command line serves a boot (no other descriptor) and
// a restore (the state file at fd 3).
const consoleFD = 9

// DefaultConsoleMaxBytes bounds each of the two console files.
const DefaultConsoleMaxBytes = 4 << 20

// consoleRotated is the name of the older console file.
const consoleRotated = ConsoleLog + ".1"

// console copies a VM's console socket into its capped files.
//
// The copy reads the socket with plain blocking reads, not through Go's
// network poller, and pauses consolePause after each: a guest flooding its
// UART makes QEMU send one byte at a time, and a reader woken for each
// (the poller's thread woke for every byte) spent host CPU outside the
// VM's cgroup that its neighbours needed (an exec round trip 2.3x slower).
// Read this way, the host wakes at most once per pause, and a flood fills
// the socket: QEMU's UART then waits for room, the guest's writer blocks,
// and the flood costs only the flooding VM's own CPU quota.
type console struct {
	max  int64
	done chan struct{} // closed once the copy ended

	fdMu   sync.Mutex
	fd     int  // guarded by fdMu: the host end, blocking
	closed bool // guarded by fdMu: fd is closed (by the copy, once it ended)

	mu   sync.Mutex
	dir  string   // guarded by mu: where the files are
	f    *os.File // guarded by mu: dir/ConsoleLog, nil until opened
	size int64    // guarded by mu: f's size
}

// consolePause is how long the copy waits after each read: it bounds the
// host's wake-ups for one console to 1/consolePause a second, and what a
// guest can write there to a socket's worth per pause.
const consolePause = 2 * time.Millisecond

// consolePair makes a connected socket pair: the host's end (a blocking
// descriptor) and QEMU's.
func consolePair() (host int, qemu *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, fmt.Errorf("console socket: %w", err)
	}
	return fds[0], os.NewFile(uintptr(fds[1]), "console-qemu"), nil
}

// withConsole returns extra with f placed at consoleFD (extra starts at
// fd 3; the descriptors between are closed in the child).
func withConsole(extra []*os.File, f *os.File) ([]*os.File, error) {
	if len(extra) > consoleFD-3 {
		return nil, fmt.Errorf("%d inherited files: the console's descriptor %d is taken", len(extra), consoleFD)
	}
	out := make([]*os.File, consoleFD-3+1)
	copy(out, extra)
	out[consoleFD-3] = f
	return out, nil
}

// startConsole copies the socket fd into dir's console files until it
// ends; the console owns fd from now on.
func startConsole(dir string, max int64, fd int) *console {
	c := &console{fd: fd, max: max, dir: dir, done: make(chan struct{})}
	c.mu.Lock()
	c.open()
	c.mu.Unlock()
	go c.copy()
	return c
}

func (c *console) copy() {
	defer close(c.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(c.fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n <= 0 || err != nil {
			break // the end (QEMU exited, or close shut the socket down)
		}
		c.write(buf[:n])
		time.Sleep(consolePause)
	}
	c.fdMu.Lock()
	unix.Close(c.fd)
	c.closed = true
	c.fdMu.Unlock()
	c.mu.Lock()
	if c.f != nil {
		c.f.Close()
		c.f = nil
	}
	c.mu.Unlock()
}

// open opens dir/ConsoleLog for appending; on error, output is dropped
// until the next write tries again. Called with mu held.
func (c *console) open() {
	f, err := os.OpenFile(filepath.Join(c.dir, ConsoleLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return
	}
	c.f, c.size = f, fi.Size()
}

// write appends p, first moving a full file to consoleRotated (replacing
// the one there): the newest output is kept.
func (c *console) write(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if int64(len(p)) > c.max {
		p = p[int64(len(p))-c.max:]
	}
	if c.f == nil {
		c.open()
	}
	if c.f != nil && c.size > 0 && c.size+int64(len(p)) > c.max {
		c.f.Close()
		c.f = nil
		_ = os.Rename(filepath.Join(c.dir, ConsoleLog), filepath.Join(c.dir, consoleRotated))
		c.open()
		if c.f != nil && c.size > 0 { // the rename failed: start over in place
			_ = c.f.Truncate(0)
			c.size = 0
		}
	}
	if c.f == nil {
		return
	}
	n, _ := c.f.Write(p)
	c.size += int64(n)
}

// move moves the console files into dir, where they are written from now
// on (a claimed spare's, into its VM's directory).
func (c *console) move(dir string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f != nil {
		c.f.Close()
		c.f = nil
	}
	for _, name := range []string{ConsoleLog, consoleRotated} {
		err := os.Rename(filepath.Join(c.dir, name), filepath.Join(dir, name))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("move console: %w", err)
		}
	}
	c.dir = dir
	c.open()
	return nil
}

// close ends the copy (QEMU's chardev then drops what the guest writes)
// and waits for it. Shutting the socket down wakes a read blocked on it,
// which closing would not.
func (c *console) close() {
	c.fdMu.Lock()
	if !c.closed {
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
	}
	c.fdMu.Unlock()
	<-c.done
}

// drain waits, briefly, for the copy to reach the end of what an exited
// QEMU wrote, then ends it.
func (c *console) drain() {
	select {
	case <-c.done:
	case <-time.After(time.Second):
	}
	c.close()
}

// attachConsole gives an adopted VM's console chardev a new socket whose
// host end this driver holds. Failing, it logs: the VM runs on, its
// console output dropped.
func (d *Driver) attachConsole(ctx context.Context, vm *VM) {
	host, qf, err := consolePair()
	if err != nil {
		d.cfg.Log.Warn("console of adopted VM not reconnected: its output is dropped", "vm", vm.id, "err", err)
		return
	}
	defer qf.Close()
	fail := func(err error) {
		unix.Close(host)
		d.cfg.Log.Warn("console of adopted VM not reconnected: its output is dropped", "vm", vm.id, "err", err)
	}
	if _, err := vm.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "console"}, qf); err != nil {
		fail(err)
		return
	}
	backend := map[string]any{"type": "socket", "data": map[string]any{
		"addr": map[string]any{"type": "fd", "data": map[string]any{"str": "console"}}, "server": false}}
	if _, err := vm.qmp.Execute(ctx, "chardev-change", map[string]any{"id": "console", "backend": backend}); err != nil {
		fail(err)
		return
	}
	vm.setConsole(startConsole(vm.dir, d.consoleMax(), host))
}

func (d *Driver) consoleMax() int64 {
	if d.cfg.ConsoleMaxBytes > 0 {
		return d.cfg.ConsoleMaxBytes
	}
	return DefaultConsoleMaxBytes
}

// setConsole replaces the VM's console copy, ending the one before.
func (vm *VM) setConsole(c *console) {
	vm.conMu.Lock()
	old := vm.console
	vm.console = c
	vm.conMu.Unlock()
	if old != nil {
		old.close()
	}
}

// consoleBytes returns the last n bytes of the console files.
func (vm *VM) consoleBytes(n int64) []byte {
	cur := readTail(filepath.Join(vm.dir, ConsoleLog), n)
	if int64(len(cur)) < n {
		return append(readTail(filepath.Join(vm.dir, consoleRotated), n-int64(len(cur))), cur...)
	}
	return cur
}

// readTail returns the last n bytes of a file, or nil.
func readTail(path string, n int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	off := max(fi.Size()-n, 0)
	buf := make([]byte, fi.Size()-off)
	k, _ := f.ReadAt(buf, off)
	return buf[:k]
}

// printable keeps the text of hostile bytes: printable runes, newlines and
// tabs.
func printable(b []byte) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || (r >= 0x20 && r != 0x7f && r != 0xfffd) {
			return r
		}
		return -1
	}, string(b))
}
