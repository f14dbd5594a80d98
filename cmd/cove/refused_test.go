package main_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// awaitWriter keeps what is written and closes seen once it holds want.
type awaitWriter struct {
	want string
	seen chan struct{}

	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func newAwaitWriter(want string) *awaitWriter {
	return &awaitWriter{want: want, seen: make(chan struct{})}
}

func (w *awaitWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	had := strings.Contains(w.buf.String(), w.want)
	w.buf.Write(p)
	if !had && strings.Contains(w.buf.String(), w.want) {
		close(w.seen)
	}
	return len(p), nil
}

func (w *awaitWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// await fails the test unless w sees its text within limit (a bound on a
// failure, not a measure).
func (w *awaitWriter) await(t *testing.T, what string, limit time.Duration) {
	t.Helper()
	select {
	case <-w.seen:
	case <-time.After(limit):
		t.Fatalf("%s: no %q within %s; got %q", what, w.want, limit, w.String())
	}
}

// TestSmallRefusalsEndToEnd drives the real server over HTTP and the CLI
// for the smaller findings of issue 13: a CLI exec whose session is parked
// says so instead of hanging silently; a file written with mode 4755 keeps
// its setuid bit in the guest; a build of an unknown image is 404 before
// any stream; a boot timeout under a second is 400 and records nothing; a
// template whose repository is unreachable is 400 with a message free of
// host detail, leaves no record, and a retry is 400 again (not 409).
func TestSmallRefusalsEndToEnd(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer()
	id := e.create()

	t.Run("ExecSaysTheSessionParked", func(t *testing.T) {
		out := newAwaitWriter("ready\n")
		errw := newAwaitWriter("is parked: the command is paused until the session wakes (cove wake " + id + ")")
		cmd := e.command("exec", id, "--", "sh", "-c", "echo ready; sleep 600")
		cmd.Stdout, cmd.Stderr = out, errw
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		defer func() {
			_ = cmd.Process.Kill()
			<-done
		}()
		out.await(t, "exec's output", 2*time.Minute)
		e.ok(nil, "park", id)
		errw.await(t, "exec's stderr once its session parked", 2*time.Minute)
		select {
		case err := <-done:
			t.Fatalf("exec ended when its session parked: %v; stderr %q", err, errw.String())
		default:
		}
		e.ok(nil, "wake", id)
	})

	t.Run("SetuidBitKept", func(t *testing.T) {
		resp := e.request(http.MethodPut, "/v1/sessions/"+id+"/files?"+url.Values{"path": {"/root/suid"}, "mode": {"4755"}}.Encode(),
			"application/octet-stream", []byte("#!/bin/sh\n"))
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("write with mode 4755: %d", resp.StatusCode)
		}
		resp = e.request(http.MethodGet, "/v1/sessions/"+id+"/files/stat?"+url.Values{"path": {"/root/suid"}}.Encode(), "", nil)
		var fi api.FileInfo
		err := json.NewDecoder(resp.Body).Decode(&fi)
		resp.Body.Close()
		if err != nil || fi.Mode != 0o4755 {
			t.Errorf("stat of a file written with mode 4755: %+v, %v; want mode 4755", fi, err)
		}
		if got := e.ok(nil, "exec", id, "--", "stat", "-c", "%a", "/root/suid"); got != "4755\n" {
			t.Errorf("the guest's stat says %q, want 4755", got)
		}
	})

	t.Run("UnknownImageBuildIs404", func(t *testing.T) {
		resp := e.request(http.MethodPost, "/v1/images/nosuch/build", "", nil)
		if ct := resp.Header.Get("Content-Type"); strings.Contains(ct, "ndjson") {
			t.Errorf("content type %q: the stream started", ct)
		}
		e.wantError(resp, 404, api.CodeNotFound, `unknown image \"nosuch\"`)
	})

	t.Run("BootTimeoutUnderASecondIs400", func(t *testing.T) {
		before := len(e.sessions())
		for _, d := range []string{"1ns", "500ms"} {
			body, _ := json.Marshal(api.CreateSessionRequest{BootTimeout: d})
			e.wantError(e.request(http.MethodPost, "/v1/sessions", "application/json", body), 400, api.CodeInvalid, "at least 1s")
		}
		if after := len(e.sessions()); after != before {
			t.Errorf("%d sessions after refused creates, %d before", after, before)
		}
	})

	t.Run("UnreachableRepoChangesNothing", func(t *testing.T) {
		gone := "file://" + filepath.Join(t.TempDir(), "gone.git")
		body, _ := json.Marshal(api.CreateTemplateRequest{Name: "gone", Repo: gone})
		for range 2 { // the retry is refused the same way, not 409
			resp := e.request(http.MethodPost, "/v1/templates", "application/json", body)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			msg := string(b)
			if resp.StatusCode != 400 || !strings.Contains(msg, "repository "+gone+": not reachable: ") ||
				!strings.Contains(msg, "does not appear to be a git repository") {
				t.Errorf("template on an unreachable repo: %d %s", resp.StatusCode, msg)
			}
			for _, host := range []string{e.home, "git -c", "--git-dir", "repo.git"} {
				if strings.Contains(msg, host) {
					t.Errorf("message %s holds %q", msg, host)
				}
			}
		}
		resp := e.request(http.MethodGet, "/v1/templates/gone", "", nil)
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("GET of the refused template: %d, want 404", resp.StatusCode)
		}
		if ents, err := os.ReadDir(filepath.Join(e.home, "templates")); err == nil && len(ents) != 0 {
			t.Errorf("the refused template left %v in the templates dir", ents)
		}
	})

	e.ok(nil, "rm", id)
	// A server that exits stops the spare QEMU it started for wakes.
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Errorf("server stop: %v", err)
	}
}
