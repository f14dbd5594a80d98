package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

const testToken = "s3cret"

// seen is one request as the fake server saw it.
type seen struct {
	Method, Path, Query, ContentType, Accept, Auth, Body string
}

// fakeServer answers every request with the reply for its "METHOD PATH",
// or 404 with an error document, and records what it saw.
type fakeServer struct {
	t       *testing.T
	replies map[string]func(w http.ResponseWriter, r *http.Request)

	mu   sync.Mutex
	seen []seen // guarded by mu
}

func newFake(t *testing.T) (*fakeServer, *Client) {
	f := &fakeServer{t: t, replies: map[string]func(http.ResponseWriter, *http.Request){}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, NewClient(srv.URL+"/", testToken)
}

func (f *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.seen = append(f.seen, seen{
		Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery,
		ContentType: r.Header.Get("Content-Type"), Accept: r.Header.Get("Accept"),
		Auth: r.Header.Get("Authorization"), Body: string(body),
	})
	f.mu.Unlock()
	if h, ok := f.replies[r.Method+" "+r.URL.Path]; ok {
		h(w, r)
		return
	}
	writeJSON(w, http.StatusNotFound, ErrorResponse{Error: ErrorBody{Code: CodeNotFound, Message: "no route " + r.URL.Path}})
}

func (f *fakeServer) last() seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) == 0 {
		f.t.Fatal("server saw no request")
	}
	return f.seen[len(f.seen)-1]
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func reply(status int, v any) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if v == nil {
			w.WriteHeader(status)
			return
		}
		writeJSON(w, status, v)
	}
}

