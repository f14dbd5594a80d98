package qmp_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/qmp"
)

// A transcript (testdata/*.jsonl) is a QMP conversation played by a fake
// QEMU, one step a line ("#" lines are comments):
//
//	{"server": MSG}         the fake QEMU sends MSG
//	{"server_raw": "TEXT"}  the fake QEMU sends TEXT as one line
//	{"client": MSG}         the client sends MSG: the test calls Execute with
//	                        MSG's command and arguments (Dial itself sends
//	                        qmp_capabilities) and compares what arrives
//	{"dialed": true}        Dial has returned; the test subscribes to events
//	{"close": true}         the fake QEMU closes the connection
//	{"want": {"id": N, "return": V}}    the Execute that sent id N returns V
//	{"want": {"id": N, "error": E}}     ... fails with *qmp.Error E
//	{"want": {"id": N, "closed": true}} ... fails as the connection ended
//	{"want_event": EVENT}   the subscriber receives EVENT (all, in order)
//	{"want_dial_error": "TEXT"}  Dial fails with an error containing TEXT
type step struct {
	Server        json.RawMessage `json:"server"`
	ServerRaw     *string         `json:"server_raw"`
	Client        json.RawMessage `json:"client"`
	Dialed        bool            `json:"dialed"`
	Close         bool            `json:"close"`
	Want          *wantReply      `json:"want"`
	WantEvent     json.RawMessage `json:"want_event"`
	WantDialError string          `json:"want_dial_error"`
}

