package qemu_test

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
)

func run(t *testing.T, c *agentproto.Client, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := c.Exec(ctx, agentproto.Exec{Argv: argv})
	if err != nil {
		t.Fatalf("exec %v: %v", argv, err)
	}
	go io.Copy(io.Discard, p.Stderr())
	var out bytes.Buffer
	io.Copy(&out, p.Stdout())
	if exit, err := p.Wait(); err != nil || exit.Code != 0 {
		t.Fatalf("exec %v: exit %+v err %v", argv, exit, err)
	}
	return strings.TrimSpace(out.String())
}

// countPast waits until the guest's /tmp/count (written by a counting loop
// the test started) is past n, and returns it: the loop runs.
func countPast(t *testing.T, c *agentproto.Client, n int) int {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, _ := guestSh(t, c, "cat /tmp/count 2>/dev/null || echo 0")
		v, err := strconv.Atoi(out)
		if err != nil {
			t.Fatalf("the guest's counter reads %q", out)
		}
		if v > n {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest's counter stays at %d for a minute, want it past %d: the counting process does not run", v, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSaveRestoreKeepsProcesses parks a VM through Save and Restore and
// checks a background process kept its PID and its in-memory count.
func TestSaveRestoreKeepsProcesses(t *testing.T) {
	d := newDriver(t)
	vm, c, spec := bootTiny(t, d)
	// The count is renamed into place: a reader never sees it truncated.
	run(t, c, "sh", "-c", "(i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done) >/dev/null 2>&1 & echo $! > /tmp/pid")
	countPast(t, c, 0)
	pid := run(t, c, "cat", "/tmp/pid")
	c.Close()

	ctx := context.Background()
	state := filepath.Join(spec.Dir, "state")
	for i := 0; i < 3; i++ {
		stats, err := d.Save(ctx, vm, state)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("save: %+v", stats)
		select {
		case <-vm.Done():
		default:
			t.Fatal("QEMU still running after Save")
		}
		restored, rstats, err := d.Restore(ctx, spec, state)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { restored.Stop(context.Background()) })
		vm = restored
		c2 := connect(t, vm, "after restore")
		t.Logf("restore: %+v", rstats)
		// Still counting: past where it stood at the restore.
		countPast(t, c2, countPast(t, c2, 0))
		if got := run(t, c2, "sh", "-c", "kill -0 "+pid+" && echo alive"); got != "alive" {
			t.Fatalf("background process %s gone after restore", pid)
		}
		c2.Close()
	}
}
