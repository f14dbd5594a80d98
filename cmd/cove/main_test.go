package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

const testToken = "t0ken"

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// runCLI runs one cove command line in-process against the server at addr
// (none if empty) and returns its exit status and output.
func runCLI(t *testing.T, addr, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	env := map[string]string{"COVE_HOME": t.TempDir()}
	if addr != "" {
		env["COVE_ADDR"] = addr
		env["COVE_TOKEN"] = testToken
	}
	var out, errOut bytes.Buffer
	c := &cli{
		stdin:  strings.NewReader(stdin),
		stdout: &out,
		stderr: &errOut,
		getenv: func(k string) string { return env[k] },
		now:    func() time.Time { return testNow },
	}
	code = run(context.Background(), c, args)
	return code, out.String(), errOut.String()
}

// fakeAPI is an httptest server with handlers per "METHOD /path" that
// checks the bearer token first.
func fakeAPI(t *testing.T, routes map[string]http.HandlerFunc) string {
	t.Helper()
	mux := http.NewServeMux()
	for pattern, h := range routes {
		mux.HandleFunc(pattern, h)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			writeError(w, api.CodeUnauthorized, "bad token")
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code, msg string) {
	writeJSON(w, api.Status(code), api.ErrorResponse{Error: api.ErrorBody{Code: code, Message: msg}})
}

// TestExitStatuses protects cove's exit statuses and "cove: " messages for
// failures that never reach a server.
func TestExitStatuses(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		want     int
		wantErr  string // substring of stderr
		wantNoIO bool   // stdout must be empty
	}{
		{name: "help", args: []string{"--help"}, want: 0},
		{name: "bare", args: nil, want: 0},
		{name: "unknown command", args: []string{"sesion"}, want: 2, wantErr: `cove: unknown command "sesion" for "cove" (did you mean "session"?)`},
		{name: "unknown subcommand", args: []string{"session", "nope"}, want: 2, wantErr: `unknown command "nope" for "cove session"`},
		{name: "unknown flag", args: []string{"ls", "--bogus"}, want: 2, wantErr: "cove: unknown flag: --bogus"},
		{name: "missing args", args: []string{"rm"}, want: 2, wantErr: "Run 'cove rm --help' for usage."},
		{name: "bad env", args: []string{"session", "create", "--env", "NOEQUALS"}, want: 2, wantErr: `invalid --env "NOEQUALS"`},
		{name: "exec command flags before --", args: []string{"exec", "s1", "ls", "-la"}, want: 2, wantErr: "cove: unknown shorthand flag: 'l' in -la (put the command and its flags after --)"},
		{name: "exec without command", args: []string{"exec", "s1", "--"}, want: 2},
		{name: "cp both local", args: []string{"cp", "a", "b"}, want: 2, wantErr: "one of SRC and DST must be ID:PATH"},
		{name: "no token", args: []string{"ls"}, want: 1, wantErr: "cove: no token: run 'cove login', set COVE_TOKEN, or start the server (it writes "},
		{name: "version needs no server", args: []string{"version"}, want: 0},
		{name: "park without id", args: []string{"park"}, want: 2, wantErr: "Run 'cove park --help' for usage."},
		{name: "wake without id", args: []string{"wake"}, want: 2, wantErr: "Run 'cove wake --help' for usage."},
		{name: "session park without id", args: []string{"session", "park"}, want: 2, wantErr: "Run 'cove session park --help' for usage."},
		{name: "park until two ids", args: []string{"park", "--until", "github:push", "s1", "s2"}, want: 2, wantErr: "--until and --timeout park one session"},
		{name: "park zero timeout", args: []string{"park", "--timeout", "0s", "s1"}, want: 2, wantErr: "--timeout must be positive"},
		{name: "hook add without secret", args: []string{"hook", "add", "ci"}, want: 2, wantErr: "--secret-file is required"},
		{name: "negative idle timeout", args: []string{"session", "create", "--idle-timeout", "-1m"}, want: 2, wantErr: "--idle-timeout must not be negative"},
		{name: "bad idle timeout", args: []string{"session", "create", "--idle-timeout", "soon"}, want: 2, wantErr: `invalid argument "soon" for "--idle-timeout"`},
		{name: "template with image", args: []string{"session", "create", "--template", "py", "--image", "tiny"}, want: 2, wantErr: "--template cannot be combined with --image"},
		{name: "template with memory", args: []string{"session", "create", "--template", "py", "--memory", "1024"}, want: 2, wantErr: "--template cannot be combined"},
		{name: "auto wake takes no value", args: []string{"session", "create", "--no-auto-wake=maybe"}, want: 2, wantErr: `invalid argument "maybe" for "--no-auto-wake"`},
		{name: "template bare", args: []string{"template"}, want: 0},
		{name: "template unknown subcommand", args: []string{"template", "build"}, want: 2, wantErr: `unknown command "build" for "cove template"`},
		{name: "template create without name", args: []string{"template", "create"}, want: 2, wantErr: "Run 'cove template create --help' for usage."},
		{name: "template create two names", args: []string{"template", "create", "a", "b"}, want: 2, wantErr: "accepts 1 arg(s), received 2"},
		{name: "template negative pool", args: []string{"template", "create", "py", "--pool", "-1"}, want: 2, wantErr: "--pool -1 is out of range (0..64)"},
		{name: "template pool too large", args: []string{"template", "create", "py", "--pool", "65"}, want: 2, wantErr: "--pool 65 is out of range"},
		{name: "template empty setup", args: []string{"template", "create", "py", "--setup", " "}, want: 2, wantErr: "--setup needs a command"},
		{name: "template bad env", args: []string{"template", "create", "py", "-e", "X"}, want: 2, wantErr: `invalid --env "X"`},
		{name: "template rm without name", args: []string{"template", "rm"}, want: 2, wantErr: "Run 'cove template rm --help' for usage."},
		{name: "template inspect without name", args: []string{"template", "inspect"}, want: 2},
		{name: "template ls takes no args", args: []string{"template", "ls", "py"}, want: 2},
		{name: "template create needs a server", args: []string{"template", "create", "py", "--setup", "true"}, want: 1, wantErr: "cove: no token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, "", "", tt.args...)
			if code != tt.want {
				t.Errorf("exit %d, want %d (stderr %q)", code, tt.want, stderr)
			}
			if !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("stderr %q does not contain %q", stderr, tt.wantErr)
			}
		})
	}
}

