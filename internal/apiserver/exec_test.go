package apiserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/cove-dev/cove/api"
)

func TestExecBufferedSeparatesStreamsAndDeliversStdin(t *testing.T) {
	e := newEnv(t)
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus {
		in, _ := io.ReadAll(p.stdinR)
		fmt.Fprintf(p.stdoutW, "out:%s", in)
		fmt.Fprintf(p.stderrW, "err:%s", strings.Join(req.Argv, " "))
		return ExitStatus{Code: 3}
	})
	res := decode[api.ExecResult](t, e.doJSON("POST", "/v1/sessions/s1/exec",
		api.ExecRequest{Argv: []string{"cat", "-"}, Stdin: []byte("hello")}), 200)
	if string(res.Stdout) != "out:hello" || string(res.Stderr) != "err:cat -" || res.ExitCode != 3 || res.Truncated {
		t.Fatalf("result %+v (stdout %q stderr %q)", res, res.Stdout, res.Stderr)
	}
}

func TestExecBufferedTruncatesAndDrains(t *testing.T) {
	e := newEnv(t)
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus {
		chunk := bytes.Repeat([]byte("x"), 1<<20)
		for range maxBufferedOutput>>20 + 2 { // blocks unless the server drains
			p.stdoutW.Write(chunk)
		}
		return ExitStatus{}
	})
	res := decode[api.ExecResult](t, e.doJSON("POST", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"yes"}}), 200)
	if !res.Truncated || len(res.Stdout) != maxBufferedOutput || len(res.Stderr) != 0 {
		t.Fatalf("truncated %v, %d bytes of stdout, %d of stderr", res.Truncated, len(res.Stdout), len(res.Stderr))
	}
}

// readEvent reads one NDJSON line.
func readEvent(t *testing.T, br *bufio.Reader) api.ExecEvent {
	t.Helper()
	line, err := br.ReadBytes('\n')
	if err != nil {
		t.Fatalf("read event: %v (got %q)", err, line)
	}
	var ev api.ExecEvent
	if err := json.Unmarshal(line, &ev); err != nil {
		t.Fatalf("decode %q: %v", line, err)
	}
	return ev
}

func TestExecNDJSONStreamsBeforeExit(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus {
		p.stdoutW.Write([]byte("first"))
		<-release // the command lives on until the test saw "first"
		p.stderrW.Write([]byte("second"))
		return ExitStatus{Code: 1}
	})
	resp := e.doJSON("POST", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"x"}}, "Accept", "application/x-ndjson")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	br := bufio.NewReader(resp.Body)
	if ev := readEvent(t, br); ev.Type != api.EventStdout || string(ev.Data) != "first" {
		t.Fatalf("first event %+v", ev)
	}
	close(release)
	if ev := readEvent(t, br); ev.Type != api.EventStderr || string(ev.Data) != "second" {
		t.Fatalf("second event %+v", ev)
	}
	if ev := readEvent(t, br); ev.Type != api.EventExit || ev.ExitCode != 1 {
		t.Fatalf("last event %+v", ev)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("data after the exit event (err %v)", err)
	}
}

func TestExecClientGoneKillsTheCommand(t *testing.T) {
	e := newEnv(t)
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus {
		p.stdoutW.Write([]byte("started"))
		<-p.killed
		return ExitStatus{Signal: "KILL"}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/v1/sessions/s1/exec",
		strings.NewReader(`{"argv":["sleep","1000"]}`))
	req.Header.Set("Authorization", "Bearer "+e.userToken())
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	readEvent(t, bufio.NewReader(resp.Body))
	proc := <-e.fake.procs
	cancel()
	select {
	case <-proc.killed:
	case <-time.After(5 * time.Second):
		t.Fatal("the command was not killed after the client went away")
	}
}

