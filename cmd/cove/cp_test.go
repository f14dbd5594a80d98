package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
)

// TestPlanCopy protects how cp tells local from ID:PATH arguments.
func TestPlanCopy(t *testing.T) {
	tests := []struct {
		src, dst string
		want     copyPlan
		wantErr  string
	}{
		{src: "a.txt", dst: "s1:/tmp/a", want: copyPlan{upload: true, id: "s1", remote: "/tmp/a", local: "a.txt"}},
		{src: "-", dst: "s1:/x", want: copyPlan{upload: true, id: "s1", remote: "/x", local: "-"}},
		{src: "s1:/etc/hosts", dst: ".", want: copyPlan{id: "s1", remote: "/etc/hosts", local: "."}},
		{src: "s1:/a:b", dst: "./c:d", want: copyPlan{id: "s1", remote: "/a:b", local: "./c:d"}},
		{src: "s1:/x", dst: "s2:/y", wantErr: "between sessions"},
		{src: "a", dst: "./b:c", wantErr: "must be ID:PATH"},
		{src: ":/x", dst: "b", wantErr: "must be ID:PATH"},
		{src: "a", dst: "s1:rel/path", wantErr: "not absolute"},
		{src: "a", dst: "s1:", wantErr: "not absolute"},
		{src: "s1:/x", dst: "", wantErr: "empty local path"},
	}
	for _, tt := range tests {
		got, err := planCopy(tt.src, tt.dst)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("planCopy(%q, %q) err = %v, want %q", tt.src, tt.dst, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("planCopy(%q, %q) = %+v, %v; want %+v", tt.src, tt.dst, got, err, tt.want)
		}
	}
}

// fakeFiles serves the files endpoints of session s1 from the local
// directory guest, as the contract describes them.
func fakeFiles(t *testing.T, guest string) string {
	local := func(w http.ResponseWriter, r *http.Request) (string, bool) {
		if r.PathValue("id") != "s1" {
			writeError(w, api.CodeNotFound, "session "+r.PathValue("id")+" not found")
			return "", false
		}
		p := r.URL.Query().Get("path")
		if !strings.HasPrefix(p, "/") {
			writeError(w, api.CodeInvalid, "path must be absolute")
			return "", false
		}
		return filepath.Join(guest, filepath.FromSlash(p)), true
	}
	fail := func(w http.ResponseWriter, err error) {
		if errors.Is(err, fs.ErrNotExist) {
			writeError(w, api.CodeNotFound, err.Error())
			return
		}
		writeError(w, api.CodeInternal, err.Error())
	}
	return fakeAPI(t, map[string]http.HandlerFunc{
		"GET /v1/sessions/{id}/files/stat": func(w http.ResponseWriter, r *http.Request) {
			p, ok := local(w, r)
			if !ok {
				return
			}
			fi, err := os.Stat(p)
			if err != nil {
				fail(w, err)
				return
			}
			writeJSON(w, 200, api.FileInfo{Name: fi.Name(), Size: fi.Size(), Mode: uint32(fi.Mode().Perm()), IsDir: fi.IsDir(), ModTime: fi.ModTime()})
		},
		"GET /v1/sessions/{id}/files": func(w http.ResponseWriter, r *http.Request) {
			p, ok := local(w, r)
			if !ok {
				return
			}
			if r.URL.Query().Get("format") == "tar" {
				w.Header().Set("Content-Type", "application/x-tar")
				if err := writeTar(w, p); err != nil {
					t.Errorf("fake GetTar: %v", err)
				}
				return
			}
			b, err := os.ReadFile(p)
			if err != nil {
				fail(w, err)
				return
			}
			w.Write(b)
		},
		"PUT /v1/sessions/{id}/files": func(w http.ResponseWriter, r *http.Request) {
			p, ok := local(w, r)
			if !ok {
				return
			}
			if r.Header.Get("Content-Type") == "application/x-tar" {
				if err := os.MkdirAll(p, 0o755); err != nil {
					fail(w, err)
					return
				}
				if err := extractTar(r.Body, p, 0); err != nil {
					writeError(w, api.CodeInvalid, err.Error())
					return
				}
				w.WriteHeader(204)
				return
			}
			mode := int64(0o644)
			if m := r.URL.Query().Get("mode"); m != "" {
				var err error
				if mode, err = strconv.ParseInt(m, 8, 32); err != nil {
					writeError(w, api.CodeInvalid, "bad mode")
					return
				}
			}
			b, _ := io.ReadAll(r.Body)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, b, 0); err != nil {
				fail(w, err)
				return
			}
			os.Chmod(p, fs.FileMode(mode))
			w.WriteHeader(204)
		},
	})
}

