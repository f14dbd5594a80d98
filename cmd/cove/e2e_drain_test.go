package main_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/s3test"
)

// freshDB starts a PostgreSQL server of the test's own (see
// pgtest.Fresh), makes a database named for db in it, and returns the
// server and the database's URL.
func freshDB(t *testing.T, db string) (*pgtest.Server, string) {
	t.Helper()
	pg := pgtest.Fresh(t)
	name, err := pg.CreateDatabase(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	return pg, pg.URL(name)
}

// fleetEnv makes the PostgreSQL database db for servers that share a
// store and returns their environment: COVE_DB, no spares or clone files
// made ahead, and, with s3, its credentials (COVE_OBJECTS is the test's).
func fleetEnv(t *testing.T, db string, s3 *s3test.Server) []string {
	t.Helper()
	_, dbURL := freshDB(t, db)
	env := []string{"COVE_DB=" + dbURL, "COVE_SPARES=0", "COVE_CLONE_FILES=0"}
	if s3 != nil {
		for k, v := range s3.Env() {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// TestEndToEndDrain: two real 'cove server' processes with their embedded
// nodes (real QEMU) over one PostgreSQL database and one S3 store. A
// session made on A (B cordoned) is drained through B: the drain is
// carried out by A's server, which parks the session and stores it
// before it answers. The session's next call, an exec through A, wakes it
// on B from S3, with its memory and processes intact; A holds none, and
// A's heartbeat removes its files from A's home.
func TestEndToEndDrain(t *testing.T) {
	t.Parallel()
	s3 := s3test.Shared(t)
	env := append(fleetEnv(t, "t_cove_drain", s3), "COVE_OBJECTS="+s3.URL("drain-"+randomToken()), "COVE_NODE_HEARTBEAT=1s")
	a := newE2E(t)
	b := a.sibling()
	a.startServer(append(env, "COVE_NODE_NAME=drain-a")...)
	b.startServer(append(env, "COVE_NODE_NAME=drain-b")...)
	ctx := context.Background()
	token := b.userToken()
	ca, cb := api.NewClient("http://"+a.addr, token), api.NewClient("http://"+b.addr, token)
	if _, err := cb.CordonNode(ctx, "drain-b"); err != nil {
		t.Fatal(err)
	}
	s, err := cb.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil {
		t.Fatalf("create through B: %v%s", err, a.serverLog())
	}
	a.seen[s.ID], b.seen[s.ID] = true, true
	nodeA, err := ca.GetNode(ctx, "drain-a")
	if err != nil || s.Node != nodeA.ID {
		t.Fatalf("create through B with B cordoned: %+v (%v); want it on drain-a", s, err)
	}
	m := newMachine(a, s.ID)
	if _, err := cb.UncordonNode(ctx, "drain-b"); err != nil {
		t.Fatal(err)
	}

	res, err := cb.DrainNode(ctx, "drain-a")
	if err != nil || res.Parked != 1 || len(res.Errors) != 0 {
		t.Fatalf("drain A through B: %+v, %v%s", res, err, a.serverLog())
	}
	got, err := cb.GetSession(ctx, s.ID)
	if err != nil || got.State != api.StateParked || !got.Stored || got.Node != nodeA.ID {
		t.Fatalf("after the drain: %+v, %v; want parked on A and stored", got, err)
	}
	m.wantIntact(a, "woken by an exec through A, after A's drain")
	nodeB, err := ca.GetNode(ctx, "drain-b")
	if err != nil {
		t.Fatal(err)
	}
	if got, err = ca.GetSession(ctx, s.ID); err != nil || got.State != api.StateRunning || got.Node != nodeB.ID {
		t.Fatalf("after the exec through A: %+v, %v; want it running on drain-b%s%s", got, err, a.serverLog(), b.serverLog())
	}
	if !strings.Contains(b.srv.log.String(), "snapshot restored from the object store") {
		t.Errorf("B did not restore the snapshot from the object store:%s", b.serverLog())
	}
	if n, err := cb.GetNode(ctx, "drain-a"); err != nil || n.Sessions != 0 || n.State != "draining" {
		t.Fatalf("node A after the wake: %+v, %v; want draining, with no session", n, err)
	}
	dir := filepath.Join(a.home, "sessions", s.ID)
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A's home still holds %s after the session moved to B%s", dir, a.serverLog())
		}
		time.Sleep(200 * time.Millisecond)
	}

	if err := ca.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*e2e{b, a} {
		if err := e.stopServer(syscall.SIGTERM); err != nil {
			t.Errorf("server stop: %v", err)
		}
	}
}
