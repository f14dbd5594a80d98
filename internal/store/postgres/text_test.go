package postgres_test

import (
	"errors"
	"testing"

	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/store"
)

// PostgreSQL's text holds neither NUL nor bytes that are not UTF-8. An
// Error (which may quote a guest's console) is written anyway, those
// bytes as U+FFFD, as the API's JSON shows them; other text with them
// fails the write, which changes nothing.
func TestTextPostgresCannotHold(t *testing.T) {
	st := mustOpen(t, pgtest.NewDatabase(t))
	defer st.Close()
	ctx := t.Context()
	odd := "boot: \x00\xffpanic ☃"
	const shown = "boot: \uFFFD\uFFFDpanic ☃"

	if err := st.CreateSession(ctx, &store.Session{ID: "s", State: "failed", Error: odd}); err != nil {
		t.Fatalf("CreateSession with an odd Error: %v", err)
	}
	if got, err := st.GetSession(ctx, "s"); err != nil || got.Error != shown {
		t.Errorf("Error read back = %q, %v; want %q", got.Error, err, shown)
	}
	if err := st.CreateTemplate(ctx, &store.Template{Name: "t", Error: odd}); err != nil {
		t.Fatalf("CreateTemplate with an odd Error: %v", err)
	}
	if err := st.PutTemplateVersion(ctx, store.TemplateVersion{Template: "t", Version: 1, Error: odd}); err != nil {
		t.Fatalf("PutTemplateVersion with an odd Error: %v", err)
	}
	vs, err := st.ListTemplateVersions(ctx, "t")
	if err != nil || len(vs) != 1 || vs[0].Error != shown {
		t.Errorf("ListTemplateVersions = %+v, %v; want one with Error %q", vs, err, shown)
	}

	err = st.CreateSession(ctx, &store.Session{ID: "u", State: odd})
	if err == nil {
		t.Fatal("CreateSession with a NUL in its State succeeded")
	}
	t.Log(err)
	if _, err := st.GetSession(ctx, "u"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused session: %v, want ErrNotFound", err)
	}
}
