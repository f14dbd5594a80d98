package command

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A program's stdout comes back; a failure names the program and its
// arguments and carries the end of its stderr, bounded.
func TestOutput(t *testing.T) {
	out, err := Output(context.Background(), exec.Command("sh", "-c", "echo out; echo err >&2"))
	if err != nil || string(out) != "out\n" {
		t.Fatalf("Output = %q, %v; want out", out, err)
	}
	_, err = Output(context.Background(), exec.Command("sh", "-c", "echo why it failed >&2; exit 3"))
	var exit *exec.ExitError
	if err == nil || !errors.As(err, &exit) || exit.ExitCode() != 3 ||
		!strings.Contains(err.Error(), "sh -c") || !strings.HasSuffix(err.Error(), "why it failed") {
		t.Fatalf("Output of a failing program = %v; want its exit, name and stderr", err)
	}
	_, err = Output(context.Background(), exec.Command("sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; exit 1"))
	if err == nil || len(err.Error()) > maxStderr+200 {
		t.Fatalf("Output of a program with a long stderr: %d bytes of error, want at most about %d", len(err.Error()), maxStderr)
	}
}

// A program cut short by its context fails with the context's error.
func TestOutputContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := Output(ctx, exec.CommandContext(ctx, "sleep", "10"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Output past its deadline = %v, want DeadlineExceeded", err)
	}
}