func TestExecStartErrorIsAPlainAnswer(t *testing.T) {
	e := newEnv(t)
	e.fake.mu.Lock()
	e.fake.execErr = api.Errorf(api.CodeInvalid, "exec: nope: no such file")
	e.fake.mu.Unlock()
	resp := e.doJSON("POST", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"nope"}}, "Accept", "application/x-ndjson")
	wantError(t, resp, 400, api.CodeInvalid)
}

func wsURL(e *testEnv, path string) string {
	return "ws" + strings.TrimPrefix(e.srv.URL, "http") + path
}

func dialExec(t *testing.T, e *testEnv, id string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, wsURL(e, "/v1/sessions/"+id+"/exec/ws"), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + e.userToken()}},
	})
	if err != nil {
		t.Fatalf("dial: %v (status %v)", err, resp)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func wsSend(t *testing.T, c *websocket.Conn, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := c.Write(context.Background(), websocket.MessageText, b); err != nil {
		t.Fatalf("send: %v", err)
	}
}

func wsRead(t *testing.T, c *websocket.Conn) (api.ExecEvent, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		return api.ExecEvent{}, err
	}
	var ev api.ExecEvent
	if err := json.Unmarshal(b, &ev); err != nil {
		t.Fatalf("decode %q: %v", b, err)
	}
	return ev, nil
}

func TestExecWebSocketPumpsBothWays(t *testing.T) {
	e := newEnv(t)
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus {
		io.Copy(p.stdoutW, p.stdinR) // echo until stdin_close
		var rs [2]int
		var sig string
		for rs == [2]int{} || sig == "" {
			select {
			case rs = <-p.resizes:
			case sig = <-p.signals:
			case <-time.After(5 * time.Second):
				return ExitStatus{Code: 99}
			}
		}
		fmt.Fprintf(p.stderrW, "tty=%v resize=%dx%d signal=%s", req.TTY, rs[0], rs[1], sig)
		return ExitStatus{Code: 7}
	})
	c := dialExec(t, e, "s1")
	wsSend(t, c, api.ExecRequest{Argv: []string{"sh"}, TTY: true, Rows: 24, Cols: 80})
	wsSend(t, c, api.ExecEvent{Type: "bogus"})
	wsSend(t, c, api.ExecEvent{Type: api.EventResize, Rows: 40, Cols: 120})
	wsSend(t, c, api.ExecEvent{Type: api.EventSignal, Signal: "INT"})
	wsSend(t, c, api.ExecEvent{Type: api.EventStdin, Data: []byte("hello ")})
	wsSend(t, c, api.ExecEvent{Type: api.EventStdin, Data: []byte("world")})
	wsSend(t, c, api.ExecEvent{Type: api.EventStdinClose})

	var stdout, stderr string
	var errs []api.ErrorBody
	for {
		ev, err := wsRead(t, c)
		if err != nil {
			t.Fatalf("read before exit: %v", err)
		}
		switch ev.Type {
		case api.EventStdout:
			stdout += string(ev.Data)
		case api.EventStderr:
			stderr += string(ev.Data)
		case api.EventError:
			errs = append(errs, *ev.Error)
		case api.EventExit:
			if len(errs) != 1 || errs[0].Code != api.CodeInvalid || !strings.Contains(errs[0].Message, "bogus") {
				t.Errorf("error events %+v, want one for the bogus message", errs)
			}
			if ev.ExitCode != 7 {
				t.Errorf("exit %+v", ev)
			}
			if stdout != "hello world" || stderr != "tty=true resize=40x120 signal=INT" {
				t.Errorf("stdout %q, stderr %q", stdout, stderr)
			}
			_, err := wsRead(t, c)
			if s := websocket.CloseStatus(err); s != websocket.StatusNormalClosure {
				t.Errorf("after exit: %v (close status %v), want a normal closure", err, s)
			}
			return
		default:
			t.Fatalf("unexpected event %+v", ev)
		}
	}
}

