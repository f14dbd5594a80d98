package qmp_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/qmp"
	"github.com/cove-dev/cove/internal/vmtest"
)

// startQEMU runs a QEMU with no machine (instant to start) and its QMP
// socket, paused by -S, and returns the socket path and the process.
func startQEMU(t *testing.T) (string, *exec.Cmd) {
	t.Helper()
	vmtest.Require(t)
	sock := filepath.Join(shortDir(t), "qmp.sock")
	cmd := exec.Command("qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none",
		"-qmp", "unix:"+sock+",server=on,wait=off", "-S")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	return sock, cmd
}

func dial(t *testing.T, sock string) *qmp.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mustWithin)
	defer cancel()
	c, err := qmp.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type status struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

func queryStatus(t *testing.T, c *qmp.Conn) status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mustWithin)
	defer cancel()
	raw, err := c.Execute(ctx, "query-status", nil)
	if err != nil {
		t.Fatalf("query-status: %v", err)
	}
	var s status
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("query-status answered %s: %v", raw, err)
	}
	return s
}

func execute(t *testing.T, c *qmp.Conn, cmd string, args any) json.RawMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mustWithin)
	defer cancel()
	raw, err := c.Execute(ctx, cmd, args)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return raw
}

// mustWithin bounds the waits for what must happen (an answer, an event,
// a return): generous, since it only decides when a broken client fails
// the test on a loaded machine; no test here measures speed.
const mustWithin = 30 * time.Second

// nextEvent returns the next event named name, skipping others.
func nextEvent(t *testing.T, events <-chan qmp.Event, name string) qmp.Event {
	t.Helper()
	timeout := time.After(mustWithin)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("event channel closed while waiting for %s", name)
			}
			if ev.Name == name {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event within %s", name, mustWithin)
		}
	}
}

func TestQEMURunState(t *testing.T) {
	sock, _ := startQEMU(t)
	c := dial(t, sock)
	events := c.Events()

	// -S: the machine has not started.
	if s := queryStatus(t, c); s.Running || (s.Status != "prelaunch" && s.Status != "paused") {
		t.Fatalf("status before cont: %+v, want not running (prelaunch)", s)
	}
	execute(t, c, "cont", nil)
	nextEvent(t, events, "RESUME")
	if s := queryStatus(t, c); !s.Running || s.Status != "running" {
		t.Fatalf("status after cont: %+v, want running", s)
	}
	execute(t, c, "stop", nil)
	ev := nextEvent(t, events, "STOP")
	if ev.Timestamp.Seconds == 0 {
		t.Errorf("STOP event without a timestamp: %+v", ev)
	}
	if s := queryStatus(t, c); s.Running || s.Status != "paused" {
		t.Fatalf("status after stop: %+v, want paused", s)
	}
}

func TestQEMUUnknownCommand(t *testing.T) {
	sock, _ := startQEMU(t)
	c := dial(t, sock)
	_, err := c.Execute(context.Background(), "no-such-command", nil)
	var qe *qmp.Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v, want *qmp.Error of class CommandNotFound", err)
	}
	// Bad arguments are QEMU's error too, and the connection goes on.
	_, err = c.Execute(context.Background(), "query-status", map[string]int{"bogus": 1})
	if !errors.As(err, &qe) || qe.Class != "GenericError" {
		t.Fatalf("bad arguments: %v, want *qmp.Error of class GenericError", err)
	}
	queryStatus(t, c)
}

func TestQEMUConcurrentCommands(t *testing.T) {
	sock, _ := startQEMU(t)
	c := dial(t, sock)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), mustWithin)
			defer cancel()
			// Alternate two commands with different answers: a mixed-up
			// id would hand one caller the other's answer.
			if i%2 == 0 {
				raw, err := c.Execute(ctx, "query-status", nil)
				var s status
				if err != nil || json.Unmarshal(raw, &s) != nil || s.Status == "" {
					errs <- errors.New("query-status answered " + string(raw))
				}
			} else {
				raw, err := c.Execute(ctx, "query-name", nil)
				var n map[string]any
				if err != nil || json.Unmarshal(raw, &n) != nil || n["status"] != nil {
					errs <- errors.New("query-name answered " + string(raw))
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestQEMUPassesFileDescriptors(t *testing.T) {
	sock, _ := startQEMU(t)
	c := dial(t, sock)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), mustWithin)
	defer cancel()
	if _, err := c.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": "migfd"}, w); err != nil {
		t.Fatalf("getfd with SCM_RIGHTS: %v", err)
	}
	// QEMU knows the name only if it received the descriptor.
	execute(t, c, "closefd", map[string]string{"fdname": "migfd"})
	_, err = c.Execute(ctx, "closefd", map[string]string{"fdname": "migfd"})
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		t.Fatalf("second closefd: %v, want QEMU's error (the fd is gone)", err)
	}
	// getfd without a descriptor is refused by QEMU.
	if _, err := c.Execute(ctx, "getfd", map[string]string{"fdname": "nofd"}); !errors.As(err, &qe) {
		t.Fatalf("getfd without a descriptor: %v, want QEMU's error", err)
	}
}

func TestQEMUQuitEndsTheConnection(t *testing.T) {
	sock, cmd := startQEMU(t)
	c := dial(t, sock)
	events := c.Events()
	ctx, cancel := context.WithTimeout(context.Background(), mustWithin)
	defer cancel()
	// QEMU may answer quit or close first; either way the connection ends.
	_, _ = c.Execute(ctx, "quit", nil)
	select {
	case <-c.Done():
	case <-time.After(mustWithin):
		t.Fatal("Done not closed after quit")
	}
	ev := nextEvent(t, events, "SHUTDOWN")
	var data struct {
		Reason string `json:"reason"`
	}
	if json.Unmarshal(ev.Data, &data) != nil || data.Reason != "host-qmp-quit" {
		t.Errorf("SHUTDOWN data %s, want reason host-qmp-quit", ev.Data)
	}
	for range events { // closed with the connection
	}

	// A command after QEMU is gone fails, though its context never ends:
	// it must not wait for an answer that cannot come.
	errc := make(chan error, 1)
	go func() {
		_, err := c.Execute(context.Background(), "query-status", nil)
		errc <- err
	}()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Execute after quit succeeded")
		}
	case <-time.After(mustWithin):
		t.Fatalf("Execute after quit still waits after %s", mustWithin)
	}
	if ev, ok := <-c.Events(); ok {
		t.Fatalf("a subscription after the end received %+v, want a closed channel", ev)
	}
	cmd.Process.Signal(os.Kill) // in case quit did not reach it
}

// A command in flight when QEMU dies fails rather than hanging.
func TestQEMUKilledFailsPendingCommands(t *testing.T) {
	sock, cmd := startQEMU(t)
	c := dial(t, sock)
	execute(t, c, "stop", nil)
	// Many commands in flight while the process dies.
	var wg sync.WaitGroup
	errc := make(chan error, 100)
	for range 100 {
		wg.Go(func() {
			_, err := c.Execute(context.Background(), "query-status", nil)
			errc <- err
		})
	}
	cmd.Process.Kill()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(mustWithin):
		t.Fatal("Execute calls hang after QEMU was killed")
	}
	close(errc)
	failed := 0
	for err := range errc {
		if err != nil {
			failed++
		}
	}
	t.Logf("%d of 100 commands failed (the rest were answered before the kill)", failed)
	if _, err := c.Execute(context.Background(), "query-status", nil); err == nil {
		t.Fatal("Execute after the kill succeeded")
	}
}
