package storetest

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// The E2B records of sessions: put (insert, then replace), read back whole,
// listed by session id, refused without their session, removed alone and
// with their session.
func (s *suite) e2bSandboxes(t *testing.T) {
	st := s.fresh(t)
	ctx := t.Context()
	mustCreate(t, st, fullSession("a"))
	mustCreate(t, st, fullSession("b"))
	xa := store.E2BSandbox{SessionID: "a", Record: []byte(`{"templateID":"base"}`)}
	xb := store.E2BSandbox{SessionID: "b", Record: []byte(`{"templateID":"web","metadata":{"k":"v"}}`)}
	for _, x := range []store.E2BSandbox{xb, xa} {
		if err := st.PutE2BSandbox(ctx, x); err != nil {
			t.Fatalf("PutE2BSandbox(%s): %v", x.SessionID, err)
		}
	}
	if got, err := st.GetE2BSandbox(ctx, "a"); err != nil || !reflect.DeepEqual(got, xa) {
		t.Errorf("GetE2BSandbox(a) = %+v, %v; want %+v", got, err, xa)
	}
	xa.Record = []byte(`{"templateID":"base","endAt":"2026-12-05T18:00:00Z"}`)
	xa.DueAt = at(30).UTC()
	if err := st.PutE2BSandbox(ctx, xa); err != nil {
		t.Fatalf("PutE2BSandbox(replace): %v", err)
	}
	if list, err := st.ListE2BSandboxes(ctx); err != nil || !reflect.DeepEqual(list, []store.E2BSandbox{xa, xb}) {
		t.Errorf("ListE2BSandboxes = %+v, %v; want a (replaced), b", list, err)
	}
	if err := st.PutE2BSandbox(ctx, store.E2BSandbox{SessionID: "none", Record: []byte(`{}`)}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PutE2BSandbox(no session) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetE2BSandbox(ctx, "none"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetE2BSandbox(missing) = %v, want ErrNotFound", err)
	}
	if err := st.DeleteE2BSandbox(ctx, "b"); err != nil {
		t.Fatalf("DeleteE2BSandbox: %v", err)
	}
	if err := st.DeleteE2BSandbox(ctx, "b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteE2BSandbox(again) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetSession(ctx, "b"); err != nil {
		t.Errorf("DeleteE2BSandbox removed its session: %v", err)
	}
	if err := st.DeleteSession(ctx, "a"); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	if list, err := st.ListE2BSandboxes(ctx); err != nil || len(list) != 0 {
		t.Errorf("after DeleteSession(a): ListE2BSandboxes = %+v, %v; want none", list, err)
	}
}

// The end-time sweep's view: records due by a time, in order, at most a
// limit; a due time moved only if it is still the one read.
func (s *suite) e2bSandboxesDue(t *testing.T) {
	st := s.fresh(t)
	ctx := t.Context()
	for i, id := range []string{"a", "b", "c", "d"} {
		mustCreate(t, st, fullSession(id))
		x := store.E2BSandbox{SessionID: id, Record: []byte(`{}`)}
		if id != "d" { // d is never due
			x.DueAt = at(10 - i) // c, b, a
		}
		if err := st.PutE2BSandbox(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(xs []store.E2BSandbox) (out []string) {
		for _, x := range xs {
			out = append(out, x.SessionID)
		}
		return out
	}
	due, err := st.DueE2BSandboxes(ctx, at(9), 10)
	if err != nil || !reflect.DeepEqual(ids(due), []string{"c", "b"}) {
		t.Fatalf("DueE2BSandboxes(at 9) = %v, %v; want c, b", ids(due), err)
	}
	if !due[0].DueAt.Equal(at(8)) {
		t.Errorf("c's DueAt = %v, want %v", due[0].DueAt, at(8))
	}
	if due, err := st.DueE2BSandboxes(ctx, at(59), 2); err != nil || !reflect.DeepEqual(ids(due), []string{"c", "b"}) {
		t.Fatalf("DueE2BSandboxes(limit 2) = %v, %v; want c, b", ids(due), err)
	}
	// A stale was changes nothing; the right one moves it, or clears it.
	if ok, err := st.SetE2BSandboxDue(ctx, "c", at(7), time.Time{}); err != nil || ok {
		t.Fatalf("SetE2BSandboxDue(stale) = %v, %v; want false", ok, err)
	}
	if ok, err := st.SetE2BSandboxDue(ctx, "c", at(8), time.Time{}); err != nil || !ok {
		t.Fatalf("SetE2BSandboxDue(clear) = %v, %v; want true", ok, err)
	}
	if ok, err := st.SetE2BSandboxDue(ctx, "b", at(9), at(40)); err != nil || !ok {
		t.Fatalf("SetE2BSandboxDue(later) = %v, %v; want true", ok, err)
	}
	if ok, err := st.SetE2BSandboxDue(ctx, "d", time.Time{}, at(1)); err != nil || !ok {
		t.Fatalf("SetE2BSandboxDue(from never) = %v, %v; want true", ok, err)
	}
	if due, err := st.DueE2BSandboxes(ctx, at(30), 10); err != nil || !reflect.DeepEqual(ids(due), []string{"d", "a"}) {
		t.Fatalf("DueE2BSandboxes after the moves = %v, %v; want d, a", ids(due), err)
	}
	if got, err := st.GetE2BSandbox(ctx, "c"); err != nil || !got.DueAt.IsZero() {
		t.Errorf("c after its clear: %+v, %v", got, err)
	}
	if _, err := st.SetE2BSandboxDue(ctx, "none", time.Time{}, at(1)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetE2BSandboxDue(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.DueE2BSandboxes(ctx, time.Time{}, 10); err == nil {
		t.Error("DueE2BSandboxes(zero time) did not fail")
	}
}