// TestSessionCommands protects create/ls/inspect/rm output against a fake
// server.
func TestSessionCommands(t *testing.T) {
	s1 := api.Session{ID: "s1", State: api.StateRunning, Image: "tiny", CreatedAt: testNow.Add(-3 * time.Minute),
		Owner: "u_alicealicealice", Agent: "review-bot"}
	s2 := api.Session{ID: "s2-long-id", State: api.StateCreating, Image: "dev", CreatedAt: testNow.Add(-5 * time.Second),
		Owner: api.OwnerAdmin}
	s3 := api.Session{ID: "s3", State: api.StateParked, Image: "tiny", CreatedAt: testNow.Add(-2 * time.Hour),
		Snapshot: &api.SnapshotInfo{DiskBytes: 96 << 20}}
	var created api.CreateSessionRequest
	addr := fakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/sessions": func(w http.ResponseWriter, r *http.Request) {
			d := json.NewDecoder(r.Body)
			d.DisallowUnknownFields()
			if err := d.Decode(&created); err != nil {
				writeError(w, api.CodeInvalid, err.Error())
				return
			}
			writeJSON(w, 201, api.Session{ID: "new1", State: api.StateRunning})
		},
		"GET /v1/sessions": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]any{"sessions": []api.Session{s2, s1, s3}})
		},
		"GET /v1/sessions/{id}": func(w http.ResponseWriter, r *http.Request) {
			if r.PathValue("id") != "s1" {
				writeError(w, api.CodeNotFound, "session "+r.PathValue("id")+" not found")
				return
			}
			writeJSON(w, 200, s1)
		},
		"DELETE /v1/sessions/{id}": func(w http.ResponseWriter, r *http.Request) {
			if id := r.PathValue("id"); id != "s1" && id != "s2" {
				writeError(w, api.CodeNotFound, "session "+id+" not found")
				return
			}
			w.WriteHeader(204)
		},
	})

	t.Run("create", func(t *testing.T) {
		code, out, errOut := runCLI(t, addr, "", "session", "create", "--image", "dev", "--memory", "1024", "--cpus", "2",
			"--env", "A=1", "-e", "B=x=y,z", "--boot-timeout", "90s")
		if code != 0 || out != "new1\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		want := api.CreateSessionRequest{Image: "dev", MemoryMiB: 1024, CPUs: 2, Env: map[string]string{"A": "1", "B": "x=y,z"}, BootTimeout: "1m30s"}
		if b1, b2 := mustJSON(created), mustJSON(want); b1 != b2 {
			t.Errorf("server got %s, want %s", b1, b2)
		}
	})
	t.Run("create from template", func(t *testing.T) {
		for _, tt := range []struct {
			args []string
			want api.CreateSessionRequest
		}{
			{[]string{"--template", "py"}, api.CreateSessionRequest{Template: "py"}},
			{[]string{"--template", "py", "--idle-timeout", "10m", "--no-auto-wake", "-e", "A=1"},
				api.CreateSessionRequest{Template: "py", IdleTimeout: "10m0s", NoAutoWake: true, Env: map[string]string{"A": "1"}}},
			{[]string{"--idle-timeout", "0s"}, api.CreateSessionRequest{IdleTimeout: "0s"}},
			{[]string{"--idle-timeout", "0"}, api.CreateSessionRequest{IdleTimeout: "0s"}},
			{[]string{"--template", "py", "--agent", "review-bot"}, api.CreateSessionRequest{Template: "py", Agent: "review-bot"}},
		} {
			created = api.CreateSessionRequest{}
			code, out, errOut := runCLI(t, addr, "", append([]string{"session", "create"}, tt.args...)...)
			if code != 0 || out != "new1\n" {
				t.Fatalf("%q: exit %d, stdout %q, stderr %q", tt.args, code, out, errOut)
			}
			if b1, b2 := mustJSON(created), mustJSON(tt.want); b1 != b2 {
				t.Errorf("%q: server got %s, want %s", tt.args, b1, b2)
			}
		}
	})
	t.Run("ls", func(t *testing.T) {
		code, out, _ := runCLI(t, addr, "", "ls")
		want := "" +
			"ID           STATE      IMAGE   OWNER               AGENT        AGE   SNAPSHOT\n" +
			"s3           parked     tiny    -                   -            2h    96MiB\n" +
			"s1           running    tiny    u_alicealicealice   review-bot   3m    -\n" +
			"s2-long-id   creating   dev     admin               -            5s    -\n"
		if code != 0 || out != want {
			t.Errorf("exit %d, stdout\n%s\nwant\n%s", code, out, want)
		}
		_, out2, _ := runCLI(t, addr, "", "session", "ls")
		if out2 != out {
			t.Errorf("session ls printed\n%s\nwant\n%s", out2, out)
		}
	})
	t.Run("ls json", func(t *testing.T) {
		code, out, _ := runCLI(t, addr, "", "ls", "--json")
		var got []api.Session
		if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil || len(got) != 3 || got[0].ID != "s2-long-id" {
			t.Errorf("exit %d, stdout %q (%v)", code, out, err)
		}
	})
	t.Run("inspect", func(t *testing.T) {
		code, out, _ := runCLI(t, addr, "", "session", "inspect", "s1")
		if code != 0 || !strings.Contains(out, "\n  \"id\": \"s1\",\n") ||
			!strings.Contains(out, "\n  \"owner\": \"u_alicealicealice\",\n") || !strings.Contains(out, "\n  \"agent\": \"review-bot\",\n") || !strings.Contains(out, "\n  \"stored\": false\n") {
			t.Errorf("exit %d, stdout %q", code, out)
		}
		code, _, errOut := runCLI(t, addr, "", "session", "inspect", "zz")
		if code != 1 || errOut != "cove: session zz not found\n" {
			t.Errorf("exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("rm several", func(t *testing.T) {
		code, out, errOut := runCLI(t, addr, "", "rm", "s1", "zz", "s2")
		if code != 1 || out != "s1\ns2\n" || errOut != "cove: rm zz: session zz not found\n" {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		code, out, _ = runCLI(t, addr, "", "session", "rm", "s1")
		if code != 0 || out != "s1\n" {
			t.Errorf("session rm: exit %d, stdout %q", code, out)
		}
	})
	t.Run("bad token", func(t *testing.T) {
		var out, errOut bytes.Buffer
		c := &cli{stdout: &out, stderr: &errOut, now: time.Now, getenv: func(k string) string {
			return map[string]string{"COVE_ADDR": addr, "COVE_TOKEN": "wrong"}[k]
		}}
		if code := run(context.Background(), c, []string{"ls"}); code != 1 || errOut.String() != "cove: bad token\n" {
			t.Errorf("exit %d, stderr %q", code, errOut.String())
		}
	})
}

// TestImageCommands protects image ls and build output.
func TestImageCommands(t *testing.T) {
	img := api.Image{Name: "tiny", Key: "0123456789abcdef", SizeBytes: 20 << 20, CreatedAt: testNow.Add(-50 * time.Hour), Stored: true}
	addr := fakeAPI(t, map[string]http.HandlerFunc{
		"GET /v1/images": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]any{"images": []api.Image{img}})
		},
		"POST /v1/images/{name}/build": func(w http.ResponseWriter, r *http.Request) {
			enc := json.NewEncoder(w)
			if r.PathValue("name") != "tiny" {
				enc.Encode(api.ImageBuildEvent{Type: "error", Error: &api.ErrorBody{Code: api.CodeNotFound, Message: "no image recipe " + r.PathValue("name")}})
				return
			}
			enc.Encode(api.ImageBuildEvent{Type: "progress", Message: "fetch kernel"})
			enc.Encode(api.ImageBuildEvent{Type: "progress", Message: "pack rootfs"})
			enc.Encode(api.ImageBuildEvent{Type: "done", Image: &img})
		},
	})
	code, out, _ := runCLI(t, addr, "", "image", "ls")
	want := "NAME   KEY            SIZE    STORED   AGE\ntiny   0123456789ab   20MiB   yes      2d\n"
	if code != 0 || out != want {
		t.Errorf("image ls: exit %d, stdout\n%s\nwant\n%s", code, out, want)
	}
	code, out, errOut := runCLI(t, addr, "", "image", "build", "tiny")
	if code != 0 || out != img.Key+"\n" || errOut != "fetch kernel\npack rootfs\n" {
		t.Errorf("image build: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = runCLI(t, addr, "", "image", "build", "nope")
	if code != 1 || errOut != "cove: no image recipe nope\n" {
		t.Errorf("image build nope: exit %d, stderr %q", code, errOut)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestHumanAge protects the AGE column's units.
func TestHumanAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                          "0s",
		0:                                     "0s",
		5 * time.Second:                       "5s",
		59*time.Second + 900*time.Millisecond: "59s",
		time.Minute:                           "1m",
		3*time.Minute + 59*time.Second:        "3m",
		2 * time.Hour:                         "2h",
		23*time.Hour + 59*time.Minute:         "23h",
		24 * time.Hour:                        "1d",
		4*24*time.Hour + 5*time.Hour:          "4d",
	} {
		if got := humanAge(d); got != want {
			t.Errorf("humanAge(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestHumanBytes protects the SIZE column.
func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1023: "1023B", 1536: "1.5KiB", 20 << 20: "20MiB", 1288490189: "1.2GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
