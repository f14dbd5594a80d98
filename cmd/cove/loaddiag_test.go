package main_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// maxDiagnoses bounds how many unanswered calls the load test looks into.
const maxDiagnoses = 4

// diagnose records, for a call into session id that went unanswered, what
// the guest was doing: whether its QEMU burned CPU (a slow guest) or sat
// idle (a guest waiting on nothing the host sends), its threads' states,
// its memory cgroup's usage against its limit, how long a fresh exec then
// took to answer, and its console's tail. It runs beside the load and its
// report is printed with the test's result: a timeout is a failure either
// way, the diagnosis says which kind.
func (l *load) diagnose(id string) {
	l.mu.Lock()
	if l.diagnosing >= maxDiagnoses || l.diagnosed[id] {
		l.mu.Unlock()
		return
	}
	l.diagnosing++
	l.diagnosed[id] = true
	l.mu.Unlock()

	var b strings.Builder
	fmt.Fprintf(&b, "diagnosis of %s at %s:\n", id, time.Now().UTC().Format("15:04:05"))
	sessions := filepath.Join(l.e.home, "sessions")
	pid := qemu.PIDOf(sessions, id)
	if pid == 0 {
		b.WriteString("  no QEMU process\n")
	} else {
		cpu := func() int64 {
			f := procStat(pid)
			if len(f) < 15 {
				return -1
			}
			u, _ := strconv.ParseInt(f[13], 10, 64)
			s, _ := strconv.ParseInt(f[14], 10, 64)
			return u + s
		}
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		before := map[string][]string{}
		for _, t := range tasks {
			before[t.Name()] = procTaskStat(pid, t.Name())
		}
		c0 := cpu()
		time.Sleep(2 * time.Second)
		c1 := cpu()
		fmt.Fprintf(&b, "  QEMU %d: %d CPU ticks (1/100 s) in 2 s\n", pid, c1-c0)
		for _, t := range tasks {
			f := procTaskStat(pid, t.Name())
			if f0 := before[t.Name()]; len(f0) > 14 && len(f) > 14 {
				u0, _ := strconv.Atoi(f0[13])
				u1, _ := strconv.Atoi(f[13])
				s0, _ := strconv.Atoi(f0[14])
				s1, _ := strconv.Atoi(f[14])
				fmt.Fprintf(&b, "  thread %s: %d ticks in the 2 s\n", t.Name(), u1-u0+s1-s0)
			}
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/comm", pid, t.Name()))
			wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/wchan", pid, t.Name()))
			if len(f) > 14 {
				fmt.Fprintf(&b, "  thread %s %s: state %s, utime %s stime %s, wchan %s\n", t.Name(), strings.TrimSpace(string(comm)), f[2], f[13], f[14], wchan)
			}
		}
		// The unix sockets' queues say which side holds the bytes: a
		// Recv-Q on QEMU's agent socket is host data QEMU has not taken
		// (no guest buffers), a Send-Q guest data the server has not read.
		if out, err := exec.Command("ss", "-xpn").Output(); err == nil {
			for _, line := range strings.Split(string(out), "\n") {
				if strings.Contains(line, fmt.Sprintf("pid=%d,", pid)) {
					fmt.Fprintf(&b, "  socket %s\n", strings.Join(strings.Fields(line), " "))
				}
			}
		}
		if cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil {
			for _, line := range strings.Split(string(cg), "\n") {
				f := strings.SplitN(line, ":", 3)
				if len(f) == 3 && strings.Contains(f[1], "memory") {
					dir := filepath.Join("/sys/fs/cgroup/memory", f[2])
					for _, name := range []string{"memory.usage_in_bytes", "memory.max_usage_in_bytes", "memory.limit_in_bytes", "memory.failcnt"} {
						v, _ := os.ReadFile(filepath.Join(dir, name))
						fmt.Fprintf(&b, "  %s %s\n", name, strings.TrimSpace(string(v)))
					}
				}
			}
		}
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	_, err := l.c.Exec(ctx, id, api.ExecRequest{Argv: []string{"true"}})
	cancel()
	fmt.Fprintf(&b, "  a fresh exec then: %v after %s\n", err, time.Since(start).Round(time.Millisecond))
	if con, err := os.ReadFile(filepath.Join(sessions, id, qemu.ConsoleLog)); err == nil {
		if len(con) > 1500 {
			con = con[len(con)-1500:]
		}
		fmt.Fprintf(&b, "  console tail:\n%s\n", con)
	}
	l.mu.Lock()
	l.diagnoses = append(l.diagnoses, b.String())
	l.mu.Unlock()
}

// procStat returns the fields of /proc/PID/stat after the command name.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return statFields(b, err)
}

func procTaskStat(pid int, tid string) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, tid))
	return statFields(b, err)
}

// statFields splits a stat line so that field i is stat's field i+1
// (pid, comm, state, …), comm kept whole.
func statFields(b []byte, err error) []string {
	if err != nil {
		return nil
	}
	s := string(b)
	i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if i < 0 || j < i {
		return nil
	}
	return append([]string{strings.TrimSpace(s[:i]), s[i+1 : j]}, strings.Fields(s[j+1:])...)
}