func TestExecWebSocketBadRequestIsAnErrorMessage(t *testing.T) {
	e := newEnv(t)
	c := dialExec(t, e, "s1")
	wsSend(t, c, map[string]any{"argv": []string{}})
	ev, err := wsRead(t, c)
	if err != nil || ev.Type != api.EventError || ev.Error == nil || ev.Error.Code != api.CodeInvalid {
		t.Fatalf("event %+v, err %v", ev, err)
	}
	_, err = wsRead(t, c)
	if s := websocket.CloseStatus(err); s != websocket.StatusPolicyViolation {
		t.Errorf("close status %v, want policy violation", s)
	}
	if n := len(e.fake.procs); n != 0 {
		t.Errorf("%d commands started", n)
	}
}

func TestExecWebSocketClientGoneKillsTheCommand(t *testing.T) {
	e := newEnv(t)
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus {
		<-p.killed
		return ExitStatus{Signal: "KILL"}
	})
	c := dialExec(t, e, "s1")
	wsSend(t, c, api.ExecRequest{Argv: []string{"sleep", "1000"}})
	proc := <-e.fake.procs
	c.CloseNow()
	select {
	case <-proc.killed:
	case <-time.After(5 * time.Second):
		t.Fatal("the command was not killed after the client went away")
	}
}

func TestExecWebSocketUpgradeNeedsTokenAndSession(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, wsURL(e, "/v1/sessions/s1/exec/ws"), nil)
	if err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("dial without token: err %v, resp %v", err, resp)
	}
	_, resp, err = websocket.Dial(ctx, wsURL(e, "/v1/sessions/nope/exec/ws"), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + e.userToken()}},
	})
	if err == nil || resp == nil || resp.StatusCode != 404 {
		t.Fatalf("dial unknown session: err %v, resp %v", err, resp)
	}
	// A plain GET is told what the route wants.
	wantError(t, e.do("GET", "/v1/sessions/s1/exec/ws", nil), 400, api.CodeInvalid)
}

// Commands may run longer than the http.Server's timeouts allow a plain
// request; the exec forms must neither be cut nor have the command killed.
func TestExecOutlivesServerTimeouts(t *testing.T) {
	e := newEnv(t)
	ts := httptest.NewUnstartedServer(e.server.Handler())
	ts.Config.ReadTimeout = 200 * time.Millisecond
	ts.Config.WriteTimeout = 200 * time.Millisecond
	ts.Start()
	t.Cleanup(ts.Close)
	e.srv = ts
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus {
		select {
		case <-p.killed:
			return ExitStatus{Signal: "KILL"}
		case <-time.After(600 * time.Millisecond):
		}
		p.stdoutW.Write([]byte("late"))
		return ExitStatus{Code: 5}
	})
	exec := api.ExecRequest{Argv: []string{"slow"}}

	t.Run("buffered", func(t *testing.T) {
		res := decode[api.ExecResult](t, e.with(t).doJSON("POST", "/v1/sessions/s1/exec", exec), 200)
		if res.ExitCode != 5 || string(res.Stdout) != "late" {
			t.Fatalf("result %+v", res)
		}
	})
	t.Run("ndjson", func(t *testing.T) {
		resp := e.with(t).doJSON("POST", "/v1/sessions/s1/exec", exec, "Accept", "application/x-ndjson")
		br := bufio.NewReader(resp.Body)
		if ev := readEvent(t, br); string(ev.Data) != "late" {
			t.Fatalf("event %+v", ev)
		}
		if ev := readEvent(t, br); ev.Type != api.EventExit || ev.ExitCode != 5 {
			t.Fatalf("event %+v", ev)
		}
	})
	t.Run("websocket", func(t *testing.T) {
		c := dialExec(t, e, "s1")
		wsSend(t, c, exec)
		var got []api.ExecEvent
		for {
			ev, err := wsRead(t, c)
			if err != nil {
				break
			}
			got = append(got, ev)
		}
		if len(got) != 2 || string(got[0].Data) != "late" || got[1].Type != api.EventExit || got[1].ExitCode != 5 {
			t.Fatalf("events %+v", got)
		}
	})
}
