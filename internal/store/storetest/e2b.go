package storetest

import (
	"errors"
	"reflect"
	"testing"

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