// TestClientRequests protects the wire form of every plain call: method,
// path, query, headers and body, and the decoding of each answer.
func TestClientRequests(t *testing.T) {
	ctx := context.Background()
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	sess := Session{ID: "s1", State: StateRunning, Image: "tiny", MemoryMiB: 512, CPUs: 1, CreatedAt: created, UpdatedAt: created}
	fi := FileInfo{Name: "f", Size: 3, Mode: 0o644, ModTime: created}
	img := Image{Name: "tiny", Key: "abc", SizeBytes: 10, CreatedAt: created}
	parked := sess
	parked.State, parked.Snapshot = StateParked, &SnapshotInfo{DiskBytes: 96 << 20, MemoryBytes: 512 << 20, CreatedAt: created, ParkMillis: 340}
	deadline := created.Add(6 * time.Hour)
	waiting := parked
	waiting.Waiting = &Waiting{Until: []string{"github:push repo=acme/api"}, Deadline: &deadline}
	tpl := Template{Name: "py", State: TemplateReady, Image: "tiny", MemoryMiB: 512, CPUs: 1, Setup: []string{"apk add python3"},
		Pool: 2, PoolReady: 1, Snapshot: &SnapshotInfo{DiskBytes: 1 << 20}, CreatedAt: created, UpdatedAt: created}

	tests := []struct {
		name  string
		route string
		reply func(http.ResponseWriter, *http.Request)
		call  func(c *Client) (any, error)
		want  any
		saw   seen // Auth is always checked; empty fields must be empty
	}{
		{
			name: "create", route: "POST /v1/sessions", reply: reply(201, sess),
			call: func(c *Client) (any, error) {
				return c.CreateSession(ctx, CreateSessionRequest{Image: "tiny", MemoryMiB: 256, Env: map[string]string{"A": "1"}})
			},
			want: sess,
			saw: seen{Method: "POST", Path: "/v1/sessions", ContentType: contentJSON, Accept: contentJSON,
				Body: `{"image":"tiny","memory_mib":256,"env":{"A":"1"}}`},
		},
		{
			name: "get", route: "GET /v1/sessions/s1", reply: reply(200, sess),
			call: func(c *Client) (any, error) { return c.GetSession(ctx, "s1") },
			want: sess,
			saw:  seen{Method: "GET", Path: "/v1/sessions/s1", Accept: contentJSON},
		},
		{
			name: "get escapes id", route: "GET /v1/sessions/a/b", reply: reply(200, sess),
			call: func(c *Client) (any, error) { return c.GetSession(ctx, "a/b") },
			want: sess,
			saw:  seen{Method: "GET", Path: "/v1/sessions/a%2Fb", Accept: contentJSON},
		},
		{
			name: "list", route: "GET /v1/sessions", reply: reply(200, map[string]any{"sessions": []Session{sess}}),
			call: func(c *Client) (any, error) { return c.ListSessions(ctx) },
			want: []Session{sess},
			saw:  seen{Method: "GET", Path: "/v1/sessions", Query: "limit=500", Accept: contentJSON}, // pages of 500, followed
		},
		{
			name: "delete", route: "DELETE /v1/sessions/s1", reply: reply(204, nil),
			call: func(c *Client) (any, error) { return nil, c.DeleteSession(ctx, "s1") },
			saw:  seen{Method: "DELETE", Path: "/v1/sessions/s1"},
		},
		{
			name: "create from template", route: "POST /v1/sessions", reply: reply(201, sess),
			call: func(c *Client) (any, error) {
				return c.CreateSession(ctx, CreateSessionRequest{Template: "py", IdleTimeout: "0s", NoAutoWake: true})
			},
			want: sess,
			saw: seen{Method: "POST", Path: "/v1/sessions", ContentType: contentJSON, Accept: contentJSON,
				Body: `{"template":"py","idle_timeout":"0s","no_auto_wake":true}`},
		},
		{
			name: "park", route: "POST /v1/sessions/s1/park", reply: reply(200, parked),
			call: func(c *Client) (any, error) { return c.ParkSession(ctx, "s1") },
			want: parked,
			saw:  seen{Method: "POST", Path: "/v1/sessions/s1/park", Accept: contentJSON},
		},
		{
			name: "park until", route: "POST /v1/sessions/s1/park", reply: reply(200, waiting),
			call: func(c *Client) (any, error) {
				return c.ParkSessionUntil(ctx, "s1", ParkRequest{Until: []string{"github:push repo=acme/api"}, Timeout: "6h"})
			},
			want: waiting,
			saw: seen{Method: "POST", Path: "/v1/sessions/s1/park", ContentType: contentJSON, Accept: contentJSON,
				Body: `{"until":["github:push repo=acme/api"],"timeout":"6h"}`},
		},
		{
			name: "park until timeout only", route: "POST /v1/sessions/s1/park", reply: reply(200, waiting),
			call: func(c *Client) (any, error) {
				return c.ParkSessionUntil(ctx, "s1", ParkRequest{Timeout: "1h"})
			},
			want: waiting,
			saw: seen{Method: "POST", Path: "/v1/sessions/s1/park", ContentType: contentJSON, Accept: contentJSON,
				Body: `{"timeout":"1h"}`},
		},
		{
			name: "put hook secret", route: "PUT /v1/hook-secrets/ci", reply: reply(204, nil),
			call: func(c *Client) (any, error) { return nil, c.PutHookSecret(ctx, "ci", "k3y") },
			saw:  seen{Method: "PUT", Path: "/v1/hook-secrets/ci", ContentType: contentJSON, Body: `{"secret":"k3y"}`},
		},
		{
			name: "list hooks", route: "GET /v1/hook-secrets", reply: reply(200, map[string]any{"hooks": []string{"ci", "github"}}),
			call: func(c *Client) (any, error) { return c.ListHooks(ctx) },
			want: []string{"ci", "github"},
			saw:  seen{Method: "GET", Path: "/v1/hook-secrets", Accept: contentJSON},
		},
		{
			name: "delete hook escapes name", route: "DELETE /v1/hook-secrets/a/b", reply: reply(204, nil),
			call: func(c *Client) (any, error) { return nil, c.DeleteHook(ctx, "a/b") },
			saw:  seen{Method: "DELETE", Path: "/v1/hook-secrets/a%2Fb"},
		},
		{
			name: "wake escapes id", route: "POST /v1/sessions/a/b/wake", reply: reply(200, sess),
			call: func(c *Client) (any, error) { return c.WakeSession(ctx, "a/b") },
			want: sess,
			saw:  seen{Method: "POST", Path: "/v1/sessions/a%2Fb/wake", Accept: contentJSON},
		},
		{
			name: "create template", route: "POST /v1/templates", reply: reply(201, tpl),
			call: func(c *Client) (any, error) {
				return c.CreateTemplate(ctx, CreateTemplateRequest{Name: "py", Image: "tiny", Env: map[string]string{"A": "1"},
					Setup: []string{"apk add python3", "true"}, Start: "sleep 1d", Pool: 2})
			},
			want: tpl,
			saw: seen{Method: "POST", Path: "/v1/templates", ContentType: contentJSON, Accept: contentJSON,
				Body: `{"name":"py","image":"tiny","env":{"A":"1"},"setup":["apk add python3","true"],"start":"sleep 1d","pool":2}`},
		},
		{
			name: "list templates", route: "GET /v1/templates", reply: reply(200, map[string]any{"templates": []Template{tpl}}),
			call: func(c *Client) (any, error) { return c.ListTemplates(ctx) },
			want: []Template{tpl},
			saw:  seen{Method: "GET", Path: "/v1/templates", Accept: contentJSON},
		},
		{
			name: "get template", route: "GET /v1/templates/py", reply: reply(200, tpl),
			call: func(c *Client) (any, error) { return c.GetTemplate(ctx, "py") },
			want: tpl,
			saw:  seen{Method: "GET", Path: "/v1/templates/py", Accept: contentJSON},
		},
		{
			name: "delete template", route: "DELETE /v1/templates/py", reply: reply(204, nil),
			call: func(c *Client) (any, error) { return nil, c.DeleteTemplate(ctx, "py") },
			saw:  seen{Method: "DELETE", Path: "/v1/templates/py"},
		},
		{
			name: "exec buffered", route: "POST /v1/sessions/s1/exec",
			reply: reply(200, ExecResult{ExitCode: 3, Stdout: []byte("out"), Stderr: []byte("err")}),
			call: func(c *Client) (any, error) {
				return c.Exec(ctx, "s1", ExecRequest{Argv: []string{"sh", "-c", "x"}, Stdin: []byte("in")})
			},
			want: &ExecResult{ExitCode: 3, Stdout: []byte("out"), Stderr: []byte("err")},
			saw: seen{Method: "POST", Path: "/v1/sessions/s1/exec", ContentType: contentJSON, Accept: contentJSON,
				Body: `{"argv":["sh","-c","x"],"stdin":"aW4="}`},
		},
		{
			name: "read file", route: "GET /v1/sessions/s1/files",
			reply: func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") },
			call: func(c *Client) (any, error) {
				rc, err := c.ReadFile(ctx, "s1", "/a b&c")
				if err != nil {
					return nil, err
				}
				defer rc.Close()
				b, err := io.ReadAll(rc)
				return string(b), err
			},
			want: "hello",
			saw:  seen{Method: "GET", Path: "/v1/sessions/s1/files", Query: "path=%2Fa+b%26c"},
		},
		{
			name: "write file", route: "PUT /v1/sessions/s1/files", reply: reply(204, nil),
			call: func(c *Client) (any, error) {
				return nil, c.WriteFile(ctx, "s1", "/x", 0o100755, strings.NewReader("data"))
			},
			saw: seen{Method: "PUT", Path: "/v1/sessions/s1/files", Query: "mode=0755&path=%2Fx", ContentType: contentBytes, Body: "data"},
		},
		{
			name: "write file default mode", route: "PUT /v1/sessions/s1/files", reply: reply(204, nil),
			call: func(c *Client) (any, error) { return nil, c.WriteFile(ctx, "s1", "/x", 0, strings.NewReader("")) },
			saw:  seen{Method: "PUT", Path: "/v1/sessions/s1/files", Query: "path=%2Fx", ContentType: contentBytes},
		},
		{
			name: "get tar", route: "GET /v1/sessions/s1/files",
			reply: func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "TAR") },
			call: func(c *Client) (any, error) {
				rc, err := c.GetTar(ctx, "s1", "/d")
				if err != nil {
					return nil, err
				}
				defer rc.Close()
				b, err := io.ReadAll(rc)
				return string(b), err
			},
			want: "TAR",
			saw:  seen{Method: "GET", Path: "/v1/sessions/s1/files", Query: "format=tar&path=%2Fd", Accept: contentTar},
		},
		{
			name: "put tar", route: "PUT /v1/sessions/s1/files", reply: reply(204, nil),
			call: func(c *Client) (any, error) { return nil, c.PutTar(ctx, "s1", "/d", strings.NewReader("TAR")) },
			saw:  seen{Method: "PUT", Path: "/v1/sessions/s1/files", Query: "path=%2Fd", ContentType: contentTar, Body: "TAR"},
		},
		{
			name: "stat", route: "GET /v1/sessions/s1/files/stat", reply: reply(200, fi),
			call: func(c *Client) (any, error) { return c.Stat(ctx, "s1", "/f") },
			want: fi,
			saw:  seen{Method: "GET", Path: "/v1/sessions/s1/files/stat", Query: "path=%2Ff", Accept: contentJSON},
		},
		{
			name: "list dir", route: "GET /v1/sessions/s1/files/list", reply: reply(200, map[string]any{"files": []FileInfo{fi}}),
			call: func(c *Client) (any, error) { return c.ListDir(ctx, "s1", "/") },
			want: []FileInfo{fi},
			saw:  seen{Method: "GET", Path: "/v1/sessions/s1/files/list", Query: "path=%2F", Accept: contentJSON},
		},
		{
			name: "mkdir", route: "POST /v1/sessions/s1/files/mkdir", reply: reply(204, nil),
			call: func(c *Client) (any, error) { return nil, c.Mkdir(ctx, "s1", "/a/b") },
			saw:  seen{Method: "POST", Path: "/v1/sessions/s1/files/mkdir", Query: "path=%2Fa%2Fb"},
		},
		{
			name: "remove", route: "DELETE /v1/sessions/s1/files", reply: reply(204, nil),
			call: func(c *Client) (any, error) { return nil, c.Remove(ctx, "s1", "/a") },
			saw:  seen{Method: "DELETE", Path: "/v1/sessions/s1/files", Query: "path=%2Fa"},
		},
		{
			name: "list images", route: "GET /v1/images", reply: reply(200, map[string]any{"images": []Image{img}}),
			call: func(c *Client) (any, error) { return c.ListImages(ctx) },
			want: []Image{img},
			saw:  seen{Method: "GET", Path: "/v1/images", Accept: contentJSON},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, c := newFake(t)
			f.replies[tt.route] = tt.reply
			got, err := tt.call(c)
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			if tt.want != nil && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("answer = %#v, want %#v", got, tt.want)
			}
			s := f.last()
			if s.Auth != "Bearer "+testToken {
				t.Errorf("Authorization = %q", s.Auth)
			}
			s.Auth = ""
			if s != tt.saw {
				t.Errorf("server saw\n  %+v\nwant\n  %+v", s, tt.saw)
			}
		})
	}
}

