package session_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
)

// envOf is n variables prefix0… of size bytes each.
func envOf(prefix string, n, size int) map[string]string {
	env := map[string]string{}
	for i := range n {
		env[fmt.Sprintf("%s%d", prefix, i)] = strings.Repeat("x", size)
	}
	return env
}

// TestCommandsThatCannotReachTheGuest protects the frame limit in a real
// guest: a session whose environment leaves commands no room is refused
// with nothing recorded (it once answered 201, and then every exec in it
// failed); an exec that fits alone but not with the session's environment
// is refused with the sizes, and the session goes on; what the guest's
// kernel refuses (a string past MAX_ARG_STRLEN, argv past ARG_MAX) is 400
// too; and what fits, up to the kernel's exact limit, runs.
func TestCommandsThatCannotReachTheGuest(t *testing.T) {
	parallelVM(t)
	r := newRig(t, rigOptions{})
	ctx := context.Background()

	_, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Env: envOf("BIG", 20, 100<<10)})
	wantCode(t, "Create with a 2 MiB environment", err, api.CodeInvalid)
	if ss, err := r.mgr.List(ctx); err != nil || len(ss) != 0 {
		t.Fatalf("sessions after a refused create: %+v, %v", ss, err)
	}

	s := r.create(t, api.CreateSessionRequest{Env: envOf("BIG", 3, 100<<10)})
	if got := r.sh(t, s.ID, `echo ${#BIG0} ${#BIG2}`); got != "102400 102400\n" {
		t.Fatalf("the session's environment in the guest: %q", got)
	}

	_, err = r.mgr.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"true"}, Env: envOf("MORE", 8, 100<<10)})
	wantCode(t, "exec whose environment fits alone but not with the session's", err, api.CodeInvalid)
	if !strings.Contains(err.Error(), "with the session's environment") || !strings.Contains(err.Error(), "the limit is 1048576") {
		t.Errorf("error %q does not give the sizes", err)
	}

	// The kernel's limit per string, exactly: KEY=VALUE of MaxArgBytes runs,
	// one byte more is refused before it reaches the guest.
	long := strings.Repeat("y", session.MaxArgBytes-len("LONG="))
	res := r.run(t, s.ID, api.ExecRequest{Argv: []string{"sh", "-c", `echo ${#LONG}`}, Env: map[string]string{"LONG": long}}, nil)
	if res.stdout != fmt.Sprintf("%d\n", len(long)) || res.status.Code != 0 {
		t.Errorf("exec with a variable of %d bytes: %+v", session.MaxArgBytes, res)
	}
	_, err = r.mgr.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"true"}, Env: map[string]string{"LONG": long + "y"}})
	wantCode(t, "exec with a variable one byte past the kernel's limit", err, api.CodeInvalid)

	// Many empty arguments fit the frame but not the guest kernel's
	// ARG_MAX (each costs a pointer): execve's E2BIG is the request's
	// fault.
	argv := append([]string{"true"}, make([]string, 240000)...)
	_, err = r.mgr.Exec(ctx, s.ID, api.ExecRequest{Argv: argv})
	wantCode(t, "exec past the guest kernel's ARG_MAX", err, api.CodeInvalid)
	if !strings.Contains(err.Error(), "argument list too long") {
		t.Errorf("error %q does not say why", err)
	}

	if got := r.sh(t, s.ID, "echo still here"); got != "still here\n" {
		t.Fatalf("the session after refused execs: %q", got)
	}
}
