package apiserver

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// TestFakeRouteNoSilentRollback: a session on node A is parked and
// stored (v1), woken, changed (v2) and parked again while A's object
// store is cut off, so that v2's upload fails; then A dies (its server
// and manager gone, the node marked dead). A wake through B, through C
// (a server with no node) or an exec through B does not bring v1 back
// silently: each is a 503 saying that the latest snapshot is on dead node
// A only, and when the last stored one was taken; the session stays
// parked. A wake --from-last-snapshot through B brings v1 back on B.
func TestFakeRouteNoSilentRollback(t *testing.T) {
	r := newRouteRig(t)
	link := filepath.Join(t.TempDir(), "objects")
	if err := os.Symlink(r.objectsDir, link); err != nil {
		t.Fatal(err)
	}
	objs, err := objstore.OpenDir(link)
	if err != nil {
		t.Fatal(err)
	}
	casA, err := cas.New(cas.Config{Objects: objs})
	if err != nil {
		t.Fatal(err)
	}
	r.objectsOf = map[string]*cas.Store{"host-a": casA}
	a, b, c := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false)
	ctx := context.Background()
	r.cordon(b)
	s := r.createOn(c, a)
	if _, err := b.client.UncordonNode(ctx, b.node); err != nil {
		t.Fatal(err)
	}
	write := func(v string) {
		t.Helper()
		if err := c.client.WriteFile(ctx, s.ID, "/root/v", 0o644, strings.NewReader(v)); err != nil {
			t.Fatal(err)
		}
	}
	write("v1")
	if _, err := b.client.ParkSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	waitStored(t, c, s.ID)
	if _, err := a.client.WakeSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	write("v2")
	// A's object store cut off: its handle's directory is a file now.
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(link, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.ParkSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(a.logs.String(), "snapshot upload failed") {
		if time.Now().After(deadline) {
			t.Fatal("A's upload of v2 did not fail")
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.kill()
	n, err := b.st.GetNode(ctx, a.node)
	if err != nil {
		t.Fatal(err)
	}
	n.Dead = true
	if err := b.st.UpdateNode(ctx, &n); err != nil {
		t.Fatal(err)
	}

	refused := func(what string, err error) {
		t.Helper()
		if !api.IsCode(err, api.CodeUnavailable) || !strings.Contains(err.Error(), "latest snapshot") ||
			!strings.Contains(err.Error(), "host-a") || !strings.Contains(err.Error(), "--from-last-snapshot") {
			t.Fatalf("%s: %v; want a 503 saying the latest snapshot is on dead A only, and how to go back to the last stored one", what, err)
		}
		got, err := c.client.GetSession(ctx, s.ID)
		if err != nil || got.State != api.StateParked || got.Node != a.node {
			t.Fatalf("after %s: %+v, %v; want it parked on A still", what, got, err)
		}
	}
	_, err = b.client.WakeSession(ctx, s.ID)
	t.Logf("wake through B: %v", err)
	refused("wake through B", err)
	_, err = c.client.WakeSession(ctx, s.ID)
	refused("wake through C", err)
	_, err = b.client.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"echo", "x"}})
	refused("exec through B", err)

	got, err := b.client.WakeSessionFromLastSnapshot(ctx, s.ID)
	if err != nil || got.State != api.StateRunning || got.Node != b.node {
		t.Fatalf("wake --from-last-snapshot through B: %+v, %v; want it running on B", got, err)
	}
	rc, err := c.client.ReadFile(ctx, s.ID, "/root/v")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	if string(data) != "v1" {
		t.Fatalf("/root/v after going back to the last stored snapshot: %q, want v1", data)
	}
	if err := c.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}

