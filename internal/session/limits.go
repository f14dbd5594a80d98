package session

import (
	"sort"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
)

// What a command sent to a guest may hold. A command starts with one
// request frame (agentproto.MaxFrame), which carries its argv, cwd and the
// whole environment: the session's (or template's) merged with the
// request's. Requests that cannot fit are refused when they are made, with
// the sizes, rather than failing in the transport.
const (
	// MaxEnvBytes bounds a session's or a template's environment as sent
	// to the guest: half a frame, so that every command's own arguments
	// and environment have the other half.
	MaxEnvBytes = agentproto.MaxFrame / 2
	// MaxArgBytes is the longest argument or environment string
	// ("KEY=VALUE") the guest's kernel passes to a program: Linux's
	// MAX_ARG_STRLEN (32 pages) less its NUL; execve fails with E2BIG past it.
	MaxArgBytes = 32*4096 - 1
	// MinBootTimeout is the shortest boot timeout a create may ask for:
	// no guest boots faster, and a shorter one is a mistake (a unit
	// missing: "1ns", "5ms").
	MinBootTimeout = time.Second
)

// CheckEnv refuses an environment for a session or a template (field
// names it in the message) that would not leave a command room in its
// request frame, or holds a string the guest's kernel refuses.
func CheckEnv(field string, env map[string]string) error {
	if err := checkEnvStrings(field, env); err != nil {
		return err
	}
	if n := agentproto.ExecSize(agentproto.Exec{Env: envList(env, nil)}); n > MaxEnvBytes {
		return api.Errorf(api.CodeInvalid, "%s: %d bytes as sent to the guest; the limit is %d (half of the guest protocol's %d-byte request frame: the rest is for each command)",
			field, n, MaxEnvBytes, agentproto.MaxFrame)
	}
	return nil
}

// CheckExec refuses an exec request whose request frame to the guest
// would not fit: its argv, cwd and env merged over the session's
// environment sessionEnv (nil: the request alone), or a string in it that
// the guest's kernel refuses.
func CheckExec(req api.ExecRequest, sessionEnv map[string]string) error {
	return checkExec(req, sessionEnv, "the session's")
}

// checkExec is CheckExec with the base environment's owner named for
// messages ("the session's").
func checkExec(req api.ExecRequest, base map[string]string, whose string) error {
	for i, a := range req.Argv {
		if len(a) > MaxArgBytes {
			return api.Errorf(api.CodeInvalid, "argv[%d]: %d bytes; the guest's kernel takes at most %d per argument", i, len(a), MaxArgBytes)
		}
	}
	if err := checkEnvStrings("env", req.Env); err != nil {
		return err
	}
	x := agentproto.Exec{Argv: req.Argv, Cwd: req.Cwd, Env: envList(base, req.Env), User: req.User}
	n := agentproto.ExecSize(x)
	if n <= agentproto.MaxFrame {
		return nil
	}
	if len(base) == 0 {
		return api.Errorf(api.CodeInvalid, "argv and env: %d bytes as sent to the guest; the limit is %d (the guest protocol's request frame)",
			n, agentproto.MaxFrame)
	}
	own := agentproto.ExecSize(agentproto.Exec{Env: envList(base, nil)})
	return api.Errorf(api.CodeInvalid, "argv and env: %d bytes as sent to the guest with %s environment (%d of them); the limit is %d (the guest protocol's request frame)",
		n, whose, own, agentproto.MaxFrame)
}

// checkEnvStrings refuses a variable whose KEY=VALUE string the guest's
// kernel would refuse. Keys are checked in order, so the message names
// the same one every time.
func checkEnvStrings(field string, env map[string]string) error {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if n := len(k) + 1 + len(env[k]); n > MaxArgBytes {
			return api.Errorf(api.CodeInvalid, "%s: %s=…: %d bytes; the guest's kernel takes at most %d per variable", field, k, n, MaxArgBytes)
		}
	}
	return nil
}

// checkBootTimeout parses a create's boot timeout ("" for def).
func checkBootTimeout(s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < MinBootTimeout {
		return 0, api.Errorf(api.CodeInvalid, "boot_timeout %q: want a duration of at least %s, like 60s", s, MinBootTimeout)
	}
	return d, nil
}