// TestCpCommand protects cp's upload and download placement rules against
// a fake server backed by a directory.
func TestCpCommand(t *testing.T) {
	guest := t.TempDir()
	addr := fakeFiles(t, guest)
	os.MkdirAll(filepath.Join(guest, "srv", "data", "nested"), 0o755)
	os.WriteFile(filepath.Join(guest, "srv", "data", "nested", "n.txt"), []byte("nested"), 0o640)
	os.WriteFile(filepath.Join(guest, "etc-hosts"), []byte("127.0.0.1 localhost\n"), 0o644)
	os.WriteFile(filepath.Join(guest, "tool"), []byte("#!/bin/sh\n"), 0o755)

	work := t.TempDir()
	localFile := filepath.Join(work, "script.sh")
	os.WriteFile(localFile, []byte("echo hi\n"), 0o750)
	localDir := filepath.Join(work, "proj")
	os.MkdirAll(filepath.Join(localDir, "src"), 0o755)
	os.WriteFile(filepath.Join(localDir, "src", "main.go"), []byte("package main\n"), 0o644)

	expectFile := func(t *testing.T, p, body string, perm fs.FileMode) {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil || string(b) != body {
			t.Errorf("%s: %q, %v; want %q", p, b, err, body)
			return
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != perm {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), perm)
		}
	}
	ok := func(t *testing.T, stdin string, args ...string) string {
		t.Helper()
		code, out, errOut := runCLI(t, addr, stdin, append([]string{"cp"}, args...)...)
		if code != 0 {
			t.Fatalf("cove cp %q: exit %d, stderr %q", args, code, errOut)
		}
		return out
	}

	t.Run("upload file keeps mode", func(t *testing.T) {
		ok(t, "", localFile, "s1:/up/new.sh")
		expectFile(t, filepath.Join(guest, "up", "new.sh"), "echo hi\n", 0o750)
	})
	t.Run("upload file into directory", func(t *testing.T) {
		ok(t, "", localFile, "s1:/srv")
		expectFile(t, filepath.Join(guest, "srv", "script.sh"), "echo hi\n", 0o750)
		ok(t, "", localFile, "s1:/fresh/")
		expectFile(t, filepath.Join(guest, "fresh", "script.sh"), "echo hi\n", 0o750)
	})
	t.Run("upload stdin", func(t *testing.T) {
		ok(t, "from stdin", "-", "s1:/stdin.txt")
		expectFile(t, filepath.Join(guest, "stdin.txt"), "from stdin", 0o644)
	})
	t.Run("upload directory", func(t *testing.T) {
		ok(t, "", localDir, "s1:/work")
		expectFile(t, filepath.Join(guest, "work", "proj", "src", "main.go"), "package main\n", 0o644)
	})
	t.Run("download file", func(t *testing.T) {
		dst := filepath.Join(work, "hosts")
		ok(t, "", "s1:/etc-hosts", dst)
		expectFile(t, dst, "127.0.0.1 localhost\n", 0o644)
		ok(t, "", "s1:/tool", work)
		expectFile(t, filepath.Join(work, "tool"), "#!/bin/sh\n", 0o755)
	})
	t.Run("download file to stdout", func(t *testing.T) {
		if out := ok(t, "", "s1:/etc-hosts", "-"); out != "127.0.0.1 localhost\n" {
			t.Errorf("stdout %q", out)
		}
	})
	t.Run("download directory", func(t *testing.T) {
		dst := filepath.Join(work, "out")
		ok(t, "", "s1:/srv/data", dst)
		expectFile(t, filepath.Join(dst, "data", "nested", "n.txt"), "nested", 0o640)
	})
	t.Run("download directory to stdout as tar", func(t *testing.T) {
		out := ok(t, "", "s1:/srv/data", "-")
		hdr, err := tar.NewReader(bytes.NewReader([]byte(out))).Next()
		if err != nil || hdr.Name != "data/" {
			t.Errorf("first entry %v, %v", hdr, err)
		}
	})
	t.Run("errors", func(t *testing.T) {
		code, _, errOut := runCLI(t, addr, "", "cp", "s1:/missing", work)
		if code != 1 || !strings.HasPrefix(errOut, "cove: ") {
			t.Errorf("missing: exit %d, stderr %q", code, errOut)
		}
		code, _, errOut = runCLI(t, addr, "", "cp", filepath.Join(work, "nope"), "s1:/x")
		if code != 1 || !strings.Contains(errOut, "no such file") {
			t.Errorf("missing local: exit %d, stderr %q", code, errOut)
		}
		code, _, errOut = runCLI(t, addr, "", "cp", "s1:/etc-hosts", filepath.Join(work, "nodir")+"/")
		if code != 1 || !strings.Contains(errOut, "does not exist") {
			t.Errorf("missing local dir: exit %d, stderr %q", code, errOut)
		}
	})
}
