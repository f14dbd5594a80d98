package qemu_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
)

// TestFreezeThaw freezes a running VM (vmm.Freezer): its QEMU process is
// stopped and the guest's agent answers nothing within a bounded wait;
// thawed, the guest runs on with its memory intact (a background
// process's PID and in-memory count); a frozen VM that its server
// released is adopted thawed; and a frozen VM's Stop ends it without
// waiting on its monitor.
func TestFreezeThaw(t *testing.T) {
	d := newDriver(t)
	vm, c, _ := bootTiny(t, d)
	run(t, c, "sh", "-c", "(i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done) >/dev/null 2>&1 & echo $! > /tmp/pid")
	before := countPast(t, c, 0)
	pid := run(t, c, "cat", "/tmp/pid")
	ctx := context.Background()

	if err := d.Freeze(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if st := procState(t, vm.PID()); st != "T" {
		t.Fatalf("QEMU process state %q after Freeze, want T (stopped)", st)
	}
	ectx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err := c.Exec(ectx, agentproto.Exec{Argv: []string{"true"}})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("exec in a frozen guest: %v; want no answer until the deadline", err)
	}
	if err := d.Freeze(ctx, vm); err != nil {
		t.Fatalf("freezing a frozen VM: %v", err)
	}

	if err := d.Thaw(ctx, vm); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c = connect(t, vm, "after thaw")
	countPast(t, c, before)
	if got := run(t, c, "sh", "-c", "kill -0 "+pid+" && echo alive"); got != "alive" {
		t.Fatalf("background process %s gone after the thaw", pid)
	}
	c.Close()

	// A server that froze it dies (releases it): the next one adopts it
	// thawed.
	if err := d.Freeze(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if err := vm.Release(); err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, time.Minute)
	adopted, err := d.Adopt(actx, vm.Handle())
	cancel()
	if err != nil {
		t.Fatalf("adopt a frozen VM: %v", err)
	}
	vm = adopted
	t.Cleanup(func() { vm.Stop(context.Background()) })
	c = connect(t, vm, "after the adoption")
	countPast(t, c, before)
	c.Close()

	if err := d.Freeze(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatalf("stop a frozen VM: %v", err)
	}
	select {
	case <-vm.Done():
	default:
		t.Fatal("a frozen VM's QEMU still runs after Stop")
	}
	if err := d.Thaw(ctx, vm); err == nil {
		t.Error("thawing a stopped VM succeeded")
	}
}

// procState is the state letter of process pid (/proc/PID/stat).
func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return strings.Fields(s[i+1:])[0]
}
