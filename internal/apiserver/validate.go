package apiserver

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/repo"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/trigger"
)

// imageName is the shape of an image name.
var imageName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

func validateImageName(field, name string) error {
	if !imageName.MatchString(name) {
		return api.Errorf(api.CodeInvalid, "%s: %q is not an image name (%s)", field, name, imageName)
	}
	return nil
}

// templateName is the shape of a template name.
var templateName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

func validateTemplateName(field, name string) error {
	if !templateName.MatchString(name) {
		return api.Errorf(api.CodeInvalid, "%s: %q is not a template name (%s)", field, name, templateName)
	}
	return nil
}

// maxPool is the most clones a template may keep warm.
const maxPool = 64

func validateCreate(req api.CreateSessionRequest) error {
	if req.Template != "" {
		if err := validateTemplateName("template", req.Template); err != nil {
			return err
		}
		// The clone is the template's machine; a different one asked for
		// here would be silently ignored.
		if req.Image != "" || req.MemoryMiB != 0 || req.CPUs != 0 {
			return api.Errorf(api.CodeInvalid, "template: image, memory_mib and cpus come from template %q; leave them unset", req.Template)
		}
	}
	if err := validateMachine(req.Image, req.MemoryMiB, req.CPUs); err != nil {
		return err
	}
	if err := validateEnv(req.Env); err != nil {
		return err
	}
	if err := session.CheckEnv("env", req.Env); err != nil {
		return err
	}
	if err := validateBootTimeout(req.BootTimeout); err != nil {
		return err
	}
	if err := session.CheckAgent("agent", req.Agent); err != nil {
		return err
	}
	if _, err := session.CheckAllow("allow", req.Allow); err != nil {
		return err
	}
	return validateIdleTimeout("idle_timeout", req.IdleTimeout)
}

// validateBootTimeout checks an optional boot timeout: at least
// session.MinBootTimeout.
func validateBootTimeout(s string) error {
	if s == "" {
		return nil
	}
	if d, err := time.ParseDuration(s); err != nil || d < session.MinBootTimeout {
		return api.Errorf(api.CodeInvalid, "boot_timeout: %q is not a duration of at least %s (like \"60s\")", s, session.MinBootTimeout)
	}
	return nil
}

func validateCreateTemplate(req api.CreateTemplateRequest) error {
	if req.Name == "" {
		return api.Errorf(api.CodeInvalid, "name: missing")
	}
	if err := validateTemplateName("name", req.Name); err != nil {
		return err
	}
	if err := validateMachine(req.Image, req.MemoryMiB, req.CPUs); err != nil {
		return err
	}
	if err := validateEnv(req.Env); err != nil {
		return err
	}
	if err := session.CheckEnv("env", req.Env); err != nil {
		return err
	}
	for i, cmd := range req.Setup {
		if strings.TrimSpace(cmd) == "" {
			return api.Errorf(api.CodeInvalid, "setup[%d]: empty command", i)
		}
		if strings.IndexByte(cmd, 0) >= 0 {
			return api.Errorf(api.CodeInvalid, "setup[%d]: contains NUL", i)
		}
	}
	if strings.IndexByte(req.Start, 0) >= 0 {
		return api.Errorf(api.CodeInvalid, "start: contains NUL")
	}
	if p := req.Pool; p < 0 || p > maxPool {
		return api.Errorf(api.CodeInvalid, "pool: %d is out of range (0..%d)", p, maxPool)
	}
	if err := repo.CheckSource(req.Repo, req.Branch, req.RepoDir); err != nil {
		return api.Errorf(api.CodeInvalid, "%v", err)
	}
	if _, err := session.CheckAllow("allow", req.Allow); err != nil {
		return err
	}
	return session.CheckAgent("agent", req.Agent)
}

// validateMachine checks the optional image, memory and CPUs of a session
// or template; zero values mean the server's defaults.
func validateMachine(image string, memoryMiB, cpus int) error {
	if image != "" {
		if err := validateImageName("image", image); err != nil {
			return err
		}
	}
	if m := memoryMiB; m != 0 && (m < 64 || m > 65536) {
		return api.Errorf(api.CodeInvalid, "memory_mib: %d is out of range (0 for the default, or 64..65536)", m)
	}
	if c := cpus; c != 0 && (c < 1 || c > 64) {
		return api.Errorf(api.CodeInvalid, "cpus: %d is out of range (0 for the default, or 1..64)", c)
	}
	return nil
}

// Limits of a park body.
const (
	maxParkUntil   = 32
	maxParkTimeout = 30 * 24 * time.Hour
)

