package main_test

import (
	"strings"
	"syscall"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmtest"
)

// TestStopOnExit: a server started with --stop-on-exit stops every VM
// when it is told to stop (SIGTERM): no QEMU process of its home is left,
// and the next server finds the session failed, saying it was stopped
// with the server, and removes it. (Without the flag the VMs outlive the
// server: TestEndToEnd/SessionsOutliveServerRestarts.)
func TestStopOnExit(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.serverArgs = []string{"--stop-on-exit"}
	e.startServer()
	id := e.create()
	e.wantRunning(id)
	if len(vmtest.QEMUProcs(e.home)) == 0 {
		t.Fatal("no QEMU process of the running session")
	}
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Fatalf("server stop: %v", err)
	}
	if procs := vmtest.QEMUProcs(e.home); len(procs) != 0 {
		t.Fatalf("after a --stop-on-exit server stopped, QEMU processes of its home run: %v", procs)
	}
	e.serverArgs = nil
	e.startServer()
	s := e.inspect(id)
	if s.State != api.StateFailed || !strings.Contains(s.Error, "stopped with the server") {
		t.Fatalf("after --stop-on-exit the session is %s (%q), want failed, stopped with the server", s.State, s.Error)
	}
	e.ok(nil, "rm", id)
	e.stopAll()
}
