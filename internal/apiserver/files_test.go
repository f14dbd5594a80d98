package apiserver

import (
	"archive/tar"
	"bytes"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
)

func TestFilesRoundTrip(t *testing.T) {
	e := newEnv(t)
	data := make([]byte, 3<<20+17)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(data)

	if resp := e.do("PUT", "/v1/sessions/s1/files?path=/work/sub/blob.bin&mode=0600", bytes.NewReader(data)); resp.StatusCode != 204 {
		t.Fatalf("put: %d", resp.StatusCode)
	}
	resp := e.do("GET", "/v1/sessions/s1/files?path=/work/sub/blob.bin", nil)
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/octet-stream" || !bytes.Equal(got, data) {
		t.Fatalf("get: %d %q, %d bytes (equal %v)", resp.StatusCode, resp.Header.Get("Content-Type"), len(got), bytes.Equal(got, data))
	}
	fi := decode[api.FileInfo](t, e.do("GET", "/v1/sessions/s1/files/stat?path=/work/sub/blob.bin", nil), 200)
	if fi.Name != "blob.bin" || fi.Size != int64(len(data)) || fi.Mode != 0o600 || fi.IsDir {
		t.Fatalf("stat %+v", fi)
	}

	if resp := e.do("POST", "/v1/sessions/s1/files/mkdir?path=/work/empty", nil); resp.StatusCode != 204 {
		t.Fatalf("mkdir: %d", resp.StatusCode)
	}
	list := decode[fileList](t, e.do("GET", "/v1/sessions/s1/files/list?path=/work", nil), 200)
	var names []string
	for _, f := range list.Files {
		names = append(names, f.Name)
	}
	if !slices.Equal(names, []string{"empty", "sub"}) {
		t.Fatalf("list /work: %v", names)
	}

	if resp := e.do("DELETE", "/v1/sessions/s1/files?path=/work/sub", nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	wantError(t, e.do("GET", "/v1/sessions/s1/files?path=/work/sub/blob.bin", nil), 404, api.CodeNotFound)
	// An empty directory lists as [], not null.
	resp = e.do("GET", "/v1/sessions/s1/files/list?path=/work/empty", nil)
	if body, _ := io.ReadAll(resp.Body); strings.TrimSpace(string(body)) != `{"files":[]}` {
		t.Fatalf("empty list: %s", body)
	}
}

func TestFilesTar(t *testing.T) {
	e := newEnv(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range map[string]string{"a.txt": "alpha", "d/b.txt": "beta"} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.Close()
	if resp := e.do("PUT", "/v1/sessions/s1/files?path=/dst", &buf, "Content-Type", "application/x-tar"); resp.StatusCode != 204 {
		t.Fatalf("put tar: %d", resp.StatusCode)
	}

	resp := e.do("GET", "/v1/sessions/s1/files?path=/dst&format=tar", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-tar" {
		t.Fatalf("get tar: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	got := map[string]string{}
	tr := tar.NewReader(resp.Body)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[h.Name] = string(b)
	}
	want := map[string]string{"dst/": "", "dst/a.txt": "alpha", "dst/d/": "", "dst/d/b.txt": "beta"}
	if len(got) != len(want) {
		t.Fatalf("tar entries %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("entry %q = %q, want %q", k, got[k], v)
		}
	}
	wantError(t, e.do("GET", "/v1/sessions/s1/files?path=/dst&format=zip", nil), 400, api.CodeInvalid)
}

func TestFileUploadLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxFileBytes = 1 << 10 })
	big := strings.Repeat("x", 2<<10)
	// A declared length past the limit is refused before the service is asked.
	wantError(t, e.do("PUT", "/v1/sessions/s1/files?path=/f", strings.NewReader(big)), 413, api.CodeTooLarge)
	if n := e.fake.calls.Load(); n != 0 {
		t.Errorf("session manager called %d times", n)
	}
	// A chunked body is cut at the limit, whatever the service makes of it.
	wantError(t, e.do("PUT", "/v1/sessions/s1/files?path=/f", io.MultiReader(strings.NewReader(big))), 413, api.CodeTooLarge)
	// At the limit is fine.
	if resp := e.do("PUT", "/v1/sessions/s1/files?path=/f", strings.NewReader(big[:1<<10])); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("put at the limit: %d", resp.StatusCode)
	}
}
