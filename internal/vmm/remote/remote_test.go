package remote_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/fake"
	"github.com/cove-dev/cove/internal/vmm/remote"
	"github.com/cove-dev/cove/internal/vmm/vmmtest"
)

// serve serves d over real HTTP and returns the remote driver that calls
// it, and the server's URL.
func serve(t *testing.T, d vmm.Driver) (*remote.Driver, string) {
	t.Helper()
	srv := httptest.NewServer(remote.Handler(d, remote.HandlerConfig{}))
	t.Cleanup(func() {
		srv.CloseClientConnections() // Done's long polls of VMs released and never ended
		srv.Close()
	})
	addr := srv.Listener.Addr().String()
	return remote.New(func(ctx context.Context) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "tcp", addr)
	}), srv.URL
}

func fakeSpec(t *testing.T) vmm.Spec {
	dir := t.TempDir()
	// A real qcow2 disk: a checkpoint stacks an overlay on it.
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "disk.qcow2"), "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	return vmm.Spec{ID: "s-" + filepath.Base(dir), Dir: dir, Kernel: "/fake/vmlinux", Initrd: "/fake/initrd",
		Disk: filepath.Join(dir, "disk.qcow2"), MemoryMiB: 64, CPUs: 1}
}

// findFake is the fake's VM whose process is pid.
func findFake(t *testing.T, fd *fake.Driver, pid int) *fake.VM {
	t.Helper()
	for _, id := range fd.Running() {
		if vm := fd.Find(id); vm != nil && vm.PID() == pid {
			return vm
		}
	}
	t.Fatalf("the fake runs no VM of PID %d", pid)
	return nil
}

// The conformance suite passes over the wire as it does on the fake
// itself: agent connections, hooks, checkpoints, KillVMs's match and the
// disk calls all cross it.
func TestFakeRemoteConformance(t *testing.T) {
	t.Parallel()
	vmmtest.Run(t, func(t *testing.T) vmmtest.Harness {
		fd := fake.New()
		t.Cleanup(func() {
			if ids := fd.Running(); len(ids) != 0 {
				t.Errorf("VMs left running: %v", ids)
			}
		})
		d, _ := serve(t, fd)
		return vmmtest.Harness{
			Driver:  d,
			Spec:    fakeSpec,
			Kill:    func(t *testing.T, vm vmm.VM) { findFake(t, fd, vm.PID()).Kill() },
			Pause:   func(t *testing.T, spec vmm.Spec, _ vmm.VM) { fd.Find(spec.ID).Pause() },
			Timeout: 30 * time.Second,
			MemFile: fake.MemFile,
		}
	})
}

// post sends body to the node's route and returns the status and the
// error envelope's code.
func post(t *testing.T, url, route, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url+remote.Prefix+route, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.ErrorResponse
	_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e)
	return resp.StatusCode, e.Error.Code
}

// Bad input is answered 4xx with the error envelope, and boots nothing
// and writes no file.
func TestFakeRemoteBadInput(t *testing.T) {
	t.Parallel()
	fd := fake.New()
	_, url := serve(t, fd)
	sp := fakeSpec(t)
	good := `{"spec":{"id":"x","dir":"` + sp.Dir + `","kernel":"/k","disk":"` + sp.Disk + `","memory_mib":64,"cpus":1}}`
	for _, tc := range []struct {
		name, route, body string
		status            int
	}{
		{"malformed JSON", "boot", `{"spec":`, 400},
		{"two values", "boot", good + good, 400},
		{"unknown field", "boot", `{"spec":{"id":"x"},"extra":1}`, 400},
		{"relative dir", "boot", strings.Replace(good, sp.Dir, "rel/dir", 1), 400},
		{"no memory", "boot", strings.Replace(good, `"memory_mib":64`, `"memory_mib":0`, 1), 400},
		{"oversized", "boot", `{"spec":{"id":"` + strings.Repeat("x", remote.MaxBody) + `"}}`, 413},
		{"overlay bad format", "disks/overlay", `{"path":"` + sp.Dir + `/o.qcow2","backing":"` + sp.Disk + `","backing_format":"vmdk"}`, 400},
		{"overlay relative path", "disks/overlay", `{"path":"o.qcow2","backing":"` + sp.Disk + `","backing_format":"qcow2"}`, 400},
		{"restore without upgrade", "restore", `{"spec":` + good[len(`{"spec":`):len(good)-1] + `,"state":"/s"}`, 400},
		{"adopt without a handle", "adopt", `{}`, 400},
		{"adopt of garbage", "adopt", `{"handle":"Z2FyYmFnZQ=="}`, 404},
		{"unknown VM", "vms/nosuch/stop", `{}`, 404},
		{"unknown VM status", "vms/nosuch/resume", ``, 404},
		{"unknown route", "nosuch", `{}`, 404},
	} {
		status, code := post(t, url, tc.route, tc.body)
		if status != tc.status || code == "" {
			t.Errorf("%s: %d %q, want %d with an error code", tc.name, status, code, tc.status)
		}
	}
	if ids := fd.Running(); len(ids) != 0 {
		t.Errorf("bad input booted %v", ids)
	}
	if _, err := os.Stat(filepath.Join(sp.Dir, "o.qcow2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bad input made a disk: %v", err)
	}
}

