package apiserver

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
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
	r.deliverAt(b, s.ID, a, b)
	if err := a.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}