// TestClientErrors protects the mapping of non-2xx answers to *Error, which
// the CLI relies on through CodeOf.
func TestClientErrors(t *testing.T) {
	tests := []struct {
		name     string
		reply    func(http.ResponseWriter, *http.Request)
		wantCode string
		wantMsg  string
	}{
		{
			name:     "error document",
			reply:    reply(404, ErrorResponse{Error: ErrorBody{Code: CodeNotFound, Message: "session s1 not found"}}),
			wantCode: CodeNotFound, wantMsg: "session s1 not found",
		},
		{
			name: "plain text",
			reply: func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "upstream down", http.StatusBadGateway)
			},
			wantCode: CodeInternal, wantMsg: "server answered 502 Bad Gateway: upstream down",
		},
		{
			name: "html",
			reply: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
				io.WriteString(w, "<html>busy</html>")
			},
			wantCode: CodeInternal, wantMsg: "server answered 503 Service Unavailable",
		},
		{
			name:     "json that is not an error document",
			reply:    reply(500, map[string]int{"x": 1}),
			wantCode: CodeInternal, wantMsg: "server answered 500 Internal Server Error",
		},
		{
			name:     "empty body",
			reply:    reply(401, nil),
			wantCode: CodeInternal, wantMsg: "server answered 401 Unauthorized",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, c := newFake(t)
			f.replies["GET /v1/sessions/s1"] = tt.reply
			_, err := c.GetSession(context.Background(), "s1")
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v (%T), want *Error", err, err)
			}
			if e.Code != tt.wantCode || e.Message != tt.wantMsg {
				t.Errorf("err = {%q, %q}, want {%q, %q}", e.Code, e.Message, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

// TestParkAndTemplateConflicts protects the 409s the CLI reports: a park
// of a session that is not running, a template with clones.
func TestParkAndTemplateConflicts(t *testing.T) {
	ctx := context.Background()
	f, c := newFake(t)
	conflict := func(msg string) func(http.ResponseWriter, *http.Request) {
		return reply(409, ErrorResponse{Error: ErrorBody{Code: CodeConflict, Message: msg}})
	}
	f.replies["POST /v1/sessions/s1/park"] = conflict("park s1: session is waking")
	f.replies["POST /v1/sessions/s1/wake"] = conflict("wake s1: session is failed")
	f.replies["DELETE /v1/templates/py"] = conflict(`template "py" has 1 live clone(s) (s1): remove them first`)
	f.replies["POST /v1/templates"] = conflict(`template "py" exists`)
	for name, call := range map[string]func() error{
		"park":            func() error { _, err := c.ParkSession(ctx, "s1"); return err },
		"wake":            func() error { _, err := c.WakeSession(ctx, "s1"); return err },
		"delete template": func() error { return c.DeleteTemplate(ctx, "py") },
		"create template": func() error { _, err := c.CreateTemplate(ctx, CreateTemplateRequest{Name: "py"}); return err },
	} {
		if err := call(); !IsCode(err, CodeConflict) || err.Error() == "" {
			t.Errorf("%s: err = %v, want a conflict", name, err)
		}
	}
	if _, err := c.GetTemplate(ctx, "nope"); !IsCode(err, CodeNotFound) {
		t.Errorf("get unknown template: err = %v, want not found", err)
	}
}

func ndjson(lines ...any) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentNDJSON)
		enc := json.NewEncoder(w)
		for _, l := range lines {
			enc.Encode(l)
			w.(http.Flusher).Flush()
		}
	}
}

