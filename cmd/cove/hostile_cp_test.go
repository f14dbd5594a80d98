package main_test

// File transfers with a hostile guest (issue 13, items 1, 7, 8 and 9): the
// guest builds what an attacker would, through exec, and the real CLI and
// REST API copy from and to it.

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cove-dev/cove/api"
)

func TestHostileCopies(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer()
	id := e.create()
	guest := func(script string) string {
		t.Helper()
		return e.ok(nil, "exec", id, "--", "sh", "-euc", script)
	}

	// Item 1: a chain of links, each inside taken alone, leads outside the
	// destination of cove cp; a second copy then writes through it.
	t.Run("SymlinkChainEscape", func(t *testing.T) {
		outside := t.TempDir() // where the attack aims: it exists, so a write would land
		ws := filepath.Join(t.TempDir(), "ws")
		var deep []string
		for i := 1; i <= 19; i++ {
			deep = append(deep, fmt.Sprintf("x%d", i))
		}
		chain := strings.Join(deep, "/")
		// Read as text, out/x1/…/x19/up/ and 21 ".." come back to ws, so
		// results reads as ws/<outside>; in fact up is out, and 21 ".."
		// from out reach the host's /.
		results := chain + "/up/" + strings.Repeat("../", 21) + strings.TrimPrefix(outside, "/")
		guest(fmt.Sprintf(`mkdir -p /evil/w/out/%[1]s
ln -s %[2]s /evil/w/out/%[1]s/up
ln -s %[3]s /evil/w/out/results
echo owned > /evil/report.txt`, chain, strings.Repeat("../", 19), results))

		_, errOut, code := e.run(nil, "cp", id+":/evil/w/out", ws)
		if code == 0 || !strings.Contains(errOut, "steps back out of a symlink") {
			t.Errorf("cp of the chain: exit %d, stderr %q; want it refused", code, errOut)
		}
		if r, err := filepath.EvalSymlinks(filepath.Join(ws, "out", "results")); err == nil && !strings.HasPrefix(r, ws+"/") {
			t.Errorf("ws/out/results was left, resolving outside ws to %s", r)
		}
		_, errOut, code = e.run(nil, "cp", id+":/evil/report.txt", filepath.Join(ws, "out", "results")+"/")
		if code == 0 {
			t.Errorf("the second copy, through out/results, succeeded: %q", errOut)
		}
		if _, err := os.Lstat(filepath.Join(outside, "report.txt")); err == nil {
			t.Fatal("report.txt was written outside the destination")
		}
		// The REST archive is the guest's, byte for byte: the links are in
		// it, and only the client's extraction judges them.
		resp := e.get(id, url.Values{"path": {"/evil/w/out"}, "format": {"tar"}})
		defer resp.Body.Close()
		links := 0
		tr := tar.NewReader(resp.Body)
		for {
			hdr, err := tr.Next()
			if err != nil {
				break
			}
			if hdr.Typeflag == tar.TypeSymlink {
				links++
			}
		}
		if resp.StatusCode != 200 || links != 2 {
			t.Errorf("GET format=tar: %d with %d symlinks, want 200 with the 2", resp.StatusCode, links)
		}
	})

	// Item 8: reading a FIFO is refused at once, not a read that waits for
	// a writer.
	t.Run("FIFO", func(t *testing.T) {
		guest("mkfifo /tmp/fifo")
		_, errOut, code := e.run(nil, "cp", id+":/tmp/fifo", filepath.Join(t.TempDir(), "x"))
		if code == 0 || !strings.Contains(errOut, "not a regular file") {
			t.Errorf("cp of a FIFO: exit %d, stderr %q; want not a regular file", code, errOut)
		}
		e.wantError(e.get(id, url.Values{"path": {"/tmp/fifo"}}), 400, api.CodeInvalid, "not a regular file")
	})

	// Item 7: a sparse file stays sparse on the host, and a download is
	// bounded by a limit the caller can raise.
	t.Run("SparseAndMaxSize", func(t *testing.T) {
		guest(`truncate -s 1G /tmp/big
mkdir -p /tmp/sp
printf middle | dd of=/tmp/sp/file bs=1 seek=10485760 2>/dev/null
truncate -s 32M /tmp/sp/file`)
		dir := t.TempDir()
		_, errOut, code := e.run(nil, "cp", "--max-size", "64M", id+":/tmp/big", filepath.Join(dir, "big"))
		if code == 0 || !strings.Contains(errOut, "over the limit") || !strings.Contains(errOut, "--max-size") {
			t.Errorf("cp of a 1 GiB file with --max-size 64M: exit %d, stderr %q; want refused, naming --max-size", code, errOut)
		}
		_, errOut, code = e.run(nil, "cp", "--max-size", "16M", id+":/tmp/sp", dir)
		if code == 0 || !strings.Contains(errOut, "more than 16777216 bytes") {
			t.Errorf("cp of a directory of 32 MiB with --max-size 16M: exit %d, stderr %q; want refused", code, errOut)
		}
		if _, err := os.Stat(filepath.Join(dir, "big")); err == nil {
			t.Error("the refused download left a file")
		}
		e.wantError(e.get(id, url.Values{"path": {"/tmp/big"}, "max_size": {"1048576"}}), 413, api.CodeTooLarge, "over max_size")
		// An archive past max_size is cut: the client sees a broken answer.
		resp := e.get(id, url.Values{"path": {"/tmp/sp"}, "format": {"tar"}, "max_size": {"1048576"}})
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil || n > 1048576 {
			t.Errorf("GET format=tar of 32 MiB with max_size 1 MiB: %d bytes, %v; want cut at 1 MiB", n, err)
		}

		local := filepath.Join(dir, "sparse")
		e.ok(nil, "cp", id+":/tmp/sp/file", local)
		b, err := os.ReadFile(local)
		if err != nil || len(b) != 32<<20 || string(b[10<<20:10<<20+6]) != "middle" {
			t.Fatalf("sparse download: %d bytes, %v", len(b), err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(local, &st); err != nil {
			t.Fatal(err)
		}
		if used := st.Blocks * 512; used > 1<<20 {
			t.Errorf("a 32 MiB file of 6 data bytes uses %d bytes of the host's disk, want holes", used)
		}
	})

	// Item 9: uploads are all or nothing, and their errors say whose fault
	// they are.
	t.Run("UploadAllOrNothing", func(t *testing.T) {
		var escaping bytes.Buffer
		tw := tar.NewWriter(&escaping)
		for _, name := range []string{"new/ok.txt", "../escaped.txt"} {
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: 2, Typeflag: tar.TypeReg})
			tw.Write([]byte("x\n"))
		}
		tw.Close()
		truncated := escaping.Bytes()[:512+1] // new/ok.txt's header, its data cut
		for _, tc := range []struct {
			name string
			body []byte
		}{
			{"garbage", bytes.Repeat([]byte("not a tar "), 1000)},
			{"escaping entry after a good one", escaping.Bytes()},
			{"truncated", truncated},
		} {
			resp := e.put(id, "/root/up", "application/x-tar", tc.body)
			e.wantError(resp, 400, api.CodeInvalid, "")
		}
		if got := guest("ls -A /root/up /root/escaped.txt 2>&1 || true"); !strings.Contains(got, "No such file") || strings.Contains(got, "new") {
			t.Errorf("after the refused uploads the guest holds: %q; want nothing", got)
		}
	})

	// Item 9: a full disk in the guest is 507 with the cause, and leaves
	// nothing half-written.
	t.Run("DiskFull", func(t *testing.T) {
		guest("mkdir -p /mnt/small && mount -t tmpfs -o size=1m tmpfs /mnt/small && echo old > /mnt/small/keep")
		big := make([]byte, 2<<20)
		rand.Read(big)
		e.wantError(e.put(id, "/mnt/small/new/dir/f", "application/octet-stream", big), 507, api.CodeInsufficientStorage, "no space")
		e.wantError(e.put(id, "/mnt/small/keep", "application/octet-stream", big), 507, api.CodeInsufficientStorage, "no space")
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Name: "t/big", Mode: 0o644, Size: int64(len(big)), Typeflag: tar.TypeReg})
		tw.Write(big)
		tw.Close()
		e.wantError(e.put(id, "/mnt/small", "application/x-tar", buf.Bytes()), 507, api.CodeInsufficientStorage, "no space")
		src := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(src, big, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, errOut, code := e.run(nil, "cp", src, id+":/mnt/small/"); code == 0 || !strings.Contains(errOut, "no space") {
			t.Errorf("cp into a full disk: exit %d, stderr %q; want the cause", code, errOut)
		}
		if got := guest("ls -A /mnt/small; cat /mnt/small/keep"); got != "keep\nold\n" {
			t.Errorf("after the failed writes /mnt/small holds %q; want keep alone, as it was", got)
		}
	})

	e.ok(nil, "rm", id)
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Errorf("server stop: %v", err)
	}
}

// get sends GET /v1/sessions/{id}/files with q to e's server.
func (e *e2e) get(id string, q url.Values) *http.Response {
	e.t.Helper()
	return e.request(http.MethodGet, "/v1/sessions/"+id+"/files?"+q.Encode(), "", nil)
}

// put sends PUT /v1/sessions/{id}/files?path=p with body.
func (e *e2e) put(id, p, contentType string, body []byte) *http.Response {
	e.t.Helper()
	return e.request(http.MethodPut, "/v1/sessions/"+id+"/files?"+url.Values{"path": {p}}.Encode(), contentType, body)
}

func (e *e2e) request(method, path, contentType string, body []byte) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, "http://"+e.addr+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.userToken())
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

// wantError checks that resp is an API error with status, code and a
// message that holds msg.
func (e *e2e) wantError(resp *http.Response, status int, code, msg string) {
	e.t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != status || !strings.Contains(string(b), `"code":"`+code+`"`) || !strings.Contains(string(b), msg) {
		e.t.Errorf("%s %s: %d %s; want %d %s saying %q", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, b, status, code, msg)
	}
}
