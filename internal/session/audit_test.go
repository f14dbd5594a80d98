package session_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/audit/audittest"
	"github.com/cove-dev/cove/internal/issuer"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/sessiontoken"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
)

// auditRecords reads the whole log back.
func auditRecords(t *testing.T, l *audit.Log) []audit.Record {
	t.Helper()
	recs, err := l.Entries(context.Background(), 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestFakeAuditEvents: what the server does on its own reaches the audit
// log and the metrics through the one hook: an idle park and a wake on a
// webhook event are each an announcement by cove and an outcome that
// refers to it; the API's own park (the gate logs those) is not logged
// here, and the metrics count every park and wake.
func TestFakeAuditEvents(t *testing.T) {
	t.Parallel()
	l, err := audit.Open(t.Context(), filepath.Join(t.TempDir(), "audit"), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	var parks, wakes atomic.Int64
	r := newFakeRigWith(t, func(c *session.Config) {
		c.DefaultIdleTimeout = time.Second
		c.OnEvent = session.Hooks(session.AuditEvents(l), session.ObserveDurations(
			func(time.Duration) { parks.Add(1) }, func(time.Duration) { wakes.Add(1) }))
	})
	ctx := context.Background()
	// Parked and woken by the API: counted, not logged here.
	api1 := r.create(api.CreateSessionRequest{IdleTimeout: "0s"})
	if _, err := r.mgr.Park(ctx, api1.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.mgr.Wake(ctx, api1.ID); err != nil {
		t.Fatal(err)
	}

	id := r.create(api.CreateSessionRequest{}).ID
	r.eventually("the idle session is parked", func() bool { return r.get(id).State == api.StateParked })
	if _, err := r.mgr.ParkUntil(ctx, id, []string{"deploys:deploy-done env=staging"}, 0); err != nil {
		t.Fatal(err)
	}
	ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"deploy-done","env":"staging"}`))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = "d1", time.Now()
	if _, err := r.mgr.Accept(ctx, ev); err != nil {
		t.Fatal(err)
	}
	r.eventually("the event is delivered", func() bool {
		ds, err := r.store.ListDeliveries(ctx, store.DeliveryDelivered)
		return err == nil && len(ds) == 1
	})

	recs := auditRecords(t, l)
	byIndex := map[uint64]audit.Entry{}
	for _, rec := range recs {
		byIndex[rec.Index] = rec.Entry
		if rec.Entry.Target.Session == api1.ID {
			t.Errorf("the API's park or wake logged by the session layer: %+v", rec.Entry)
		}
	}
	for _, action := range []string{"session.park", "session.wake"} {
		var ann, out []audit.Record
		for _, rec := range recs {
			if rec.Entry.Action != action || rec.Entry.Target.Session != id {
				continue
			}
			if rec.Entry.Decision == audit.Allow {
				ann = append(ann, rec)
			} else {
				out = append(out, rec)
			}
		}
		if len(ann) != 1 || len(out) != 1 {
			t.Fatalf("%s of %s: %d announcements and %d outcomes, want 1 and 1: %+v", action, id, len(ann), len(out), recs)
		}
		if ann[0].Entry.Actor.Kind != audit.ActorCove {
			t.Errorf("%s: actor %+v, want cove", action, ann[0].Entry.Actor)
		}
		if ref := out[0].Entry.Ref; ref == nil || *ref != ann[0].Index || out[0].Entry.Outcome == nil || out[0].Entry.Outcome.Error != "" {
			t.Errorf("%s: outcome %+v, want a success referring to %d", action, out[0].Entry, ann[0].Index)
		}
		if action == "session.wake" && ann[0].Entry.Target.Trigger == "" {
			t.Errorf("the event's wake does not name its event: %+v", ann[0].Entry.Target)
		}
	}
	if parks.Load() != 2 || wakes.Load() != 2 {
		t.Errorf("metrics counted %d parks and %d wakes, want 2 and 2 (the API's and the server's own)", parks.Load(), wakes.Load())
	}
}

// lockedLog is a log output tests read while the manager writes it.
type lockedLog struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestFakeAuditRefusesIdlePark: while the audit log cannot be written, an
// idle park is refused (the session runs on, and the idle loop says why);
// once it can, the session is parked, without a restart.
func TestFakeAuditRefusesIdlePark(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "audit")
	l, err := audit.Open(t.Context(), dir, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	if _, err := l.Append(t.Context(), audit.Entry{Actor: audit.Actor{Kind: audit.ActorCove}, Action: "test.start"}); err != nil {
		t.Fatal(err)
	}
	repair := audittest.Break(t, l, dir)
	logs := &lockedLog{}
	r := newFakeRigWith(t, func(c *session.Config) {
		c.DefaultIdleTimeout = time.Second
		c.OnEvent = session.AuditEvents(l)
		c.Log = slog.New(slog.NewTextHandler(logs, nil))
	})
	id := r.create(api.CreateSessionRequest{}).ID
	r.eventually("the idle park is refused", func() bool {
		return strings.Contains(logs.String(), "idle park failed") && strings.Contains(logs.String(), "audit log unavailable")
	})
	r.wantState(id, api.StateRunning, "")

	repair()
	r.eventually("the idle session is parked once the log is back", func() bool { return r.get(id).State == api.StateParked })
}

// TestFakeAuditGuestToken: a guest's token is logged, by its agent, before
// it is minted, with its audience; while the log cannot be written no
// token is minted, and once it can, one is.
func TestFakeAuditGuestToken(t *testing.T) {
	t.Parallel()
	const url = "https://cove.example.com"
	is, err := issuer.New(t.TempDir(), url)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "audit")
	l, err := audit.Open(t.Context(), dir, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	r := newFakeRigWith(t, func(c *session.Config) {
		c.Tokens = sessiontoken.Minter{Issuer: is}
		c.OnEvent = session.AuditEvents(l)
	})
	id := r.create(api.CreateSessionRequest{}).ID
	tok, err := r.mgr.GuestToken(id, url)
	if err != nil || tok == "" {
		t.Fatalf("token: %q, %v", tok, err)
	}
	var ann []audit.Entry
	for _, rec := range auditRecords(t, l) {
		if rec.Entry.Action == "token.mint" && rec.Entry.Decision == audit.Allow {
			ann = append(ann, rec.Entry)
		}
	}
	if len(ann) != 1 || ann[0].Actor.Kind != audit.ActorAgent || ann[0].Actor.Session != id || ann[0].Target.Audience != url {
		t.Fatalf("token.mint announcements %+v, want one by %s's agent for %s", ann, id, url)
	}

	repair := audittest.Break(t, l, dir)
	if tok, err := r.mgr.GuestToken(id, url); err == nil || tok != "" || !errors.Is(err, session.ErrRefused) {
		t.Fatalf("token with the log unavailable: %q, %v; want none, refused", tok, err)
	}
	repair()
	if tok, err := r.mgr.GuestToken(id, url); err != nil || tok == "" {
		t.Fatalf("token once the log is back: %q, %v", tok, err)
	}
}