// Errors keep their meaning on the server: a raw disk's Backing is
// vmm.ErrNotQcow2, an unknown VM is remote.ErrUnknownVM with not_found,
// a failed boot carries the driver's message, and a driver without
// snapshots answers errors.ErrUnsupported.
func TestFakeRemoteErrors(t *testing.T) {
	t.Parallel()
	fd := fake.New()
	d, _ := serve(t, fd)
	ctx := context.Background()
	raw := filepath.Join(t.TempDir(), "base.raw")
	if err := os.WriteFile(raw, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.Disks().Backing(ctx, raw); !errors.Is(err, vmm.ErrNotQcow2) {
		t.Errorf("Backing of a raw file: %v, want vmm.ErrNotQcow2", err)
	}
	fd.FailNext(fake.OpBoot, errors.New("no room for it"))
	if _, err := d.Boot(ctx, fakeSpec(t)); err == nil || !strings.Contains(err.Error(), "no room for it") {
		t.Errorf("failed boot: %v, want the driver's message", err)
	}

	vm, err := d.Boot(ctx, fakeSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if got := d.Accel(); got != "fake" {
		t.Errorf("Accel: %q, want the node driver's", got)
	}

	// A driver that is no Snapshotter or Checkpointer.
	plain, url := serve(t, struct{ vmm.Driver }{fd})
	vm, err = plain.Boot(ctx, fakeSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vm.Stop(context.Background()) })
	if _, err := plain.Save(ctx, vm, filepath.Join(t.TempDir(), "state")); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Save on a driver without snapshots: %v, want errors.ErrUnsupported", err)
	}
	if _, err := plain.Disk(ctx, vm); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Disk on a driver without checkpoints: %v, want errors.ErrUnsupported", err)
	}
	if _, err := plain.Save(ctx, &remote.VM{}, "/s"); err == nil {
		t.Error("Save of a VM of no remote driver succeeded")
	}
	resp, err := http.Get(url + remote.Prefix + "vms/nosuch/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("status of an unknown VM: %s, want 404", resp.Status)
	}
	// A VM released and stopped by another caller is still known until it
	// has been gone a while: Stop is a no-op then, as locally.
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vm.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// A caller's cancelled context cancels the call on the node: a restore
// whose caller goes during BeforeLoad fails there, leaving no VMM
// process, and the caller's error is context.Canceled.
func TestFakeRemoteCancelReachesTheNode(t *testing.T) {
	t.Parallel()
	fd := fake.New()
	d, _ := serve(t, fd)
	ctx := context.Background()
	sp := fakeSpec(t)
	vm, err := d.Boot(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := agentproto.Connect(ctx, vm.DialAgent)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	state := filepath.Join(sp.Dir, "state")
	if _, err := d.Save(ctx, vm, state); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	rspec := sp
	rspec.BeforeLoad = func(context.Context) error {
		cancel()
		time.Sleep(100 * time.Millisecond) // the node sees the stream close meanwhile
		return nil
	}
	if vm, _, err := d.Restore(rctx, rspec, state); !errors.Is(err, context.Canceled) {
		if err == nil {
			_ = vm.Stop(ctx)
		}
		t.Fatalf("restore whose caller went: %v, want context.Canceled", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(fd.Running()) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ids := fd.Running(); len(ids) != 0 {
		t.Fatalf("the cancelled restore left %v running on the node", ids)
	}
	// The snapshot is as good as before.
	vm, _, err = d.Restore(ctx, sp, state)
	if err != nil {
		t.Fatalf("restore after the cancelled one: %v", err)
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// Sweep crosses the wire with keep called back: under the root it is
// given, the node's driver ends the VM keep refuses and spares the other.
func TestFakeRemoteSweep(t *testing.T) {
	t.Parallel()
	fd := fake.New()
	d, _ := serve(t, fd)
	ctx := context.Background()
	root := t.TempDir()
	boot := func(name string) vmm.VM {
		sp := fakeSpec(t)
		sp.ID, sp.Dir = name, filepath.Join(root, name)
		if err := os.Mkdir(sp.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		vm, err := d.Boot(ctx, sp)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = vm.Stop(context.Background()) })
		return vm
	}
	kept, swept := boot("s-kept"), boot("s-swept")
	var asked []string
	pids := d.Sweep(root, func(id string) bool { asked = append(asked, id); return id == "s-kept" })
	if len(pids) != 1 || pids[0] != swept.PID() {
		t.Fatalf("Sweep killed %v, want [%d]; keep asked about %v", pids, swept.PID(), asked)
	}
	select {
	case <-swept.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the swept VM's Done did not close")
	}
	if st, err := kept.Status(ctx); err != nil || st != vmm.StatusRunning {
		t.Fatalf("the kept VM: %s, %v", st, err)
	}
	d.Prewarm(64, 1) // the fake starts nothing ahead: a no-op, answered
}

// blockingDriver is the fake whose VMs' Status waits for its context to
// end and reports that it did: a call in flight on the node.
type blockingDriver struct {
	vmm.Driver
	ended chan error
}

func (d blockingDriver) Boot(ctx context.Context, spec vmm.Spec) (vmm.VM, error) {
	vm, err := d.Driver.Boot(ctx, spec)
	if err != nil {
		return nil, err
	}
	return blockingVM{vm, d.ended}, nil
}

type blockingVM struct {
	vmm.VM
	ended chan error
}

func (vm blockingVM) Status(ctx context.Context) (vmm.Status, error) {
	<-ctx.Done()
	vm.ended <- ctx.Err()
	return "", ctx.Err()
}

// A plain call's cancelled context ends the call on the node too, and
// the caller's error is context.Canceled.
func TestFakeRemotePlainCallCancelReachesTheNode(t *testing.T) {
	t.Parallel()
	bd := blockingDriver{Driver: fake.New(), ended: make(chan error, 1)}
	d, _ := serve(t, bd)
	vm, err := d.Boot(context.Background(), fakeSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vm.Stop(context.Background()) })
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := vm.Status(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Status whose caller went: %v, want context.Canceled", err)
	}
	select {
	case err := <-bd.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the node's call ended with %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the node's call runs on after its caller went")
	}
}

// A node with no driver to serve answers every call 503 with why.
func TestFakeRemoteUnavailable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(remote.Unavailable("qemu-system-x86_64 not found"))
	t.Cleanup(srv.Close)
	d := remote.New(func(ctx context.Context) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "tcp", srv.Listener.Addr().String())
	})
	_, err := d.Boot(context.Background(), fakeSpec(t))
	var re *remote.Error
	if !errors.As(err, &re) || re.Code != api.CodeUnavailable || !strings.Contains(re.Message, "qemu-system-x86_64 not found") {
		t.Fatalf("Boot on a node without a driver: %v, want unavailable with the reason", err)
	}
	if got := d.Accel(); got != "" {
		t.Errorf("Accel of a node without a driver: %q, want \"\"", got)
	}
}

