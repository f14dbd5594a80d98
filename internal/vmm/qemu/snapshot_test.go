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

// TestSaveRestoreKeepsProcesses parks a VM through Save and Restore and
// checks a background process kept its PID and its in-memory count.
func TestSaveRestoreKeepsProcesses(t *testing.T) {
	d := newDriver(t)
	vm, c, spec := bootTiny(t, d)
	// The count is renamed into place: a reader never sees it truncated.
	run(t, c, "sh", "-c", "(i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done) >/dev/null 2>&1 & echo $! > /tmp/pid")
	time.Sleep(300 * time.Millisecond)
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
		n1, _ := strconv.Atoi(run(t, c2, "cat", "/tmp/count"))
		time.Sleep(300 * time.Millisecond)
		n2, _ := strconv.Atoi(run(t, c2, "cat", "/tmp/count"))
		if n2 <= n1 || n1 == 0 {
			t.Fatalf("counter after restore %d then %d: want it still counting", n1, n2)
		}
		if got := run(t, c2, "sh", "-c", "kill -0 "+pid+" && echo alive"); got != "alive" {
			t.Fatalf("background process %s gone after restore", pid)
		}
		c2.Close()
	}
}
