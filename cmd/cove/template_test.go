package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestTemplateCommands protects template create, ls, inspect and rm
// against a fake server: the request create sends, the progress and result
// lines, the table, and rm's per-name errors.
func TestTemplateCommands(t *testing.T) {
	py := api.Template{Name: "py", State: api.TemplateReady, Image: "tiny", Pool: 2, PoolReady: 1,
		Snapshot: &api.SnapshotInfo{DiskBytes: 180 << 20}, CreatedAt: testNow.Add(-3 * time.Hour)}
	building := api.Template{Name: "node-lsp", State: api.TemplateBuilding, Image: "debian", CreatedAt: testNow.Add(-20 * time.Second)}
	var got api.CreateTemplateRequest
	addr := fakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/templates": func(w http.ResponseWriter, r *http.Request) {
			got = api.CreateTemplateRequest{}
			d := json.NewDecoder(r.Body)
			d.DisallowUnknownFields()
			if err := d.Decode(&got); err != nil {
				writeError(w, api.CodeInvalid, err.Error())
				return
			}
			if got.Name == "bad" {
				writeError(w, api.CodeInvalid, `template bad: setup step 1 ("false") exited 1`)
				return
			}
			writeJSON(w, 201, py)
		},
		"GET /v1/templates": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]any{"templates": []api.Template{py, building}})
		},
		"GET /v1/templates/{name}": func(w http.ResponseWriter, r *http.Request) {
			if r.PathValue("name") != "py" {
				writeError(w, api.CodeNotFound, `template "`+r.PathValue("name")+`" not found`)
				return
			}
			writeJSON(w, 200, py)
		},
		"PUT /v1/templates/{name}/pool": func(w http.ResponseWriter, r *http.Request) {
			var req api.SetPoolRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Size == nil {
				writeError(w, api.CodeInvalid, "size: required (0..64)")
				return
			}
			if r.PathValue("name") != "py" {
				writeError(w, api.CodeNotFound, `template "`+r.PathValue("name")+`" not found`)
				return
			}
			if *req.Size > 64 {
				writeError(w, api.CodeInvalid, fmt.Sprintf("size %d: want 0..64", *req.Size))
				return
			}
			p := py
			p.Pool = *req.Size
			writeJSON(w, 200, p)
		},
		"DELETE /v1/templates/{name}": func(w http.ResponseWriter, r *http.Request) {
			switch r.PathValue("name") {
			case "py":
				writeError(w, api.CodeConflict, `template "py" has 1 live clone(s) (s1): remove them first`)
			case "node-lsp":
				w.WriteHeader(204)
			default:
				writeError(w, api.CodeNotFound, `template "`+r.PathValue("name")+`" not found`)
			}
		},
	})

	t.Run("pool", func(t *testing.T) {
		code, out, errOut := runCLI(t, addr, "", "template", "pool", "py", "5")
		if code != 0 || out != "py pool=5 ready=1\n" {
			t.Errorf("pool py 5: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		code, _, errOut = runCLI(t, addr, "", "template", "pool", "py", "99")
		if code != 1 || errOut != "cove: size 99: want 0..64\n" {
			t.Errorf("pool py 99: exit %d, stderr %q", code, errOut)
		}
		code, _, errOut = runCLI(t, addr, "", "template", "pool", "zz", "1")
		if code != 1 || errOut != "cove: template \"zz\" not found\n" {
			t.Errorf("pool of a missing template: exit %d, stderr %q", code, errOut)
		}
		code, _, errOut = runCLI(t, addr, "", "template", "pool", "py", "many")
		if code != 2 || !strings.Contains(errOut, `pool size "many": want a number 0..64`) {
			t.Errorf("pool py many: exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("create", func(t *testing.T) {
		code, out, errOut := runCLI(t, addr, "", "template", "create", "py", "--image", "tiny", "--memory", "1024", "--cpus", "2",
			"--env", "A=1", "--setup", "apk add python3", "--setup", "pip install 'x y'", "--start", "pyright --stdio", "--pool", "2",
			"--agent", "builder")
		if code != 0 || out != "py ready image=tiny snapshot=180MiB pool=2\n" || errOut != "building template py…\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		want := api.CreateTemplateRequest{Name: "py", Image: "tiny", MemoryMiB: 1024, CPUs: 2, Env: map[string]string{"A": "1"},
			Setup: []string{"apk add python3", "pip install 'x y'"}, Start: "pyright --stdio", Pool: 2, Agent: "builder"}
		if b1, b2 := mustJSON(got), mustJSON(want); b1 != b2 {
			t.Errorf("server got %s, want %s", b1, b2)
		}
		// Zero flags send only the name.
		runCLI(t, addr, "", "template", "create", "py")
		if b := mustJSON(got); b != `{"name":"py"}` {
			t.Errorf("server got %s", b)
		}
	})
	t.Run("create fails", func(t *testing.T) {
		code, out, errOut := runCLI(t, addr, "", "template", "create", "bad", "--setup", "false")
		if code != 1 || out != "" || !strings.HasSuffix(errOut, "cove: template bad: setup step 1 (\"false\") exited 1\n") {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
	})
	t.Run("ls", func(t *testing.T) {
		code, out, _ := runCLI(t, addr, "", "template", "ls")
		want := "" +
			"NAME       STATE      VERSION   IMAGE    POOL   READY   SNAPSHOT   AGE\n" +
			"node-lsp   building   1         debian   0      0       -          20s\n" +
			"py         ready      1         tiny     2      1       180MiB     3h\n"
		if code != 0 || out != want {
			t.Errorf("exit %d, stdout\n%s\nwant\n%s", code, out, want)
		}
	})
	t.Run("ls json", func(t *testing.T) {
		code, out, _ := runCLI(t, addr, "", "templates", "list", "--json")
		var ts []api.Template
		if err := json.Unmarshal([]byte(out), &ts); code != 0 || err != nil || len(ts) != 2 || ts[0].Name != "py" {
			t.Errorf("exit %d, stdout %q (%v)", code, out, err)
		}
	})
	t.Run("inspect", func(t *testing.T) {
		code, out, _ := runCLI(t, addr, "", "template", "inspect", "py")
		if code != 0 || !strings.Contains(out, "\n  \"name\": \"py\",\n") {
			t.Errorf("exit %d, stdout %q", code, out)
		}
		code, _, errOut := runCLI(t, addr, "", "template", "inspect", "zz")
		if code != 1 || errOut != "cove: template \"zz\" not found\n" {
			t.Errorf("exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("rm", func(t *testing.T) {
		code, out, errOut := runCLI(t, addr, "", "template", "rm", "py", "node-lsp", "zz")
		wantErr := "cove: template rm py: template \"py\" has 1 live clone(s) (s1): remove them first\n" +
			"cove: template rm zz: template \"zz\" not found\n"
		if code != 1 || out != "node-lsp\n" || errOut != wantErr {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
	})
}

// TestTemplateRepoCommands protects create --repo, history and rebuild
// against a fake server: the request, the one-line result with version
// and commit, the history table with a failed build's error, and rebuild
// --wait reporting the new version or the failure.
func TestTemplateRepoCommands(t *testing.T) {
	c1, c2 := strings.Repeat("a1", 20), strings.Repeat("b2", 20)
	api1 := api.Template{Name: "api", State: api.TemplateReady, Image: "debian", Repo: "https://github.com/acme/api.git",
		Branch: "main", RepoDir: "/workspace", RepoName: "acme/api", Version: 2, Commit: c2,
		Snapshot: &api.SnapshotInfo{DiskBytes: 200 << 20}, CreatedAt: testNow.Add(-2 * time.Hour)}
	versions := []api.TemplateVersion{
		{Version: 1, State: api.VersionRemoved, Commit: c1, Reason: "create", BuildMillis: 9100, CreatedAt: testNow.Add(-2 * time.Hour)},
		{Version: 2, State: api.VersionReady, Commit: c2, Base: 1, Reason: "push d-7", BuildMillis: 2300, Current: true, Sessions: 3, Stored: true, CreatedAt: testNow.Add(-time.Hour)},
		{Version: 3, State: api.VersionFailed, Commit: c1, Base: 2, Reason: "rebuild", Error: "setup step 1 (\"make\") exited 2: boom", CreatedAt: testNow.Add(-time.Minute)},
	}
	var got api.CreateTemplateRequest
	var rebuilds int
	var mu sync.Mutex
	addr := fakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/templates": func(w http.ResponseWriter, r *http.Request) {
			got = api.CreateTemplateRequest{}
			if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
				writeError(w, api.CodeInvalid, err.Error())
				return
			}
			writeJSON(w, 201, api1)
		},
		"GET /v1/templates/{name}/versions": func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			switch r.PathValue("name") {
			case "api":
				writeJSON(w, 200, map[string]any{"versions": versions[:2+min(rebuilds, 1)]})
			case "web":
				vs := versions[:2]
				if rebuilds > 0 {
					vs = append(vs[:2:2], api.TemplateVersion{Version: 3, State: api.VersionReady, Commit: c2, Base: 2, Reason: "rebuild", BuildMillis: 1500})
				}
				writeJSON(w, 200, map[string]any{"versions": vs})
			default:
				writeError(w, api.CodeNotFound, `template "`+r.PathValue("name")+`" not found`)
			}
		},
		"POST /v1/templates/{name}/rebuild": func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			rebuilds++
			mu.Unlock()
			writeJSON(w, 202, api1)
		},
	})
	t.Run("create", func(t *testing.T) {
		code, out, _ := runCLI(t, addr, "", "template", "create", "api", "--image", "debian",
			"--repo", "https://github.com/acme/api.git", "--branch", "release/2", "--repo-dir", "/src/api", "--setup", "make deps")
		if code != 0 || out != "api ready image=debian snapshot=200MiB pool=0 version=2 commit=b2b2b2b2b2b2\n" {
			t.Fatalf("exit %d, stdout %q", code, out)
		}
		want := `{"name":"api","image":"debian","setup":["make deps"],"repo":"https://github.com/acme/api.git","branch":"release/2","repo_dir":"/src/api"}`
		if b := mustJSON(got); b != want {
			t.Errorf("server got %s, want %s", b, want)
		}
		code, _, errOut := runCLI(t, addr, "", "template", "create", "api", "--branch", "main")
		if code != 2 || !strings.Contains(errOut, "--branch and --repo-dir need --repo") {
			t.Errorf("--branch without --repo: exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("history", func(t *testing.T) {
		mu.Lock()
		rebuilds = 0
		mu.Unlock()
		code, out, _ := runCLI(t, addr, "", "template", "history", "api")
		want := "" +
			"VERSION   STATE     COMMIT         BASE   SESSIONS   BUILD   STORED   WHY        AGE\n" +
			"1         removed   a1a1a1a1a1a1   -      0          9.1s    no       create     2h\n" +
			"2*        ready     b2b2b2b2b2b2   1      3          2.3s    yes      push d-7   1h\n"
		if code != 0 || out != want {
			t.Errorf("exit %d, stdout\n%s\nwant\n%s", code, out, want)
		}
		code, _, errOut := runCLI(t, addr, "", "template", "history", "zz")
		if code != 1 || errOut != "cove: template \"zz\" not found\n" {
			t.Errorf("history of a missing template: exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("rebuild", func(t *testing.T) {
		code, out, _ := runCLI(t, addr, "", "template", "rebuild", "web")
		if code != 0 || out != "rebuild of web queued\n" {
			t.Errorf("exit %d, stdout %q", code, out)
		}
		mu.Lock()
		rebuilds = 0
		mu.Unlock()
		code, out, _ = runCLI(t, addr, "", "template", "rebuild", "web", "--wait", "10s")
		if code != 0 || out != "web version=3 commit=b2b2b2b2b2b2 build=1500ms\n" {
			t.Errorf("rebuild --wait: exit %d, stdout %q", code, out)
		}
		mu.Lock()
		rebuilds = 0
		mu.Unlock()
		code, _, errOut := runCLI(t, addr, "", "template", "rebuild", "api", "--wait", "10s")
		if code != 1 || !strings.Contains(errOut, "template api version 3 failed: setup step 1") {
			t.Errorf("failed rebuild --wait: exit %d, stderr %q", code, errOut)
		}
		code, out, _ = runCLI(t, addr, "", "template", "history", "api")
		if code != 0 || !strings.HasSuffix(out, "version 3: setup step 1 (\"make\") exited 2: boom\n") {
			t.Errorf("history with a failed build: exit %d, stdout %q", code, out)
		}
	})
}
