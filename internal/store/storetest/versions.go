package storetest

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// fullVersion has every field set to a value that is not the zero value.
func fullVersion(name string, version int) store.TemplateVersion {
	return store.TemplateVersion{
		Template:    name,
		Version:     version,
		State:       store.VersionReady,
		Commit:      strings.Repeat("ab", 20),
		Base:        version - 1,
		Reason:      "push 72d4a6e0-ünï",
		Error:       "none yet",
		Log:         "$ make\nok ✓\n",
		BuildMillis: 4567,
		CreatedAt:   at(7),
		UpdatedAt:   at(8).Add(time.Nanosecond),
		Snapshot:    []byte("{\"v\":1}\x00\xff\xfe"),

		StoredManifest: strings.Repeat("5e", 32),
	}
}

func diffVersion(got, want store.TemplateVersion) []string {
	var d diffs
	d.str("Template", got.Template, want.Template)
	d.num("Version", int64(got.Version), int64(want.Version))
	d.str("State", got.State, want.State)
	d.str("Commit", got.Commit, want.Commit)
	d.num("Base", int64(got.Base), int64(want.Base))
	d.str("Reason", got.Reason, want.Reason)
	d.str("Error", got.Error, want.Error)
	d.str("Log", got.Log, want.Log)
	d.num("BuildMillis", got.BuildMillis, want.BuildMillis)
	d = append(d, checkTime("CreatedAt", got.CreatedAt, want.CreatedAt)...)
	d = append(d, checkTime("UpdatedAt", got.UpdatedAt, want.UpdatedAt)...)
	d.bytes("Snapshot", got.Snapshot, want.Snapshot)
	d.str("StoredManifest", got.StoredManifest, want.StoredManifest)
	return d
}

// wantVersions checks the named template's versions, in order.
func wantVersions(t *testing.T, st store.Store, name string, want ...store.TemplateVersion) {
	t.Helper()
	got, err := st.ListTemplateVersions(t.Context(), name)
	if err != nil {
		t.Fatalf("ListTemplateVersions(%q): %v", name, err)
	}
	if got == nil {
		t.Errorf("ListTemplateVersions(%q) = nil, want a slice", name)
	}
	if len(got) != len(want) {
		t.Fatalf("ListTemplateVersions(%q) has %d versions, want %d: %+v", name, len(got), len(want), got)
	}
	for i := range want {
		for _, d := range diffVersion(got[i], want[i]) {
			t.Errorf("ListTemplateVersions(%q)[%d]: %s", name, i, d)
		}
	}
}

func mustPutVersion(t *testing.T, st store.Store, v store.TemplateVersion) {
	t.Helper()
	if err := st.PutTemplateVersion(t.Context(), v); err != nil {
		t.Fatalf("PutTemplateVersion(%q, %d): %v", v.Template, v.Version, err)
	}
}

// Versions round-trip, list in version order whatever the write order,
// replace on a second put, and belong to one template each.
func (s *suite) templateVersions(t *testing.T) {
	st := s.fresh(t)
	mustCreateTemplate(t, st, fullTemplate("api"))
	mustCreateTemplate(t, st, fullTemplate("web"))
	wantVersions(t, st, "api")
	v3, v1 := fullVersion("api", 3), fullVersion("api", 1)
	mustPutVersion(t, st, v3)
	mustPutVersion(t, st, v1)
	mustPutVersion(t, st, fullVersion("web", 2))
	wantVersions(t, st, "api", v1, v3)

	// A second put replaces every field, clearing some.
	v3.State, v3.Error, v3.Snapshot, v3.Commit, v3.UpdatedAt = store.VersionFailed, "", nil, "", at(9)
	v3.StoredManifest = ""
	mustPutVersion(t, st, v3)
	wantVersions(t, st, "api", v1, v3)
	wantVersions(t, st, "web", fullVersion("web", 2))
	wantVersions(t, st, "no-such-template")

	// Written versions are copies.
	v := fullVersion("api", 4)
	mustPutVersion(t, st, v)
	v.Snapshot[0] = 'X'
	got, err := st.ListTemplateVersions(t.Context(), "api")
	if err != nil {
		t.Fatal(err)
	}
	if got[2].Snapshot[0] != '{' {
		t.Errorf("changing the Snapshot passed to PutTemplateVersion changed the stored version")
	}
}

// A version of a template that does not exist is refused.
func (s *suite) templateVersionMissingTemplate(t *testing.T) {
	st := s.fresh(t)
	err := st.PutTemplateVersion(t.Context(), fullVersion("ghost", 1))
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("PutTemplateVersion for a missing template = %v, want ErrNotFound", err)
	}
	mustCreateTemplate(t, st, fullTemplate("ghost"))
	wantVersions(t, st, "ghost")
}

// A swap writes the version and the template together.
func (s *suite) swapTemplateVersion(t *testing.T) {
	st := s.fresh(t)
	tm := fullTemplate("api")
	mustCreateTemplate(t, st, tm)
	tm.Gen = 1 // as created
	v1 := fullVersion("api", 1)
	mustPutVersion(t, st, v1)
	v2 := fullVersion("api", 2)
	tm.Version, tm.Commit, tm.Snapshot, tm.UpdatedAt = 2, v2.Commit, v2.Snapshot, at(10)
	if err := st.SwapTemplateVersion(t.Context(), &tm, v2); err != nil {
		t.Fatalf("SwapTemplateVersion: %v", err)
	}
	wantTemplate(t, st, tm)
	wantVersions(t, st, "api", v1, v2)
}

// A swap that cannot write the template writes nothing.
func (s *suite) swapTemplateVersionMissing(t *testing.T) {
	st := s.fresh(t)
	err := st.SwapTemplateVersion(t.Context(), ptr(fullTemplate("ghost")), fullVersion("ghost", 1))
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("SwapTemplateVersion of a missing template = %v, want ErrNotFound", err)
	}
	mustCreateTemplate(t, st, fullTemplate("ghost"))
	wantVersions(t, st, "ghost")

	// A version of another template is refused, and nothing changes.
	tm := fullTemplate("ghost")
	tm.Version = 9
	if err := st.SwapTemplateVersion(t.Context(), &tm, fullVersion("other", 9)); err == nil {
		t.Fatal("SwapTemplateVersion with another template's version succeeded")
	}
	wantTemplate(t, st, fullTemplate("ghost"))
	wantVersions(t, st, "ghost")
}

// Removing a template removes its versions; a new template of the same
// name starts with none.
func (s *suite) deleteTemplateDeletesVersions(t *testing.T) {
	st := s.fresh(t)
	mustCreateTemplate(t, st, fullTemplate("api"))
	mustPutVersion(t, st, fullVersion("api", 1))
	mustPutVersion(t, st, fullVersion("api", 2))
	if err := st.DeleteTemplate(t.Context(), "api"); err != nil {
		t.Fatalf("DeleteTemplate: %v", err)
	}
	wantVersions(t, st, "api")
	mustCreateTemplate(t, st, fullTemplate("api"))
	wantVersions(t, st, "api")
}
