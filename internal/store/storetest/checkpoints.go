package storetest

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// A session's checkpoints: created under unique names, read back whole,
// listed in creation order, removed one by one and with their session.
func (s *suite) checkpoints(t *testing.T) {
	st := s.fresh(t)
	ctx := t.Context()
	mustCreate(t, st, fullSession("a"))
	mustCreate(t, st, fullSession("b"))
	at := time.Date(2026, 12, 5, 10, 0, 0, 123456789, time.UTC)
	c1 := store.Checkpoint{SessionID: "a", Name: "ckpt-1", CreatedAt: at, Bytes: 1 << 20, PauseMillis: 42, Manifest: []byte(`{"v":1}`)}
	c2 := store.Checkpoint{SessionID: "a", Name: "before-migration", CreatedAt: at.Add(time.Second), Bytes: 7}
	other := store.Checkpoint{SessionID: "b", Name: "ckpt-1", CreatedAt: at}
	for _, c := range []store.Checkpoint{c2, c1, other} {
		if err := st.CreateCheckpoint(ctx, c); err != nil {
			t.Fatalf("CreateCheckpoint(%s/%s): %v", c.SessionID, c.Name, err)
		}
	}
	got, err := st.GetCheckpoint(ctx, "a", "ckpt-1")
	if err != nil || !reflect.DeepEqual(got, c1) {
		t.Errorf("GetCheckpoint = %+v, %v; want %+v", got, err, c1)
	}
	list, err := st.ListCheckpoints(ctx, "a")
	if err != nil || !reflect.DeepEqual(list, []store.Checkpoint{c1, c2}) {
		t.Errorf("ListCheckpoints(a) = %+v, %v; want ckpt-1, before-migration", list, err)
	}

	// Names are unique per session; the first stays as it was.
	dup := c1
	dup.Bytes = 99
	if err := st.CreateCheckpoint(ctx, dup); !errors.Is(err, store.ErrExists) {
		t.Errorf("CreateCheckpoint(duplicate) = %v, want ErrExists", err)
	}
	if got, _ := st.GetCheckpoint(ctx, "a", "ckpt-1"); got.Bytes != c1.Bytes {
		t.Errorf("a duplicate create changed the checkpoint: %+v", got)
	}
	// No session, no checkpoint.
	if err := st.CreateCheckpoint(ctx, store.Checkpoint{SessionID: "none", Name: "x"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CreateCheckpoint(no session) = %v, want ErrNotFound", err)
	}
	if list, err := st.ListCheckpoints(ctx, "none"); err != nil || list == nil || len(list) != 0 {
		t.Errorf("ListCheckpoints(no session) = %#v, %v; want empty", list, err)
	}
	if _, err := st.GetCheckpoint(ctx, "a", "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetCheckpoint(missing) = %v, want ErrNotFound", err)
	}

	// An update replaces the bytes and manifest only.
	up := c1
	up.Bytes, up.Manifest, up.PauseMillis = 4096, []byte(`{"v":1,"mem":"qcow2"}`), 1
	if err := st.UpdateCheckpoint(ctx, up); err != nil {
		t.Fatalf("UpdateCheckpoint: %v", err)
	}
	want := c1
	want.Bytes, want.Manifest = up.Bytes, up.Manifest
	if got, err := st.GetCheckpoint(ctx, "a", "ckpt-1"); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("after UpdateCheckpoint: %+v, %v; want %+v", got, err, want)
	}
	if err := st.UpdateCheckpoint(ctx, store.Checkpoint{SessionID: "a", Name: "nope"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateCheckpoint(missing) = %v, want ErrNotFound", err)
	}

	if err := st.DeleteCheckpoint(ctx, "a", "before-migration"); err != nil {
		t.Fatalf("DeleteCheckpoint: %v", err)
	}
	if err := st.DeleteCheckpoint(ctx, "a", "before-migration"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteCheckpoint = %v, want ErrNotFound", err)
	}
	// Removing a session removes its checkpoints, and only its.
	if err := st.DeleteSession(ctx, "a"); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	mustCreate(t, st, fullSession("a"))
	if list, err := st.ListCheckpoints(ctx, "a"); err != nil || len(list) != 0 {
		t.Errorf("ListCheckpoints after the session's removal = %+v, %v; want none", list, err)
	}
	if list, err := st.ListCheckpoints(ctx, "b"); err != nil || !reflect.DeepEqual(list, []store.Checkpoint{other}) {
		t.Errorf("ListCheckpoints(b) = %+v, %v; want its one", list, err)
	}
}
