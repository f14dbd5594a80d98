// Package audittest breaks an audit log's storage for tests of what fails
// closed when the log cannot be written.
package audittest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/audit"
)

// Break makes the tree of the log l, kept in dir, unwritable (its entry
// bundles' directory replaced by a file: the tests run as root, so modes
// do not stop a write) and waits until l refuses appends. An append under
// way as the tree broke may still succeed: it is journaled, durable, and
// reaches the tree once it can be written.
//
// The returned func puts the directory back and waits until l takes
// entries again (it retries its tree every 2 s at most).
func Break(t testing.TB, l *audit.Log, dir string) (repair func()) {
	t.Helper()
	ctx := context.Background()
	if _, err := l.Size(ctx); err != nil { // all so far in the tree
		t.Fatal(err)
	}
	entries := filepath.Join(dir, "tile", "entries")
	if err := os.MkdirAll(entries, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(entries, entries+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(entries, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	probe(t, l, true)
	return func() {
		t.Helper()
		if err := os.Remove(entries); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(entries+".away", entries); err != nil {
			t.Fatal(err)
		}
		probe(t, l, false)
	}
}

// probe appends "test.probe" entries until l refuses one (refused) or
// takes one, for 30 s at most.
func probe(t testing.TB, l *audit.Log, refused bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := l.Append(context.Background(), audit.Entry{Actor: audit.Actor{Kind: audit.ActorCove}, Action: "test.probe"})
		switch {
		case refused && errors.Is(err, audit.ErrUnavailable), !refused && err == nil:
			return
		case err != nil && !errors.Is(err, audit.ErrUnavailable):
			t.Fatalf("audit probe: %v", err)
		case time.Now().After(deadline):
			t.Fatalf("the audit log did not come to refuse (%v) entries in 30 s: %v", refused, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