// TestExecStream protects the NDJSON form: events in order, error events
// as *Error, and a stream cut short being an error.
func TestExecStream(t *testing.T) {
	const route = "POST /v1/sessions/s1/exec"
	t.Run("events", func(t *testing.T) {
		f, c := newFake(t)
		f.replies[route] = ndjson(
			ExecEvent{Type: EventStdout, Data: []byte("a")},
			ExecEvent{Type: EventStderr, Data: []byte("b")},
			ExecEvent{Type: EventExit, ExitCode: 2},
		)
		var got []string
		err := c.ExecStream(context.Background(), "s1", ExecRequest{Argv: []string{"x"}}, func(ev ExecEvent) {
			got = append(got, fmt.Sprintf("%s:%s:%d", ev.Type, ev.Data, ev.ExitCode))
		})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"stdout:a:0", "stderr:b:0", "exit::2"}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("events = %q, want %q", got, want)
		}
		if s := f.last(); s.Accept != contentNDJSON || s.ContentType != contentJSON {
			t.Errorf("Accept = %q, Content-Type = %q", s.Accept, s.ContentType)
		}
	})
	t.Run("error event", func(t *testing.T) {
		f, c := newFake(t)
		f.replies[route] = ndjson(ExecEvent{Type: EventError, Error: &ErrorBody{Code: CodeInvalid, Message: "exec: nope: no such file"}})
		err := c.ExecStream(context.Background(), "s1", ExecRequest{Argv: []string{"nope"}}, func(ExecEvent) {
			t.Error("fn called for an error event")
		})
		if !IsCode(err, CodeInvalid) || err.Error() != "exec: nope: no such file" {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("cut short", func(t *testing.T) {
		f, c := newFake(t)
		f.replies[route] = ndjson(ExecEvent{Type: EventStdout, Data: []byte("a")})
		err := c.ExecStream(context.Background(), "s1", ExecRequest{Argv: []string{"x"}}, func(ExecEvent) {})
		if err == nil {
			t.Error("no error for a stream without an exit event")
		}
	})
	t.Run("error answer", func(t *testing.T) {
		f, c := newFake(t)
		f.replies[route] = reply(400, ErrorResponse{Error: ErrorBody{Code: CodeInvalid, Message: "argv is empty"}})
		err := c.ExecStream(context.Background(), "s1", ExecRequest{}, func(ExecEvent) {})
		if !IsCode(err, CodeInvalid) {
			t.Errorf("err = %v", err)
		}
	})
}

// TestBuildImage protects the progress stream of image builds.
func TestBuildImage(t *testing.T) {
	const route = "POST /v1/images/tiny/build"
	img := Image{Name: "tiny", Key: "k1"}
	t.Run("done", func(t *testing.T) {
		f, c := newFake(t)
		f.replies[route] = ndjson(
			ImageBuildEvent{Type: "progress", Message: "fetch kernel"},
			ImageBuildEvent{Type: "progress", Message: "pack rootfs"},
			ImageBuildEvent{Type: "done", Image: &img},
		)
		var msgs []string
		got, err := c.BuildImage(context.Background(), "tiny", func(m string) { msgs = append(msgs, m) })
		if err != nil {
			t.Fatal(err)
		}
		if got != img || !reflect.DeepEqual(msgs, []string{"fetch kernel", "pack rootfs"}) {
			t.Errorf("got %+v, progress %q", got, msgs)
		}
		if s := f.last(); s.Method != "POST" || s.Accept != contentNDJSON || s.Auth != "Bearer "+testToken {
			t.Errorf("server saw %+v", s)
		}
	})
	t.Run("error", func(t *testing.T) {
		f, c := newFake(t)
		f.replies[route] = ndjson(ImageBuildEvent{Type: "error", Error: &ErrorBody{Code: CodeUnavailable, Message: "no network"}})
		_, err := c.BuildImage(context.Background(), "tiny", nil)
		if !IsCode(err, CodeUnavailable) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("unknown image", func(t *testing.T) {
		_, c := newFake(t)
		_, err := c.BuildImage(context.Background(), "nope", nil)
		if !IsCode(err, CodeNotFound) {
			t.Errorf("err = %v", err)
		}
	})
}

// TestExecInteractive protects the WebSocket form: the request as the first
// message, events both ways, io.EOF after the server closes, and a refused
// upgrade as *Error.
func TestExecInteractive(t *testing.T) {
	f, c := newFake(t)
	f.replies["GET /v1/sessions/s1/exec/ws"] = func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			writeJSON(w, 401, ErrorResponse{Error: ErrorBody{Code: CodeUnauthorized, Message: "bad token"}})
			return
		}
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer conn.CloseNow()
		ctx := r.Context()
		var req ExecRequest
		_, b, err := conn.Read(ctx)
		if err != nil || json.Unmarshal(b, &req) != nil {
			t.Errorf("first message %q: %v", b, err)
			return
		}
		if len(req.Stdin) != 0 || !reflect.DeepEqual(req.Argv, []string{"cat"}) || !req.TTY || req.Rows != 24 {
			t.Errorf("request = %+v", req)
		}
		send := func(ev ExecEvent) {
			b, _ := json.Marshal(ev)
			conn.Write(ctx, websocket.MessageText, b)
		}
		for {
			_, b, err := conn.Read(ctx)
			if err != nil {
				return
			}
			var ev ExecEvent
			json.Unmarshal(b, &ev)
			switch ev.Type {
			case EventStdin:
				send(ExecEvent{Type: EventStdout, Data: ev.Data})
			case EventResize:
				send(ExecEvent{Type: EventStderr, Data: fmt.Appendf(nil, "%dx%d", ev.Rows, ev.Cols)})
			case EventStdinClose:
				send(ExecEvent{Type: EventExit, ExitCode: 7})
				conn.Close(websocket.StatusNormalClosure, "")
				return
			}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ec, err := c.ExecInteractive(ctx, "s1", ExecRequest{Argv: []string{"cat"}, Stdin: []byte("dropped"), TTY: true, Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	for _, ev := range []ExecEvent{
		{Type: EventStdin, Data: []byte("hi")},
		{Type: EventResize, Rows: 50, Cols: 120},
		{Type: EventStdinClose},
	} {
		if err := ec.Send(ev); err != nil {
			t.Fatalf("send %s: %v", ev.Type, err)
		}
	}
	var got []string
	for {
		ev, err := ec.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		got = append(got, fmt.Sprintf("%s:%s:%d", ev.Type, ev.Data, ev.ExitCode))
	}
	want := []string{"stdout:hi:0", "stderr:50x120:0", "exit::7"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events = %q, want %q", got, want)
	}
	if err := ec.Close(); err != nil {
		t.Errorf("close after the server closed: %v", err)
	}

	t.Run("refused", func(t *testing.T) {
		_, err := c.ExecInteractive(ctx, "gone", ExecRequest{Argv: []string{"x"}})
		if !IsCode(err, CodeNotFound) || !strings.Contains(err.Error(), "no route") {
			t.Errorf("err = %v", err)
		}
		bad := *c
		bad.Token = "wrong"
		_, err = bad.ExecInteractive(ctx, "s1", ExecRequest{Argv: []string{"x"}})
		if !IsCode(err, CodeUnauthorized) {
			t.Errorf("err = %v", err)
		}
	})
}

// TestClientLogValue protects the token from logs.
func TestClientLogValue(t *testing.T) {
	v := NewClient("http://h", testToken).LogValue().String()
	if strings.Contains(v, testToken) {
		t.Errorf("LogValue %q shows the token", v)
	}
}
