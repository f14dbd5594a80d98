package agent_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agent"
)

// eventWait is the generous bound on a wait that must end: WaitEvent with
// an event pending, or with its context ended. It only decides when a
// broken WaitEvent fails the test; nothing here measures how fast it is.
const eventWait = time.Minute

// waitEventAsync runs WaitEvent in the background; its answer, or its
// error, comes on the channel.
func waitEventAsync(ctx context.Context, dir string) <-chan string {
	done := make(chan string, 1)
	go func() {
		b, err := agent.WaitEvent(ctx, dir)
		if err != nil {
			done <- "error: " + err.Error()
			return
		}
		done <- string(b)
	}()
	return done
}

// eventResult returns what a waiter answered, failing the test if it has not
// answered within eventWait.
func eventResult(t *testing.T, done <-chan string, what string) string {
	t.Helper()
	select {
	case got := <-done:
		return got
	case <-time.After(eventWait):
		t.Fatalf("WaitEvent did not return within %s: %s", eventWait, what)
		return ""
	}
}

// waitBlocked returns once a thread of this process sleeps in ppoll(2),
// which is where WaitEvent waits (unix.Poll is ppoll) after it found no
// event, and only there: nothing else in this test binary polls while
// these tests run (the Go runtime waits in epoll_pwait and futex). It
// fails the test if the waiter answers first, since it had nothing to
// answer with.
func waitBlocked(t *testing.T, done <-chan string) {
	t.Helper()
	deadline := time.Now().Add(eventWait)
	for {
		select {
		case got := <-done:
			t.Fatalf("WaitEvent returned %q with no event pending", got)
		default:
		}
		if inPpoll(t) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("WaitEvent neither returned nor blocked in ppoll within %s", eventWait)
		}
		time.Sleep(5 * time.Millisecond) // polling /proc for the condition
	}
}

// inPpoll reports whether a thread of this process is in ppoll with one
// descriptor (the system call number and first arguments are in
// /proc/self/task/TID/syscall).
func inPpoll(t *testing.T) bool {
	t.Helper()
	const sysPpoll = "271" // x86-64; the suite runs there (QEMU x86-64 guests)
	tasks, err := filepath.Glob("/proc/self/task/*/syscall")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("list /proc/self/task: %v (%d tasks)", err, len(tasks))
	}
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread ended
		}
		f := strings.Fields(string(b))
		if len(f) > 2 && f[0] == sysPpoll && f[2] == "0x1" {
			return true
		}
	}
	return false
}

func writeEvent(t *testing.T, dir, name, body string) {
	t.Helper()
	// Written the way the host writes: a dot-file renamed into place.
	tmp := filepath.Join(dir, "."+name)
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// TestWaitEventInOrder checks events come out oldest first, once each:
// two pending events, then one that arrives while a waiter is blocked,
// which wakes it.
func TestWaitEventInOrder(t *testing.T) {
	dir := t.TempDir()
	// Written newest first: the order is the names', not the writes'.
	for _, n := range []string{"0003-c.json", "0001-a.json", "0002-b.json"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), eventWait)
	defer cancel()
	for _, want := range []string{"0001-a.json", "0002-b.json", "0003-c.json"} {
		got, err := agent.WaitEvent(ctx, dir)
		if err != nil || string(got) != want {
			t.Fatalf("WaitEvent = %q, %v; want %q", got, err, want)
		}
	}
	// Each was taken once: they are in taken/, and none is pending.
	taken, _ := filepath.Glob(filepath.Join(dir, "taken", "*.json"))
	if len(taken) != 3 {
		t.Fatalf("taken/ holds %q, want the three events", taken)
	}

	// A waiter with nothing pending blocks, and the next event wakes it.
	done := waitEventAsync(ctx, dir)
	waitBlocked(t, done)
	writeEvent(t, dir, "0004-d.json", "d")
	if got := eventResult(t, done, "an event arrived while it waited"); got != "d" {
		t.Fatalf("got %q, want d", got)
	}
}

// TestWaitEventSkipsFilesBeingWritten checks that a dot-file (an event the
// host is still writing) is not taken. Both waits have a context that has
// already ended, so WaitEvent looks once and answers: the same look that
// takes a pending event (the control) must leave the dot-file alone.
func TestWaitEventSkipsFilesBeingWritten(t *testing.T) {
	dir := t.TempDir()
	ended, cancel := context.WithCancel(context.Background())
	cancel()

	if err := os.WriteFile(filepath.Join(dir, "0001-a.json"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := agent.WaitEvent(ended, dir); err != nil || string(got) != "a" {
		t.Fatalf("control: WaitEvent with an ended context and an event pending = %q, %v; want a", got, err)
	}

	if err := os.WriteFile(filepath.Join(dir, ".0002-b.json"), []byte("b, half written"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := agent.WaitEvent(ended, dir); !errors.Is(err, agent.ErrNoEvent) {
		t.Fatalf("WaitEvent with only a dot-file pending = %q, %v; want ErrNoEvent", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".0002-b.json")); err != nil {
		t.Fatalf("the dot-file was moved: %v", err)
	}
}

// TestWaitEventTimeout checks that a blocked wait ends with ErrNoEvent
// when its context does: cancelled, or at its deadline.
func TestWaitEventTimeout(t *testing.T) {
	want := "error: " + agent.ErrNoEvent.Error()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := waitEventAsync(ctx, t.TempDir())
	waitBlocked(t, done)
	cancel()
	if got := eventResult(t, done, "its context was cancelled"); got != want {
		t.Fatalf("cancelled: WaitEvent = %q, want %q", got, want)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	if got := eventResult(t, waitEventAsync(ctx, t.TempDir()), "its deadline passed"); got != want {
		t.Fatalf("deadline: WaitEvent = %q, want %q", got, want)
	}
}
