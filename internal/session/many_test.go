package session_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmtest"
)

// TestEightSessionsAtOnce creates eight sessions concurrently, runs
// commands in all of them concurrently, and checks that each guest has its
// own disk: a file written in one is seen there and nowhere else. Deleting
// them all leaves no QEMU process and no session directory.
func TestEightSessionsAtOnce(t *testing.T) {
	const n = 8
	r := newRig(t, rigOptions{})
	ctx := context.Background()

	start := time.Now()
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{MemoryMiB: 256, BootTimeout: "3m"})
			if err == nil && s.State != api.StateRunning {
				err = fmt.Errorf("session %s is %s", s.ID, s.State)
			}
			ids[i], errs[i] = s.ID, err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("create %d: %v", i, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d sessions created concurrently in %s", n, time.Since(start).Round(time.Millisecond))
	if procs := vmtest.VMProcs(r.dir); len(procs) != n {
		t.Fatalf("%d QEMU processes for %d sessions", len(procs), n)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("session id %s given twice", id)
		}
		seen[id] = true
	}

	// Each writes its own file, concurrently.
	start = time.Now()
	forAll := func(f func(i int, id string) error) {
		t.Helper()
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, id := range ids {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = f(i, id) }()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("session %d (%s): %v", i, ids[i], err)
			}
		}
	}
	forAll(func(i int, id string) error {
		res, err := runCmd(r.mgr, id, api.ExecRequest{Argv: []string{"sh", "-c", "echo $ME > /root/me; hostname"}, Env: map[string]string{"ME": id}}, nil)
		if err != nil {
			return err
		}
		if res.status.Code != 0 || strings.TrimSpace(res.stdout) == "" {
			return fmt.Errorf("write own file: %+v stdout %q stderr %q", res.status, res.stdout, res.stderr)
		}
		return nil
	})
	// …and sees only its own.
	forAll(func(i int, id string) error {
		res, err := runCmd(r.mgr, id, api.ExecRequest{Argv: []string{"sh", "-c", "cat /root/me; ls /root"}}, nil)
		if err != nil {
			return err
		}
		if want := id + "\nme\n"; res.stdout != want {
			return fmt.Errorf("guest holds %q, want only its own file %q", res.stdout, want)
		}
		return nil
	})
	t.Logf("exec in %d sessions concurrently (twice): %s", n, time.Since(start).Round(time.Millisecond))

	ss, err := r.mgr.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != n {
		t.Fatalf("List has %d sessions, want %d", len(ss), n)
	}
	for _, s := range ss {
		if s.State != api.StateRunning || s.MemoryMiB != 256 || s.BootMillis <= 0 {
			t.Errorf("listed session %+v", s)
		}
	}

	start = time.Now()
	forAll(func(i int, id string) error { return r.mgr.Delete(ctx, id) })
	t.Logf("%d sessions deleted concurrently in %s", n, time.Since(start).Round(time.Millisecond))
	if ss, _ := r.mgr.List(ctx); len(ss) != 0 {
		t.Fatalf("sessions left after deleting all: %+v", ss)
	}
	if procs := vmtest.VMProcs(r.dir); len(procs) != 0 {
		t.Fatalf("QEMU processes left after deleting all: %v", procs)
	}
	for _, e := range sessionEntries(r.dir) {
		t.Errorf("left in the sessions dir after deleting all: %s", filepath.Join(r.dir, e))
	}
	for _, id := range ids {
		_, err := r.mgr.Get(ctx, id)
		wantCode(t, "get of a deleted session", err, api.CodeNotFound)
	}
}
