package apiserver

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/image"
)

// bigEnv is n variables of size bytes each, every one within the guest
// kernel's limit per string.
func bigEnv(n, size int) map[string]string {
	env := map[string]string{}
	for i := range n {
		env[fmt.Sprintf("BIG%d", i)] = strings.Repeat("x", size)
	}
	return env
}

// TestRequestsThatCannotReachTheGuestAre400 protects the frame limit: an
// exec, a session or a template whose command would not fit the guest
// protocol's request frame (or holds a string the guest's kernel refuses)
// is refused at once with 400 and the sizes, before the manager is asked,
// instead of failing with 503 "frame too large" in the transport, or
// creating a session in which no command can start.
func TestRequestsThatCannotReachTheGuestAre400(t *testing.T) {
	e := newEnv(t)
	manyArgs := []string{"echo"}
	for range 10000 {
		manyArgs = append(manyArgs, strings.Repeat("a", 200))
	}
	for _, tc := range []struct {
		name, path string
		body       any
		want       string // in the message
	}{
		{"exec with an 8 MiB variable", "/v1/sessions/s1/exec",
			api.ExecRequest{Argv: []string{"true"}, Env: map[string]string{"HUGE": strings.Repeat("x", 8<<20)}}, "at most 131071 per variable"},
		{"exec with 2 MiB of variables", "/v1/sessions/s1/exec",
			api.ExecRequest{Argv: []string{"true"}, Env: bigEnv(20, 100<<10)}, "the limit is 1048576"},
		{"exec with 10,000 arguments", "/v1/sessions/s1/exec", api.ExecRequest{Argv: manyArgs}, "the limit is 1048576"},
		{"exec with a 200 KiB argument", "/v1/sessions/s1/exec",
			api.ExecRequest{Argv: []string{"echo", strings.Repeat("a", 200<<10)}}, "argv[1]: 204800 bytes"},
		{"exec whose JSON escapes past the frame", "/v1/sessions/s1/exec",
			api.ExecRequest{Argv: []string{"echo", strings.Repeat("<", 100<<10), strings.Repeat("<", 100<<10)}}, "the limit is 1048576"},
		{"session with a 2 MiB environment", "/v1/sessions",
			api.CreateSessionRequest{Env: bigEnv(20, 100<<10)}, "the limit is 524288"},
		{"session with a 600 KiB environment", "/v1/sessions",
			api.CreateSessionRequest{Env: bigEnv(6, 100<<10)}, "the limit is 524288"},
		{"template with a 2 MiB environment", "/v1/templates",
			api.CreateTemplateRequest{Name: "big", Env: bigEnv(20, 100<<10)}, "the limit is 524288"},
		{"boot timeout of 1ns", "/v1/sessions", api.CreateSessionRequest{BootTimeout: "1ns"}, "at least 1s"},
		{"boot timeout under a second", "/v1/sessions", api.CreateSessionRequest{BootTimeout: "999ms"}, "at least 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := e.with(t)
			msg := wantError(t, e.doJSON("POST", tc.path, tc.body), 400, api.CodeInvalid).Message
			if !strings.Contains(msg, tc.want) {
				t.Errorf("message %q does not say %q", msg, tc.want)
			}
		})
	}
	if n := e.fake.calls.Load(); n != 0 {
		t.Errorf("the manager was called %d times for requests refused by their size", n)
	}
	// What fits is passed on: half a frame of environment, and an exec
	// just under the frame.
	decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{Env: bigEnv(4, 100<<10), BootTimeout: "1s"}), 201)
}

// TestBuildOfUnknownImageIs404 asks the real image builder to build an
// image it has no recipe for: the answer is a 404 naming the images it
// knows, before the NDJSON stream starts (whose status is 200 once sent).
func TestBuildOfUnknownImageIs404(t *testing.T) {
	b := &image.Builder{Home: t.TempDir()}
	e := newEnv(t, func(c *Config) { c.Images = b })
	resp := e.do("POST", "/v1/images/nosuch/build", nil)
	if ct := resp.Header.Get("Content-Type"); strings.Contains(ct, "ndjson") {
		t.Errorf("content type %q: the stream started", ct)
	}
	msg := wantError(t, resp, 404, api.CodeNotFound).Message
	if !strings.Contains(msg, `"nosuch"`) || !strings.Contains(msg, "tiny") {
		t.Errorf("message %q does not name the image and the known ones", msg)
	}
}