// validatePark checks a park body and returns its timeout (zero if unset).
// A bad expression's message is trigger.ParseError's, caret and all.
func validatePark(req api.ParkRequest) (time.Duration, error) {
	if n := len(req.Until); n > maxParkUntil {
		return 0, api.Errorf(api.CodeInvalid, "until: %d expressions; the limit is %d", n, maxParkUntil)
	}
	for i, e := range req.Until {
		if _, err := trigger.Parse(e); err != nil {
			return 0, api.Errorf(api.CodeInvalid, "until[%d]: %v", i, err)
		}
	}
	if req.Timeout == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(req.Timeout)
	if err != nil {
		return 0, api.Errorf(api.CodeInvalid, "timeout: %q is not a duration like \"6h\"", req.Timeout)
	}
	if d <= 0 || d > maxParkTimeout {
		return 0, api.Errorf(api.CodeInvalid, "timeout: %q is out of range (more than 0s, at most 720h: 30 days)", req.Timeout)
	}
	return d, nil
}

func validateExec(req api.ExecRequest) error {
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return api.Errorf(api.CodeInvalid, "argv: must name a command")
	}
	for i, a := range req.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return api.Errorf(api.CodeInvalid, "argv[%d]: contains NUL", i)
		}
	}
	if err := validateEnv(req.Env); err != nil {
		return err
	}
	// The session's environment is added later; what is too large alone
	// is refused before a parked session is woken for it.
	if err := session.CheckExec(req, nil); err != nil {
		return err
	}
	if req.Cwd != "" {
		if err := validatePath("cwd", req.Cwd); err != nil {
			return err
		}
	}
	if err := validateDuration("timeout", req.Timeout); err != nil {
		return err
	}
	return validateSize(req.Rows, req.Cols, false)
}

// validateSize checks a terminal size; zero means unset unless required.
func validateSize(rows, cols int, required bool) error {
	for _, f := range []struct {
		name string
		v    int
	}{{"rows", rows}, {"cols", cols}} {
		if f.v < 0 || f.v > 65535 || (required && f.v == 0) {
			return api.Errorf(api.CodeInvalid, "%s: %d is out of range (1..65535)", f.name, f.v)
		}
	}
	return nil
}

func validateEnv(env map[string]string) error {
	for k, v := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return api.Errorf(api.CodeInvalid, "env: %q is not a variable name (empty, or contains '=' or NUL)", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return api.Errorf(api.CodeInvalid, "env: value of %s contains NUL", k)
		}
	}
	return nil
}

// validateDuration checks an optional Go duration that must be positive.
func validateDuration(field, s string) error {
	if s == "" {
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return api.Errorf(api.CodeInvalid, "%s: %q is not a duration like \"30s\"", field, s)
	}
	if d <= 0 {
		return api.Errorf(api.CodeInvalid, "%s: %q must be positive", field, s)
	}
	return nil
}

// validateIdleTimeout checks an optional Go duration that may be zero
// ("0s": never).
func validateIdleTimeout(field, s string) error {
	if s == "" {
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return api.Errorf(api.CodeInvalid, "%s: %q is not a duration like \"10m\" (0s: never)", field, s)
	}
	if d < 0 {
		return api.Errorf(api.CodeInvalid, "%s: %q must not be negative (0s: never)", field, s)
	}
	return nil
}

func validatePath(field, p string) error {
	if !strings.HasPrefix(p, "/") {
		return api.Errorf(api.CodeInvalid, "%s: %q is not an absolute path", field, p)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return api.Errorf(api.CodeInvalid, "%s: contains NUL", field)
	}
	return nil
}

// guestPath returns the request's "path" query parameter, checked and
// cleaned (the same value Action.Path holds).
func guestPath(r *http.Request) (string, error) {
	q := r.URL.Query()
	if !q.Has("path") || q.Get("path") == "" {
		return "", api.Errorf(api.CodeInvalid, "path: missing (?path=/absolute/guest/path)")
	}
	p := q.Get("path")
	if err := validatePath("path", p); err != nil {
		return "", err
	}
	return cleanPath(p), nil
}

// fileMode parses the optional octal "mode" query parameter.
func fileMode(r *http.Request) (uint32, error) {
	s := r.URL.Query().Get("mode")
	if s == "" {
		return 0o644, nil
	}
	m, err := strconv.ParseUint(strings.TrimPrefix(s, "0o"), 8, 32)
	if err != nil || m > 0o7777 {
		return 0, api.Errorf(api.CodeInvalid, "mode: %q is not an octal file mode (0000..7777)", s)
	}
	return uint32(m), nil
}
