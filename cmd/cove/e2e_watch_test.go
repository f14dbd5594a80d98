package main_test

import (
	"bufio"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestWatchCLI: 'cove watch -r' against a real guest (inotify in the
// agent): a command's writes in a subdirectory are printed as they
// happen, and the watch ends by itself, with exit 0, when the session
// parks.
func TestWatchCLI(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer()
	id := e.create()
	e.ok(nil, "exec", id, "--", "mkdir", "-p", "/tmp/w/sub")
	e.userToken() // signed in before the watch starts
	cmd := e.command("watch", id, "/tmp/w", "-r")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var got []string
	// The watch is on once a line comes: touch a mark until one does.
	for len(got) == 0 {
		e.ok(nil, "exec", id, "--", "touch", "/tmp/w/mark")
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("cove watch ended at once: %v", cmd.Wait())
			}
			got = append(got, l)
		case <-time.After(time.Second):
		}
	}
	e.ok(nil, "exec", id, "--", "sh", "-c", "echo x > /tmp/w/sub/f")
	for _, want := range []string{"create sub/f", "write sub/f"} {
		for !slices.Contains(got, want) {
			l, ok := <-lines
			if !ok {
				t.Fatalf("cove watch ended before %q; printed %q", want, got)
			}
			got = append(got, l)
		}
	}
	e.ok(nil, "park", id)
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("cove watch after the park: %v, want exit 0; printed %q", err, got)
	}
	e.ok(nil, "rm", id)
	if err := e.stopServer(syscall.SIGTERM); err != nil { // it stops its spare QEMUs
		t.Fatal(err)
	}
}
