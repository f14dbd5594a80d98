// Package command runs host programs (git, qemu-img, debootstrap, …) and
// turns their failures into errors that say what failed and why: the
// program, its arguments and the end of what it wrote to stderr.
package command

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// maxStderr bounds how much of a failed program's stderr an error carries.
const maxStderr = 2000

// Output runs cmd and returns its stdout. If it fails, the error names the
// program and its arguments, wraps the exit error (or ctx's error when ctx
// ended: pass the ctx cmd was made with) and ends with the
// last maxStderr bytes of its stderr. cmd's Stdout and Stderr must be unset.
func Output(ctx context.Context, cmd *exec.Cmd) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > maxStderr {
			msg = "…" + msg[len(msg)-maxStderr:]
		}
		return nil, &Error{Args: cmd.Args, Err: err, Stderr: msg}
	}
	return stdout.Bytes(), nil
}

// Error is a program that failed, as Output reports it.
type Error struct {
	Args   []string // the program and its arguments
	Err    error    // the exit error, or the context's error
	Stderr string   // the end of its stderr (at most maxStderr bytes), trimmed
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %v: %s", strings.Join(e.Args, " "), e.Err, e.Stderr)
}

func (e *Error) Unwrap() error { return e.Err }
