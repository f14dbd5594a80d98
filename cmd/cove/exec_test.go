package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/cove-dev/cove/api"
)

// TestSplitExecArgs protects how exec finds the session id and command.
func TestSplitExecArgs(t *testing.T) {
	tests := []struct {
		args    []string
		dashAt  int
		id      string
		argv    []string
		wantErr bool
	}{
		{args: []string{"s1", "ls", "-la"}, dashAt: 1, id: "s1", argv: []string{"ls", "-la"}},
		{args: []string{"s1", "ls"}, dashAt: -1, id: "s1", argv: []string{"ls"}},
		{args: []string{"s1", "--", "x"}, dashAt: -1, id: "s1", argv: []string{"--", "x"}}, // cobra removes the first "--"
		{args: []string{"s1", "sh", "-c", "echo hi"}, dashAt: 0, id: "s1", argv: []string{"sh", "-c", "echo hi"}},
		{args: []string{"s1", "s2", "ls"}, dashAt: 2, wantErr: true},
		{args: []string{"s1"}, dashAt: 1, wantErr: true},
		{args: []string{"s1"}, dashAt: -1, wantErr: true},
	}
	for _, tt := range tests {
		id, argv, err := splitExecArgs(tt.args, tt.dashAt)
		if (err != nil) != tt.wantErr || id != tt.id || !reflect.DeepEqual(argv, tt.argv) {
			t.Errorf("splitExecArgs(%q, %d) = %q, %q, %v; want %q, %q, error %v", tt.args, tt.dashAt, id, argv, err, tt.id, tt.argv, tt.wantErr)
		}
	}
}

