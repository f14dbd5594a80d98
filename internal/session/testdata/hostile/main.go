// Command hostile is put into a guest by the hostile-guest tests: it does
// to the guest agent (PID 1) what a guest's root can.
//
//	hostile freeze SECONDS   ptrace-stop every thread of PID 1, then let go
//	hostile garble BYTES     write random bytes on PID 1's host port
package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) != 3 {
		fail(fmt.Errorf("usage: hostile freeze SECONDS | garble BYTES"))
	}
	n, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fail(err)
	}
	switch os.Args[1] {
	case "freeze":
		freeze(1, time.Duration(n)*time.Second)
	case "garble":
		garble(1, n)
	default:
		fail(fmt.Errorf("unknown mode %q", os.Args[1]))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "hostile:", err)
	os.Exit(1)
}

func freeze(pid int, d time.Duration) {
	runtime.LockOSThread() // every ptrace call from the tracer thread
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		fail(err)
	}
	var tids []int
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		if err := unix.PtraceSeize(tid); err != nil {
			fmt.Fprintln(os.Stderr, "hostile: seize", tid, err)
			continue
		}
		if err := unix.PtraceInterrupt(tid); err != nil {
			fmt.Fprintln(os.Stderr, "hostile: interrupt", tid, err)
		}
		tids = append(tids, tid)
	}
	fmt.Println("frozen", len(tids))
	time.Sleep(d)
	for _, tid := range tids {
		_ = unix.PtraceDetach(tid)
	}
}

// garble takes PID 1's descriptor of its virtio-serial port (the port
// opens once: pidfd_getfd is how another process gets at it) and writes
// n random bytes on it.
func garble(pid, n int) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		fail(err)
	}
	target := -1
	for _, e := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err == nil && strings.HasPrefix(link, "/dev/vport") {
			target, _ = strconv.Atoi(e.Name())
		}
	}
	if target < 0 {
		fail(fmt.Errorf("no /dev/vport descriptor in PID %d", pid))
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		fail(fmt.Errorf("pidfd_open: %w", err))
	}
	fd, err := unix.PidfdGetfd(pidfd, target, 0)
	if err != nil {
		fail(fmt.Errorf("pidfd_getfd: %w", err))
	}
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	f := os.NewFile(uintptr(fd), "port")
	if _, err := f.Write(buf); err != nil {
		fail(err)
	}
	fmt.Println("garbled", n)
}
