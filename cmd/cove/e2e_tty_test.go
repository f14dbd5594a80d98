package main_test

import (
	"errors"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// testExecTTY runs 'cove exec -t' in a terminal of the host, as a user
// would: the command gets a terminal in the guest of the local one's size,
// follows its resizes, and Ctrl-C reaches it as a byte (the local terminal
// is raw meanwhile, and restored after). Without a local terminal, -t still
// gives the command one.
func testExecTTY(t *testing.T, e *e2e, id string) {
	defer e.in(t)()
	const isTTY = `test -t 0 && test -t 1 && echo tty || echo "no tty"`
	if got := e.ok(nil, "exec", "-t", id, "--", "sh", "-c", isTTY); got != "tty\r\n" {
		t.Errorf("exec -t without a local terminal: %q, want a terminal in the guest", got)
	}
	if got := e.ok(nil, "exec", id, "--", "sh", "-c", isTTY); got != "no tty\n" {
		t.Errorf("exec without -t: %q, want no terminal", got)
	}

	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pty on the host: %v", err)
	}
	defer ptmx.Close()
	defer tty.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 33, Cols: 97}); err != nil {
		t.Fatal(err)
	}
	// The guest command shows its terminal and size, waits for the size to
	// change and shows it again, then sleeps until interrupted.
	script := `tty; stty size; echo ready
while [ "$(stty size)" = "33 97" ]; do sleep 1; done
stty size; echo resized
exec sleep 1000`
	cmd := e.command("exec", "-t", id, "--", "sh", "-c", script)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill() // a no-op once it exited

	out := &lockedBuffer{}
	go io.Copy(out, ptmx) // ends with EIO once the pty is closed
	waitOutput := func(re *regexp.Regexp) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for !re.MatchString(out.String()) {
			select {
			case err := <-exited:
				t.Fatalf("cove exec -t exited (%v) before printing %q; output %q", err, re, out)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("cove exec -t: no %q in its output after 2 minutes: %q", re, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitOutput(regexp.MustCompile(`^/dev/pts/\d+\r\n33 97\r\nready\r\n`))
	// cove read the first output after it made the terminal raw.
	if st, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS); err != nil {
		t.Fatal(err)
	} else if st.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
		t.Errorf("the local terminal is not raw while the command runs: lflag %#o", st.Lflag)
	}

	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 50, Cols: 120}); err != nil {
		t.Fatal(err)
	}
	waitOutput(regexp.MustCompile(`\r\n50 120\r\nresized\r\n$`))

	if _, err := ptmx.Write([]byte{3}); err != nil { // Ctrl-C
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGINT) {
			t.Fatalf("cove exec -t after Ctrl-C: %v, want exit %d (SIGINT); output %q", err, 128+int(syscall.SIGINT), out)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("cove exec -t did not end after Ctrl-C; output %q", out)
	}
	if st, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS); err != nil {
		t.Fatal(err)
	} else if st.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != unix.ICANON|unix.ECHO|unix.ISIG {
		t.Errorf("the local terminal is not restored after the command: lflag %#o", st.Lflag)
	}
	if s := out.String(); strings.Contains(s, "cove:") {
		t.Errorf("cove exec -t printed an error: %q", s)
	}
}