type wantReply struct {
	ID     uint64          `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *qmp.Error      `json:"error"`
	Closed bool            `json:"closed"`
}

func loadTranscript(t *testing.T, path string) []step {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var steps []step
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		var s step
		if err := dec.Decode(&s); err != nil {
			t.Fatalf("%s:%d: %v", path, i+1, err)
		}
		steps = append(steps, s)
	}
	return steps
}

// shortDir returns a temp dir whose path fits in a unix socket address.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "qmp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func compact(t *testing.T, raw []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// eventJSON renders an event as a transcript writes it.
func eventJSON(ev qmp.Event) []byte {
	m := map[string]any{"event": ev.Name, "timestamp": ev.Timestamp}
	if len(ev.Data) > 0 && string(ev.Data) != "null" {
		m["data"] = ev.Data
	}
	b, _ := json.Marshal(m)
	return b
}

type execResult struct {
	ret json.RawMessage
	err error
}

func TestTranscripts(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.jsonl")
	if len(files) == 0 {
		t.Fatal("no transcripts in testdata")
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".jsonl"), func(t *testing.T) {
			replay(t, loadTranscript(t, f))
		})
	}
}

func replay(t *testing.T, steps []step) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sock := filepath.Join(shortDir(t), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	type dialed struct {
		c   *qmp.Conn
		err error
	}
	dialc := make(chan dialed, 1)
	go func() {
		c, err := qmp.Dial(ctx, sock)
		dialc <- dialed{c, err}
	}()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srvR := bufio.NewReader(srv)

	var (
		c          *qmp.Conn
		events     <-chan qmp.Event
		results    = map[uint64]chan execResult{}
		wants      []wantReply
		wantEvents [][]byte
		dialWant   *string
	)
	waitDial := func() dialed {
		select {
		case d := <-dialc:
			return d
		case <-ctx.Done():
			t.Fatal("Dial did not return")
			return dialed{}
		}
	}
	for i, s := range steps {
		switch {
		case s.Server != nil:
			if _, err := srv.Write(append(compact(t, s.Server), '\n')); err != nil {
				t.Fatalf("step %d: send: %v", i, err)
			}
		case s.ServerRaw != nil:
			if _, err := srv.Write([]byte(*s.ServerRaw + "\n")); err != nil {
				t.Fatalf("step %d: send: %v", i, err)
			}
		case s.Client != nil:
			var m struct {
				Execute   string          `json:"execute"`
				Arguments json.RawMessage `json:"arguments"`
				ID        uint64          `json:"id"`
			}
			if err := json.Unmarshal(s.Client, &m); err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			if m.Execute != "qmp_capabilities" {
				if c == nil {
					t.Fatalf("step %d: a command before {\"dialed\": true}", i)
				}
				var args any
				if len(m.Arguments) > 0 {
					args = m.Arguments
				}
				ch := make(chan execResult, 1)
				results[m.ID] = ch
				go func() {
					ret, err := c.Execute(ctx, m.Execute, args)
					ch <- execResult{ret, err}
				}()
			}
			srv.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := srvR.ReadBytes('\n')
			if err != nil {
				t.Fatalf("step %d: waiting for %s: %v", i, s.Client, err)
			}
			if !jsonEqual(line, s.Client) {
				t.Fatalf("step %d: client sent %s, want %s", i, bytes.TrimSpace(line), s.Client)
			}
		case s.Dialed:
			d := waitDial()
			if d.err != nil {
				t.Fatalf("step %d: Dial: %v", i, d.err)
			}
			c = d.c
			defer c.Close()
			events = c.Events()
		case s.Close:
			srv.Close()
		case s.Want != nil:
			wants = append(wants, *s.Want)
		case s.WantEvent != nil:
			wantEvents = append(wantEvents, compact(t, s.WantEvent))
		case s.WantDialError != "":
			dialWant = &s.WantDialError
		default:
			t.Fatalf("step %d: empty step", i)
		}
	}

	if dialWant != nil {
		d := waitDial()
		if d.err == nil {
			d.c.Close()
			t.Fatalf("Dial succeeded, want an error containing %q", *dialWant)
		}
		if !strings.Contains(d.err.Error(), *dialWant) {
			t.Fatalf("Dial: %v, want an error containing %q", d.err, *dialWant)
		}
		return
	}
	if c == nil {
		t.Fatal("transcript never reaches {\"dialed\": true}")
	}

	for _, w := range wants {
		ch, ok := results[w.ID]
		if !ok {
			t.Errorf("want for id %d: no command in flight with that id (unused, or wanted twice)", w.ID)
			continue
		}
		delete(results, w.ID)
		var r execResult
		select {
		case r = <-ch:
		case <-ctx.Done():
			t.Fatalf("id %d: Execute did not return", w.ID)
		}
		var qe *qmp.Error
		switch {
		case w.Closed:
			if r.err == nil || errors.As(r.err, &qe) || errors.Is(r.err, context.DeadlineExceeded) {
				t.Errorf("id %d: got %s, %v; want a connection-closed error", w.ID, r.ret, r.err)
			}
		case w.Error != nil:
			if !errors.As(r.err, &qe) || *qe != *w.Error {
				t.Errorf("id %d: got %s, %v; want *qmp.Error %+v", w.ID, r.ret, r.err, *w.Error)
			}
		default:
			if r.err != nil || !jsonEqual(r.ret, w.Return) {
				t.Errorf("id %d: got %s, %v; want %s", w.ID, r.ret, r.err, w.Return)
			}
		}
	}
	var unchecked []uint64
	for id := range results {
		unchecked = append(unchecked, id)
	}
	sort.Slice(unchecked, func(i, j int) bool { return unchecked[i] < unchecked[j] })
	if len(unchecked) > 0 {
		t.Errorf("transcript has no want for ids %v", unchecked)
	}

	// End the connection; the event channel then closes, holding exactly
	// the events the transcript wants.
	srv.Close()
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("Done not closed after the server went away")
	}
	var got [][]byte
	for ev := range events {
		got = append(got, eventJSON(ev))
	}
	if len(got) != len(wantEvents) {
		t.Fatalf("received %d events %s, want %d %s", len(got), got, len(wantEvents), wantEvents)
	}
	for i := range got {
		if !jsonEqual(got[i], wantEvents[i]) {
			t.Errorf("event %d: %s, want %s", i, got[i], wantEvents[i])
		}
	}
	if _, err := c.Execute(ctx, "query-status", nil); err == nil {
		t.Error("Execute on an ended connection succeeded")
	}
}

// dialErr runs Dial with a context that ends after 300 ms and returns its
// error. Dial retries, and waits for the greeting, until its context ends:
// if it has not returned a generous while after that (it never would,
// were the context ignored), the test fails. How soon it returns is
// not checked here.
func dialErr(t *testing.T, sock string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		c, err := qmp.Dial(ctx, sock)
		if c != nil {
			c.Close()
		}
		errc <- err
	}()
	select {
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Dial did not return within 30 s of its context's end")
		return nil
	}
}

func TestDialGivesUpWhenNothingListens(t *testing.T) {
	if err := dialErr(t, filepath.Join(shortDir(t), "absent.sock")); err == nil {
		t.Fatal("Dial of a missing socket succeeded")
	}
}

func TestDialGivesUpWithoutGreeting(t *testing.T) {
	sock := filepath.Join(shortDir(t), "mute.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The server accepts and says nothing for as long as the test runs:
	// only Dial's context can end the wait.
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			<-quit
		}
	}()
	if err := dialErr(t, sock); err == nil || !strings.Contains(err.Error(), "greeting") {
		t.Fatalf("Dial of a mute server: %v, want a greeting error", err)
	}
}
