package broker_test

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/audit/audittest"
	"github.com/cove-dev/cove/internal/egress"
	"github.com/cove-dev/cove/internal/store"
)

// egressEntries returns the log's egress entries to host.
func egressEntries(t *testing.T, l *audit.Log, host string) []audit.Entry {
	t.Helper()
	recs, err := l.Entries(context.Background(), 0, 1<<20)
	if err != nil {
		t.Error(err)
		return nil
	}
	var out []audit.Entry
	for _, r := range recs {
		if r.Entry.Action == "egress" && r.Entry.Target.Host == host {
			out = append(out, r.Entry)
		}
	}
	return out
}

// TestEgressIsSequencedBeforeItGoes: an allowed request is in the audit
// log, with the name of the credential it carries (never its value),
// before the upstream sees it; a deny is logged; while the log cannot be
// written, an allow becomes a deny and nothing reaches the upstream; once
// it can again, requests go.
func TestEgressIsSequencedBeforeItGoes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	l, err := audit.Open(t.Context(), dir, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	w := newAuditedWorld(t, nil, l)
	w.session(t, store.Session{ID: "s-1", Owner: "u_alice", Allow: []string{"own.example.com:" + w.port}})
	const value = "Bearer alice-4f7c1e"
	w.creds["u_alice"] = []egress.Credential{{Name: "user:u_alice/gh", Hosts: []string{"own.example.com"}, Header: "Authorization", Value: value}}

	var reached atomic.Int64
	var loggedFirst atomic.Bool
	saw := func(r *http.Request) {
		reached.Add(1)
		for _, e := range egressEntries(t, l, "own.example.com") {
			if e.Decision == audit.Allow && e.Target.Method == http.MethodGet && e.Target.Secret == "user:u_alice/gh" && e.Actor.Session == "s-1" {
				loggedFirst.Store(true)
			}
		}
	}
	w.upstreamSaw.Store(&saw)
	if code, body := w.get(t, "s-1", "own.example.com"); code != 200 || body != `auth="`+value+`"` {
		t.Fatalf("allowed request: %d %q", code, body)
	}
	if reached.Load() != 1 || !loggedFirst.Load() {
		t.Fatalf("upstream reached %d times; request in the log with its credential's name before it: %v", reached.Load(), loggedFirst.Load())
	}
	if code, _ := w.get(t, "s-1", "other.example.com"); code == 200 {
		t.Fatal("a host no rule allows was reached")
	}
	if d := egressEntries(t, l, "other.example.com"); len(d) != 1 || d[0].Decision != audit.Deny {
		t.Errorf("the deny's entries: %+v, want one deny", d)
	}

	repair := audittest.Break(t, l, dir)
	if code, body := w.get(t, "s-1", "own.example.com"); code == 200 || reached.Load() != 1 {
		t.Fatalf("with the log unavailable: %d %q, upstream reached %d times; want refused, 1", code, body, reached.Load())
	}
	repair()
	if code, _ := w.get(t, "s-1", "own.example.com"); code != 200 || reached.Load() != 2 {
		t.Fatalf("log back: %d, upstream reached %d times; want 200, 2", code, reached.Load())
	}
	if holds(t, dir, value) {
		t.Error("the credential's value is in the log")
	}
	if !holds(t, dir, "user:u_alice/gh") {
		t.Error("positive control: the credential's name is not found in the log")
	}
}

// holds reports whether a file under dir contains s.
func holds(t *testing.T, dir, s string) bool {
	t.Helper()
	found := false
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		found = found || err == nil && bytes.Contains(b, []byte(s))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
