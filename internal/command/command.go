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
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}