// TestFakeRouteServerKilledMidCreate: a create through C (a server with
// no node), forwarded to A, whose guest is slow to answer; C dies
// mid-call (its connections cut, its server and manager gone). The
// client's call fails; A gives the create up (nobody can learn its id)
// and keeps nothing of it: no record, no VM, no files. The client's retry
// through A makes the one session.
func TestFakeRouteServerKilledMidCreate(t *testing.T) {
	r := newRouteRig(t)
	a, c := r.server("host-a", true), r.server("api-c", false)
	ctx := context.Background()
	r.killMidCreate(c, func() error {
		_, err := c.client.CreateSession(ctx, api.CreateSessionRequest{})
		return err
	})
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(a.logs.String(), "create given up") {
		if time.Now().After(deadline) {
			t.Fatalf("A did not give the create up once its caller died:\n%s", a.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	s, err := a.client.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil || s.Node != a.node {
		t.Fatalf("the retry through A: %+v, %v", s, err)
	}
	a.echo(t, s.ID, "retried")
	all, err := a.client.ListSessions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].ID != s.ID {
		t.Errorf("sessions after the retry: %+v; want the retry's alone", all)
	}
	if vms := r.driver.Running(); len(vms) != 1 || vms[0] != s.ID {
		t.Errorf("VMs after the retry: %v; want the retry's alone", vms)
	}
	if dirs := sessionDirs(t, a.dir); len(dirs) != 1 || dirs[0] != s.ID {
		t.Errorf("A's session dirs after the retry: %v; want the retry's alone", dirs)
	}
	if err := a.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}

// TestFakeRouteCreatePlacedAgain: a create through C (a server with no
// node) is placed on A (both nodes empty: the lowest name), whose server
// refuses it for want of room (its host's own accounting is smaller
// than its node record says): C places it again, passing A over, on B,
// where it is made. A keeps nothing of it. With B full too, the create
// is a 503 that says why for each node.
func TestFakeRouteCreatePlacedAgain(t *testing.T) {
	r := newRouteRig(t)
	r.admission = map[string]session.Admission{"host-a": {HostMemoryMiB: 256, HostCPUs: 8, MemoryOvercommit: 0.5}}
	a, b, c := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false)
	ctx := context.Background()
	s, err := c.client.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil || s.Node != b.node {
		t.Fatalf("create through C: %+v, %v; want it made on B after A refused it", s, err)
	}
	if !strings.Contains(a.logs.String(), "create refused") || !strings.Contains(c.logs.String(), "placed again") {
		t.Errorf("A did not refuse the create, or C did not place it again")
	}
	all, err := c.client.ListSessions(ctx)
	if err != nil || len(all) != 1 {
		t.Fatalf("sessions: %+v, %v; want the one on B", all, err)
	}
	b.echo(t, s.ID, "placed-again")
	// B full too (its node record says so): no node fits.
	if err := b.st.HeartbeatNode(ctx, b.node, time.Now().UTC(), store.NodeCapacity{VCPUs: 1, MemoryMiB: 64, DiskBytes: 1 << 30, Accel: "tcg"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.client.CreateSession(ctx, api.CreateSessionRequest{})
	if !api.IsCode(err, api.CodeUnavailable) || !strings.Contains(err.Error(), "host-a: it refused this create") || !strings.Contains(err.Error(), "host-b") {
		t.Fatalf("create with both full: %v; want a 503 naming why for each node", err)
	}
	if err := c.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}

// TestFakeRouteServerKilledMidExec: an interactive exec (cat, over the
// WebSocket) through C (a server with no node) of a session on A; C dies
// while the command runs. The client's connection ends with an error,
// and its retry through A works: the session runs on A, and an exec
// through A answers.
func TestFakeRouteServerKilledMidExec(t *testing.T) {
	r := newRouteRig(t)
	a, c := r.server("host-a", true), r.server("api-c", false)
	ctx := context.Background()
	s := r.createOn(c, a)
	conn, err := c.client.ExecInteractive(ctx, s.ID, api.ExecRequest{Argv: []string{"cat"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Send(api.ExecEvent{Type: api.EventStdin, Data: []byte("through c\n")}); err != nil {
		t.Fatal(err)
	}
	if ev, err := conn.Recv(); err != nil || string(ev.Data) != "through c\n" {
		t.Fatalf("cat through C: %+v, %v", ev, err)
	}
	c.kill() // mid-call
	if ev, err := conn.Recv(); err == nil {
		t.Fatalf("the exec through C went on after C died: %+v", ev)
	}
	got, err := a.client.GetSession(ctx, s.ID)
	if err != nil || got.State != api.StateRunning || got.Node != a.node {
		t.Fatalf("after C died: %+v, %v; want it running on A", got, err)
	}
	a.echo(t, s.ID, "retried")
	if err := a.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}

// killMidCreate runs create (a call through via) with the next guest
// booted but not answering, kills via once that VM runs (mid-call), and
// checks that the call failed.
func (r *routeRig) killMidCreate(via *routeServer, create func() error) {
	t := r.t
	t.Helper()
	r.driver.HangNext()
	failed := make(chan error, 1)
	go func() { failed <- create() }()
	deadline := time.Now().Add(time.Minute)
	for len(r.driver.Running()) == 0 { // its guest booted, not answering
		if time.Now().After(deadline) {
			t.Fatal("the create did not boot a VM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	via.kill() // mid-call
	if err := <-failed; err == nil {
		t.Fatalf("the create through %s answered although it died mid-call", via.name)
	}
}