// A node that restarts forgets its refs, not its VMs: a VM the server
// holds is adopted again by its handle at its next call, its agent answers
// as before, its Done stays open while it runs and closes when it ends.
func TestFakeRemoteNodeRestartAdoptsAgain(t *testing.T) {
	t.Parallel()
	fd := fake.New()
	var cur atomic.Value // the node's handler now
	cur.Store(remote.Handler(fd, remote.HandlerConfig{}))
	var polls atomic.Int64 // Done's long polls in flight
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/done") {
			polls.Add(1)
			defer polls.Add(-1)
		}
		cur.Load().(http.Handler).ServeHTTP(w, r)
	}))
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	d := remote.New(func(ctx context.Context) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "tcp", srv.Listener.Addr().String())
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sp := fakeSpec(t)
	vm, err := d.Boot(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vm.Stop(context.Background()) })
	c, _, err := agentproto.Connect(ctx, vm.DialAgent)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, "/tmp/kept", 0o644, strings.NewReader("kept")); err != nil {
		t.Fatal(err)
	}

	// The node restarts: a handler with no refs; its connections, the
	// agent's included, dropped.
	cur.Store(remote.Handler(fd, remote.HandlerConfig{}))
	srv.CloseClientConnections()
	fd.Disconnect()
	c.Close()

	if st, err := vm.Status(ctx); err != nil || st != vmm.StatusRunning {
		t.Fatalf("status after the node's restart: %s, %v; want running (adopted again)", st, err)
	}
	c2, _, err := agentproto.Connect(ctx, vm.DialAgent)
	if err != nil {
		t.Fatalf("agent after the node's restart: %v", err)
	}
	defer c2.Close()
	rc, err := c2.Read(ctx, "/tmp/kept")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "kept" {
		t.Fatalf("the guest after the node's restart: %q", b)
	}
	for polls.Load() == 0 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond) // Done's poll comes back after the drop
	}
	select {
	case <-vm.Done():
		t.Fatal("Done closed for a VM that runs on after its node restarted")
	default:
	}
	findFake(t, fd, vm.PID()).Kill()
	select {
	case <-vm.Done():
	case <-ctx.Done():
		t.Fatal("Done not closed when the VM ended after the node's restart")
	}
}
