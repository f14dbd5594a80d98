package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cove-dev/cove/api"
)

// TestHookCommands protects hook add, ls and rm against a fake server: the
// secret read from a file or stdin without its trailing newline, empty
// secrets refused before the server, and rm's per-name errors.
func TestHookCommands(t *testing.T) {
	var mu sync.Mutex
	secrets := map[string]string{"github": "gh"} // guarded by mu
	addr := fakeAPI(t, map[string]http.HandlerFunc{
		"PUT /v1/hook-secrets/{name}": func(w http.ResponseWriter, r *http.Request) {
			var req api.HookSecretRequest
			d := json.NewDecoder(r.Body)
			d.DisallowUnknownFields()
			if err := d.Decode(&req); err != nil || req.Secret == "" {
				writeError(w, api.CodeInvalid, "bad secret")
				return
			}
			mu.Lock()
			secrets[r.PathValue("name")] = req.Secret
			mu.Unlock()
			w.WriteHeader(204)
		},
		"GET /v1/hook-secrets": func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			var names []string
			for n := range secrets {
				names = append(names, n)
			}
			mu.Unlock()
			slices.Sort(names)
			writeJSON(w, 200, map[string]any{"hooks": names})
		},
		"DELETE /v1/hook-secrets/{name}": func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			name := r.PathValue("name")
			if _, ok := secrets[name]; !ok {
				writeError(w, api.CodeNotFound, `no hook "`+name+`"`)
				return
			}
			delete(secrets, name)
			w.WriteHeader(204)
		},
	})
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	code, out, errOut := runCLI(t, addr, "", "hook", "add", "ci", "--secret-file", write("ci", "s3cret\n"))
	if code != 0 || out != "ci\n" || errOut != "" {
		t.Errorf("add: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = runCLI(t, addr, "k3y\r\n", "hooks", "add", "deploy", "--secret-file", "-")
	if code != 0 {
		t.Errorf("add from stdin: exit %d, stderr %q", code, errOut)
	}
	// Only one newline goes; inner whitespace stays.
	runCLI(t, addr, "", "hook", "add", "two", "--secret-file", write("two", " a b\n\n"))
	mu.Lock()
	if secrets["ci"] != "s3cret" || secrets["deploy"] != "k3y" || secrets["two"] != " a b\n" {
		t.Errorf("secrets %q", secrets)
	}
	mu.Unlock()

	for _, tc := range []struct {
		args  []string
		stdin string
		code  int
		err   string
	}{
		{[]string{"hook", "add", "x", "--secret-file", write("empty", "")}, "", 1, "is empty"},
		{[]string{"hook", "add", "x", "--secret-file", write("nl", "\n")}, "", 1, "is empty"},
		{[]string{"hook", "add", "x", "--secret-file", "-"}, "\n", 1, "is empty"},
		{[]string{"hook", "add", "x", "--secret-file", filepath.Join(dir, "missing")}, "", 1, "read secret"},
		{[]string{"hook", "add", "x"}, "", 2, "--secret-file is required"},
		{[]string{"hook", "add", "--secret-file", write("y", "y")}, "", 2, "accepts 1 arg"},
	} {
		code, _, errOut := runCLI(t, addr, tc.stdin, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.err) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, errOut, tc.code, tc.err)
		}
	}
	mu.Lock()
	if _, ok := secrets["x"]; ok {
		t.Errorf("an empty secret reached the server")
	}
	mu.Unlock()

	code, out, _ = runCLI(t, addr, "", "hook", "ls")
	if code != 0 || out != "ci\ndeploy\ngithub\ntwo\n" {
		t.Errorf("ls: exit %d, stdout %q", code, out)
	}
	code, out, errOut = runCLI(t, addr, "", "hook", "rm", "ci", "nope", "two")
	if code != 1 || out != "ci\ntwo\n" || errOut != "cove: hook rm nope: no hook \"nope\"\n" {
		t.Errorf("rm: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = runCLI(t, addr, "", "hook", "ls")
	if code != 0 || out != "deploy\ngithub\n" {
		t.Errorf("ls after rm: exit %d, stdout %q", code, out)
	}
}
