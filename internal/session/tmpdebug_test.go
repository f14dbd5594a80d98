package session_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm"
)

type logDriver struct {
	vmm.Driver
	t *testing.T
}

type logVM struct {
	vmm.VM
	t     *testing.T
	n     atomic.Int32
	start time.Time
}

func (d logDriver) Boot(ctx context.Context, spec vmm.Spec) (vmm.VM, error) {
	vm, err := d.Driver.Boot(ctx, spec)
	if err != nil {
		return nil, err
	}
	return &logVM{VM: vm, t: d.t, start: time.Now()}, nil
}

func (v *logVM) DialAgent(ctx context.Context) (net.Conn, error) {
	c, err := v.VM.DialAgent(ctx)
	n := v.n.Add(1)
	v.t.Logf("pid %d dial #%d at %s: err %v", v.PID(), n, time.Since(v.start).Round(time.Millisecond), err)
	return c, err
}

func TestTmpDebug8(t *testing.T) {
	r := newRig(t, rigOptions{driver: func(d vmm.Driver) vmm.Driver { return logDriver{d, t} }})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := r.mgr.Create(context.Background(), api.CreateSessionRequest{MemoryMiB: 256, BootTimeout: "40s"})
			t.Logf("create %d: %s %v", i, s.ID, err)
		}()
	}
	wg.Wait()
}
