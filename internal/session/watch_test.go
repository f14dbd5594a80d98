package session_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
)

// nextUntil reads w's events until every one of want ("type name") has
// come, and returns all it read.
func nextUntil(t *testing.T, w session.Watcher, want ...string) []string {
	t.Helper()
	var got []string
	for {
		missing := false
		for _, k := range want {
			if !slices.Contains(got, k) {
				missing = true
			}
		}
		if !missing {
			return got
		}
		evs, err := w.Next()
		if err != nil {
			t.Fatalf("watch ended (%v) before %q; got %q", err, want, got)
		}
		for _, ev := range evs {
			got = append(got, ev.Type+" "+ev.Name)
		}
	}
}

// TestFakeWatch watches a session's directory, recursively and not: its
// writes are events, a park ends the watch cleanly (io.EOF) without
// waiting for it, and a watch after the park wakes the session.
func TestFakeWatch(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	id := r.create(api.CreateSessionRequest{}).ID
	if err := r.mgr.Mkdir(ctx, id, "/tmp/w/sub"); err != nil {
		t.Fatal(err)
	}
	flat, err := r.mgr.Watch(ctx, id, "/tmp/w", false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer flat.Close()
	deep, err := r.mgr.Watch(ctx, id, "/tmp/w", true, false)
	if err != nil {
		t.Fatal(err)
	}
	defer deep.Close()
	r.write(id, "/tmp/w/sub/b", "two\n")
	r.write(id, "/tmp/w/a", "one\n")
	got := nextUntil(t, flat, "create a", "write a")
	if slices.Contains(got, "create sub/b") {
		t.Fatalf("a watch that is not recursive saw sub/b: %q", got)
	}
	nextUntil(t, deep, "create sub/b", "write sub/b", "create a")

	r.park(id)
	for _, w := range []session.Watcher{flat, deep} {
		for {
			_, err := w.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("a watch across the park ended with %v, want io.EOF", err)
			}
		}
	}

	again, err := r.mgr.Watch(ctx, id, "/tmp/w", false, false)
	if err != nil {
		t.Fatalf("watch after the park: %v", err)
	}
	defer again.Close()
	if s, err := r.mgr.Get(ctx, id); err != nil || s.State != api.StateRunning {
		t.Fatalf("after a watch of the parked session: %+v, %v; want it running", s, err)
	}
	r.write(id, "/tmp/w/c", "three\n")
	nextUntil(t, again, "create c", "write c")
	again.Close()
	if _, err := again.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("Next after Close: %v, want io.EOF", err)
	}
}

func TestFakeWatchBadInput(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	id := r.create(api.CreateSessionRequest{}).ID
	r.write(id, "/tmp/file", "x")
	for _, c := range []struct {
		path string
		code string
	}{
		{"/tmp/nope", api.CodeNotFound},
		{"/tmp/file", api.CodeInvalid},
		{"relative", api.CodeInvalid},
	} {
		w, err := r.mgr.Watch(ctx, id, c.path, false, false)
		if err == nil {
			w.Close()
		}
		if !api.IsCode(err, c.code) {
			t.Errorf("watch %s: %v, want %s", c.path, err, c.code)
		}
	}
	if _, err := r.mgr.Watch(ctx, "s-nosuchsession", "/tmp", false, false); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("watch in a missing session: %v, want not found", err)
	}
}
