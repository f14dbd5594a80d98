package apiserver

import (
	"context"
	"fmt"
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
	"github.com/cove-dev/cove/internal/trigger"
)

// TestFakeRouteDrainMoves: node A holds five sessions, each with a file
// written into it, and is drained through B (a drain is carried out by
// A's server): each is parked and stored before the drain answers. Each
// then wakes on B on its next call, whichever server that call reaches:
// a wake and an exec through A (A's server sends them to B), a wake and
// a file read through B, an exec through C (a server with no node). Each
// runs on B with its file; A holds none, and A's heartbeat removes their
// files from its sessions dir. A cordoned node's sessions, by contrast,
// wake back on it.
func TestFakeRouteDrainMoves(t *testing.T) {
	r := newRouteRig(t)
	r.heartbeat = 20 * time.Millisecond
	a, b, c := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false)
	ctx := context.Background()
	r.cordon(b)
	var ids []string
	for i := range 5 {
		s := r.createOn(c, a)
		if err := a.client.WriteFile(ctx, s.ID, "/root/kept", 0o644, strings.NewReader(fmt.Sprintf("kept %d\n", i))); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	// Cordoned, not draining: a parked session of A wakes back on A.
	r.cordon(a)
	if _, err := b.client.UncordonNode(ctx, b.node); err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.ParkSession(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	waitStored(t, c, ids[0])
	if got, err := b.client.WakeSession(ctx, ids[0]); err != nil || got.Node != a.node {
		t.Fatalf("wake through B of a cordoned node's session: %+v, %v; want it back on A", got, err)
	}

	res, err := b.client.DrainNode(ctx, "host-a")
	if err != nil {
		t.Fatalf("drain A through B: %v", err)
	}
	if res.Parked != 5 || len(res.Errors) != 0 || res.Node.State != "draining" {
		t.Fatalf("drain A through B: %+v; want 5 parked, A draining", res)
	}
	for _, id := range ids {
		got, err := c.client.GetSession(ctx, id)
		if err != nil || got.State != api.StateParked || !got.Stored || got.Node != a.node {
			t.Fatalf("after the drain, session %s: %+v, %v; want parked on A and stored", id, got, err)
		}
	}

	if _, err := a.client.WakeSession(ctx, ids[0]); err != nil {
		t.Fatalf("wake through A: %v", err)
	}
	a.echo(t, ids[1], "through-a")
	if _, err := b.client.WakeSession(ctx, ids[2]); err != nil {
		t.Fatalf("wake through B: %v", err)
	}
	rc, err := b.client.ReadFile(ctx, ids[3], "/root/kept")
	if err != nil {
		t.Fatalf("read through B: %v", err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	if string(data) != "kept 3\n" {
		t.Fatalf("read through B: %q", data)
	}
	c.echo(t, ids[4], "through-c")

	for i, id := range ids {
		got, err := a.client.GetSession(ctx, id)
		if err != nil || got.State != api.StateRunning || got.Node != b.node {
			t.Fatalf("session %s after its call: %+v, %v; want running on B", id, got, err)
		}
		rc, err := a.client.ReadFile(ctx, id, "/root/kept")
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		if want := fmt.Sprintf("kept %d\n", i); string(data) != want {
			t.Fatalf("session %s on B: /root/kept = %q, want %q", id, data, want)
		}
	}
	if !strings.Contains(b.logs.String(), "waking a session of a draining node here") {
		t.Errorf("B's log does not say it took the draining node's sessions")
	}
	node, err := c.client.GetNode(ctx, "host-a")
	if err != nil || node.Sessions != 0 {
		t.Fatalf("node A after the wakes: %+v, %v; want no session", node, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		left := sessionDirs(t, a.dir)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A's sessions dir still holds %v after its sessions moved", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, id := range ids {
		if err := c.client.DeleteSession(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

// sessionDirs lists the session dirs in dir.
func sessionDirs(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), "s-") {
			out = append(out, e.Name())
		}
	}
	return out
}

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
	r.driver.HangNext()
	failed := make(chan error, 1)
	go func() {
		_, err := c.client.CreateSession(ctx, api.CreateSessionRequest{})
		failed <- err
	}()
	deadline := time.Now().Add(time.Minute)
	for len(r.driver.Running()) == 0 { // its guest booted, not answering
		if time.Now().After(deadline) {
			t.Fatal("the create did not boot a VM on A")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.kill() // mid-call
	if err := <-failed; err == nil {
		t.Fatal("the create through C answered although C died mid-call")
	}
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

// TestFakeRouteDrainNoObjects: without an object store a drained node's
// session cannot move (its files are on that node alone): a wake through
// the other server is carried out by the draining node's server, which
// wakes it back there and logs why.
func TestFakeRouteDrainNoObjects(t *testing.T) {
	r := newRouteRig(t)
	r.noObjects = true
	a, b := r.server("host-a", true), r.server("host-b", true)
	ctx := context.Background()
	r.cordon(b)
	s := r.createOn(b, a)
	if _, err := b.client.UncordonNode(ctx, b.node); err != nil {
		t.Fatal(err)
	}
	if res, err := b.client.DrainNode(ctx, "host-a"); err != nil || res.Parked != 1 || len(res.Errors) != 0 {
		t.Fatalf("drain A through B: %+v, %v; want 1 parked", res, err)
	}
	got, err := b.client.WakeSession(ctx, s.ID)
	if err != nil || got.Node != a.node || got.State != api.StateRunning {
		t.Fatalf("wake through B: %+v, %v; want it running on A again", got, err)
	}
	if logs := a.logs.String(); !strings.Contains(logs, "a session of this draining node wakes back on it") || !strings.Contains(logs, "no object store") {
		t.Errorf("A's log does not say why the session woke back on it")
	}
	b.echo(t, s.ID, "back-on-a")
	if err := b.client.DeleteSession(ctx, s.ID); err != nil {
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

// TestFakeRouteDrainDelivery: a session on B, parked until an event and
// stored, when B is drained; the event arrives at B's own server. A, whose
// node takes sessions, makes the delivery: the wake moves the session to
// A, from the object store, and the event is written into its guest.
func TestFakeRouteDrainDelivery(t *testing.T) {
	r := newRouteRig(t)
	a, b := r.server("host-a", true), r.server("host-b", true)
	ctx := context.Background()
	r.cordon(a)
	s := r.createOn(a, b)
	if p, err := a.client.ParkSessionUntil(ctx, s.ID, api.ParkRequest{Until: []string{"deploys:done"}}); err != nil || p.State != api.StateParked {
		t.Fatalf("park --until through A: %+v, %v", p, err)
	}
	waitStored(t, a, s.ID)
	if _, err := a.client.UncordonNode(ctx, a.node); err != nil {
		t.Fatal(err)
	}
	if res, err := a.client.DrainNode(ctx, "host-b"); err != nil || res.Parked != 0 || res.Node.State != "draining" {
		t.Fatalf("drain B through A: %+v, %v", res, err)
	}
	ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"done"}`))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = "d1", time.Now()
	if dup, err := b.mgr.Accept(ctx, ev); err != nil || dup {
		t.Fatalf("accept at B: %v, %v", dup, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ds, err := a.st.ListDeliveries(ctx, store.DeliveryDelivered)
		if err == nil && len(ds) == 1 {
			break
		}
		if time.Now().After(deadline) {
			failed, _ := a.st.ListDeliveries(ctx, store.DeliveryFailed)
			t.Fatalf("the event was not delivered: %v, failed %+v", err, failed)
		}
		time.Sleep(20 * time.Millisecond)
	}
	got, err := b.client.GetSession(ctx, s.ID)
	if err != nil || got.State != api.StateRunning || got.Node != a.node {
		t.Fatalf("after the delivery: %+v, %v; want running on A", got, err)
	}
	files, err := b.client.ListDir(ctx, s.ID, "/run/cove/events")
	if err != nil || len(files) != 1 {
		t.Fatalf("events in the guest: %+v, %v; want one", files, err)
	}
	if strings.Contains(b.logs.String(), "event delivered") || !strings.Contains(a.logs.String(), "event delivered") {
		t.Errorf("the delivery was not A's alone")
	}
	if err := a.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}
