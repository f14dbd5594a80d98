package main

import (
	"encoding/json"
	"net/http"
	"strings"
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

	t.Run("create", func(t *testing.T) {
		code, out, errOut := runCLI(t, addr, "", "template", "create", "py", "--image", "tiny", "--memory", "1024", "--cpus", "2",
			"--env", "A=1", "--setup", "apk add python3", "--setup", "pip install 'x y'", "--start", "pyright --stdio", "--pool", "2")
		if code != 0 || out != "py ready image=tiny snapshot=180MiB pool=2\n" || errOut != "building template py…\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		want := api.CreateTemplateRequest{Name: "py", Image: "tiny", MemoryMiB: 1024, CPUs: 2, Env: map[string]string{"A": "1"},
			Setup: []string{"apk add python3", "pip install 'x y'"}, Start: "pyright --stdio", Pool: 2}
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
			"NAME       STATE      IMAGE    POOL   READY   SNAPSHOT   AGE\n" +
			"node-lsp   building   debian   0      0       -          20s\n" +
			"py         ready      tiny     2      1       180MiB     3h\n"
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