// TestParseEnv protects --env KEY=VALUE parsing.
func TestParseEnv(t *testing.T) {
	tests := []struct {
		in      []string
		want    map[string]string
		wantErr bool
	}{
		{in: nil, want: nil},
		{in: []string{"A=1", "B="}, want: map[string]string{"A": "1", "B": ""}},
		{in: []string{"A=x=y,z", "A=2"}, want: map[string]string{"A": "2"}},
		{in: []string{"PATH=/bin:/usr/bin"}, want: map[string]string{"PATH": "/bin:/usr/bin"}},
		{in: []string{"A"}, wantErr: true},
		{in: []string{"=1"}, wantErr: true},
		{in: []string{"A B=1"}, wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseEnv(tt.in)
		if (err != nil) != tt.wantErr || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseEnv(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestExitCode protects the mapping of exit events to cove's status.
func TestExitCode(t *testing.T) {
	tests := []struct {
		ev   api.ExecEvent
		want int
	}{
		{api.ExecEvent{ExitCode: 0}, 0},
		{api.ExecEvent{ExitCode: 3}, 3},
		{api.ExecEvent{ExitCode: 255}, 255},
		{api.ExecEvent{ExitCode: -1, Signal: "KILL"}, 137},
		{api.ExecEvent{Signal: "SIGTERM"}, 143},
		{api.ExecEvent{Signal: "int"}, 130},
		{api.ExecEvent{Signal: "9"}, 137},
		{api.ExecEvent{Signal: "SEGV", ExitCode: -1}, 139},
		{api.ExecEvent{TimedOut: true, Signal: "KILL", ExitCode: -1}, 124},
		{api.ExecEvent{Signal: "WHAT"}, 1},
		{api.ExecEvent{Signal: "WHAT", ExitCode: 5}, 5},
		{api.ExecEvent{ExitCode: -1}, 1},
		{api.ExecEvent{ExitCode: 300}, 1},
	}
	for _, tt := range tests {
		if got := exitCode(tt.ev); got != tt.want {
			t.Errorf("exitCode(%+v) = %d, want %d", tt.ev, got, tt.want)
		}
	}
}

// TestStartFailureCode protects 127 for a missing program, and only then.
func TestStartFailureCode(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{api.Errorf(api.CodeInvalid, "exec: nope: no such file"), 127},
		{api.Errorf(api.CodeInvalid, `exec: "nope": executable file not found in $PATH`), 127},
		{api.Errorf(api.CodeInvalid, "exec: nope: command not found"), 127},
		{api.Errorf(api.CodeInvalid, "exec: fork/exec /x: No such file or directory"), 127},
		{api.Errorf(api.CodeNotFound, "session s9 not found"), 1},
		{api.Errorf(api.CodeInvalid, "argv is empty"), 1},
		{api.Errorf(api.CodeUnavailable, "agent not answering"), 1},
		{errors.New("dial: no such file or directory"), 1}, // not from the server
	}
	for _, tt := range tests {
		if got := startFailureCode(tt.err); got != tt.want {
			t.Errorf("startFailureCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

// fakeExec is an exec WebSocket that plays a command chosen by argv[0]:
// "cat" echoes stdin to stdout until stdin closes; "fail N" writes to both
// streams and exits N; "kill" dies of SIGKILL; "sleep" times out; anything
// else cannot be started.
func fakeExec(t *testing.T, got *api.ExecRequest) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "s1" {
			writeError(w, api.CodeNotFound, "session "+r.PathValue("id")+" not found")
			return
		}
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer conn.CloseNow()
		ctx := r.Context()
		_, b, err := conn.Read(ctx)
		if err != nil {
			t.Errorf("read request: %v", err)
			return
		}
		if err := json.Unmarshal(b, got); err != nil {
			t.Errorf("request %q: %v", b, err)
			return
		}
		send := func(ev api.ExecEvent) {
			b, _ := json.Marshal(ev)
			conn.Write(ctx, websocket.MessageText, b)
		}
		finish := func(ev api.ExecEvent) {
			ev.Type = api.EventExit
			send(ev)
			conn.Close(websocket.StatusNormalClosure, "")
		}
		switch got.Argv[0] {
		case "cat":
			for {
				_, b, err := conn.Read(ctx)
				if err != nil {
					return
				}
				var ev api.ExecEvent
				json.Unmarshal(b, &ev)
				switch ev.Type {
				case api.EventStdin:
					send(api.ExecEvent{Type: api.EventStdout, Data: ev.Data})
				case api.EventStdinClose:
					finish(api.ExecEvent{})
					return
				}
			}
		case "fail":
			send(api.ExecEvent{Type: api.EventStdout, Data: []byte("out\n")})
			send(api.ExecEvent{Type: api.EventStderr, Data: []byte("err\n")})
			finish(api.ExecEvent{ExitCode: 3})
		case "kill":
			finish(api.ExecEvent{ExitCode: -1, Signal: "KILL"})
		case "sleep":
			finish(api.ExecEvent{ExitCode: -1, Signal: "KILL", TimedOut: true})
		default:
			send(api.ExecEvent{Type: api.EventError, Error: &api.ErrorBody{Code: api.CodeInvalid, Message: "exec: " + got.Argv[0] + ": no such file"}})
			conn.Close(websocket.StatusNormalClosure, "")
		}
	}
}

// TestExecCommand protects cove exec end to end against a fake server:
// the request, stdin streaming, output routing and exit statuses.
func TestExecCommand(t *testing.T) {
	var got api.ExecRequest
	addr := fakeAPI(t, map[string]http.HandlerFunc{"GET /v1/sessions/{id}/exec/ws": fakeExec(t, &got)})
	tests := []struct {
		name        string
		stdin       string
		args        []string
		wantCode    int
		wantStdout  string
		wantStderr  string
		wantRequest *api.ExecRequest
	}{
		{
			name: "cat streams stdin", stdin: strings.Repeat("x", 100<<10),
			args:        []string{"exec", "s1", "--env", "A=1", "--cwd", "/work", "--timeout", "90s", "--", "cat", "-"},
			wantStdout:  strings.Repeat("x", 100<<10),
			wantRequest: &api.ExecRequest{Argv: []string{"cat", "-"}, Env: map[string]string{"A": "1"}, Cwd: "/work", Timeout: "1m30s"},
		},
		{name: "empty stdin", args: []string{"exec", "s1", "cat"}},
		{name: "exit code and streams", args: []string{"exec", "s1", "--", "fail"}, wantCode: 3, wantStdout: "out\n", wantStderr: "err\n"},
		{name: "signal", args: []string{"exec", "s1", "kill"}, wantCode: 137},
		{name: "timeout", args: []string{"exec", "s1", "--timeout", "1s", "sleep"}, wantCode: 124},
		{name: "not found", args: []string{"exec", "s1", "nope"}, wantCode: 127, wantStderr: "cove: exec: nope: no such file\n"},
		{name: "unknown session", args: []string{"exec", "s9", "ls"}, wantCode: 1, wantStderr: "cove: session s9 not found\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got = api.ExecRequest{}
			code, stdout, stderr := runCLI(t, addr, tt.stdin, tt.args...)
			if code != tt.wantCode || stdout != tt.wantStdout || stderr != tt.wantStderr {
				t.Errorf("exit %d, stdout %.40q (%d bytes), stderr %q; want %d, %.40q (%d bytes), %q",
					code, stdout, len(stdout), stderr, tt.wantCode, tt.wantStdout, len(tt.wantStdout), tt.wantStderr)
			}
			if tt.wantRequest != nil && !reflect.DeepEqual(got, *tt.wantRequest) {
				t.Errorf("server got %+v, want %+v", got, *tt.wantRequest)
			}
		})
	}
}
