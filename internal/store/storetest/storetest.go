// Package storetest is the conformance suite that every store.Store
// implementation runs: it checks the contract in store.Store's doc.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// Run checks the implementation that open makes against the store.Store
// contract, each behaviour in its own subtest.
//
// open returns a store kept in dir, a fresh t.TempDir() per subtest. Run may
// call open again with the same dir after closing the store, and must then
// get the same data back, and may call it with a dir whose store is still
// open: both stores are then over the same data, as two servers sharing
// one database are. Run closes every store it opens; open must not. The
// subtests run in parallel (go test's -parallel of them at once): open
// must be safe to call from several at once.
func Run(t *testing.T, open func(t *testing.T, dir string) store.Store) {
	s := &suite{open: open}
	s.run(t, "SessionRoundTrip", s.sessionRoundTrip)
	s.run(t, "ZeroSessionRoundTrip", s.zeroSessionRoundTrip)
	s.run(t, "CreateDuplicate", s.createDuplicate)
	s.run(t, "GetMissing", s.getMissing)
	s.run(t, "Update", s.update)
	s.run(t, "UpdateMissing", s.updateMissing)
	s.run(t, "ListSessionsOrder", s.listSessionsOrder)
	s.run(t, "ListSessionsAfter", s.listSessionsAfter)
	s.run(t, "DeleteSession", s.deleteSession)
	s.run(t, "DeleteSessionMissing", s.deleteSessionMissing)
	s.run(t, "SessionKeys", s.sessionKeys)
	s.run(t, "ExpireSessionKeys", s.expireSessionKeys)
	s.run(t, "Checkpoints", s.checkpoints)
	s.run(t, "E2BSandboxes", s.e2bSandboxes)
	s.run(t, "E2BSandboxesDue", s.e2bSandboxesDue)
	s.run(t, "TokenGen", s.tokenGen)
	s.run(t, "RevokeSessionTokens", s.revokeSessionTokens)
	s.run(t, "CopiesInAndOut", s.copiesInAndOut)
	s.run(t, "ImageRoundTrip", s.imageRoundTrip)
	s.run(t, "ImageUpsert", s.imageUpsert)
	s.run(t, "ListImagesOrder", s.listImagesOrder)
	s.run(t, "DeleteImage", s.deleteImage)
	s.run(t, "TemplateRoundTrip", s.templateRoundTrip)
	s.run(t, "ZeroTemplateRoundTrip", s.zeroTemplateRoundTrip)
	s.run(t, "TemplateCreateDuplicate", s.templateCreateDuplicate)
	s.run(t, "TemplateUpdate", s.templateUpdate)
	s.run(t, "TemplateUpdateMissing", s.templateUpdateMissing)
	s.run(t, "ListTemplatesOrder", s.listTemplatesOrder)
	s.run(t, "DeleteTemplate", s.deleteTemplate)
	s.run(t, "TemplateCopiesInAndOut", s.templateCopiesInAndOut)
	s.run(t, "TemplateVersions", s.templateVersions)
	s.run(t, "TemplateVersionMissingTemplate", s.templateVersionMissingTemplate)
	s.run(t, "SwapTemplateVersion", s.swapTemplateVersion)
	s.run(t, "SwapTemplateVersionMissing", s.swapTemplateVersionMissing)
	s.run(t, "DeleteTemplateDeletesVersions", s.deleteTemplateDeletesVersions)
	s.run(t, "ConcurrentWriters", s.concurrentWriters)
	s.run(t, "DoneContext", s.doneContext)
	s.run(t, "PersistsAcrossReopen", s.persistsAcrossReopen)
	s.runGen(t)
	s.runTriggers(t)
	s.runIdentity(t)
	s.runSecrets(t)
	s.runNodes(t)
}

type suite struct {
	open func(t *testing.T, dir string) store.Store
}

// run runs f as t's subtest name, in parallel with the suite's other
// subtests: each opens stores of its own (a fresh dir, which a store over
// a server makes a fresh database of), so none sees another's data.
func (s *suite) run(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		t.Parallel()
		f(t)
	})
}

// fresh opens a store in a new directory and closes it when t ends.
func (s *suite) fresh(t *testing.T) store.Store {
	t.Helper()
	return s.openIn(t, t.TempDir())
}

// openIn opens the store in dir and closes it when t ends.
func (s *suite) openIn(t *testing.T, dir string) store.Store {
	t.Helper()
	st := s.open(t, dir)
	if st == nil {
		t.Fatal("open returned a nil store")
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return st
}

// at is a time with nanoseconds in a zone that is not UTC, so that a store
// that drops precision or keeps the location fails the comparisons.
func at(sec int) time.Time {
	zone := time.FixedZone("UTC+05:30", 5*3600+1800)
	return time.Date(2025, 3, 14, 15, 9, sec, 535897932, zone)
}

// fullSession has every field set to a value that is not the zero value.
func fullSession(id string) store.Session {
	return store.Session{
		ID:        id,
		State:     "running",
		Image:     "tiny",
		MemoryMiB: 512,
		CPUs:      2,
		Env: map[string]string{
			"HOME":  "/root",
			"EMPTY": "",
			"UTF8":  "héllo wörld ☃",
			"QUOTE": `"a\b'`,
		},
		Accel:      "kvm",
		CreatedAt:  at(1),
		UpdatedAt:  at(2).Add(time.Nanosecond),
		Error:      "none yet",
		BootMillis: 1234,
		// Not valid UTF-8 and holding a NUL: the store must keep bytes.
		Handle: []byte("{\"v\":1}\x00\xff\xfe"),
		// Not a whole number of any coarser unit.
		IdleTimeout: 90*time.Minute + 7,
		NoAutoWake:  true,
		Template:    "py-base",
		Snapshot:    []byte("{\"v\":1,\"dir\":\"/snap\"}\x00\xff"),

		TemplateVersion: 7,
		Owner:           "u_" + strings.Repeat("q", 16),
		Agent:           "review-bot",
		Parent:          "s-parent",
		FromCheckpoint:  "before-migration",
		TokenGen:        1<<40 + 3,
		TokensRevokedAt: at(4).Add(9),
		Allow:           []string{"github.com", "*.pypi.org:443", "GET,HEAD files.ünï.example/packages/"},
		StoredManifest:  strings.Repeat("0f", 32),
		StoredBytes:     1<<34 + 5,
		Node:            "node-abcdefghijkl",
	}
}

// fullTemplate has every field set to a value that is not the zero value.
func fullTemplate(name string) store.Template {
	return store.Template{
		Name:      name,
		State:     "ready",
		Image:     "tiny",
		MemoryMiB: 1024,
		CPUs:      4,
		Env: map[string]string{
			"PATH":  "/usr/bin",
			"EMPTY": "",
			"UTF8":  "ünïcödé ☃",
		},
		// Order matters; an empty command and odd bytes are kept as they are.
		Setup: []string{
			"apk add python3",
			"",
			"echo \"quoted\" 'single' \\ back\nsecond line ☃",
			"pip install -r /work/requirements.txt",
		},
		Start:     "python3 -m http.server 8000",
		Pool:      3,
		Error:     "none yet",
		CreatedAt: at(5),
		UpdatedAt: at(6).Add(time.Nanosecond),
		// Not valid UTF-8 and holding a NUL: the store must keep bytes.
		Snapshot: []byte("{\"v\":1}\x00\xff\xfe"),
		Repo:     "https://git.example/acme/api.git",
		Branch:   "release/ünï",
		RepoDir:  "/workspace/api",
		Version:  12,
		Commit:   strings.Repeat("3f", 20),
		Owner:    store.OwnerAdmin,
		Agent:    "builder ☃",
		Allow:    []string{"registry.npmjs.org", "api.github.com/repos/"},
	}
}

func fullImage(name string) store.Image {
	return store.Image{
		Name:        name,
		Key:         "sha256:" + strings.Repeat("ab", 32),
		Dir:         "/var/lib/cove/images/" + name,
		SizeBytes:   1 << 33,
		CreatedAt:   at(3),
		BuildMillis: 98765,

		StoredManifest: strings.Repeat("1a", 32),
	}
}

// diffs collects how a record read back differs from the one written,
// a line per field.
type diffs []string

func (d *diffs) str(field, got, want string) {
	if got != want {
		*d = append(*d, fmt.Sprintf("%s = %q, want %q", field, got, want))
	}
}

func (d *diffs) num(field string, got, want int64) {
	if got != want {
		*d = append(*d, fmt.Sprintf("%s = %d, want %d", field, got, want))
	}
}

func (d *diffs) bytes(field string, got, want []byte) {
	if !bytes.Equal(got, want) {
		*d = append(*d, fmt.Sprintf("%s = %q, want %q", field, got, want))
	}
}

// checkTime reports whether got is want's instant, in UTC, without a
// monotonic reading.
func checkTime(field string, got, want time.Time) []string {
	var d diffs
	if want.IsZero() {
		if !got.IsZero() {
			d = append(d, fmt.Sprintf("%s = %v, want the zero time", field, got))
		}
		return d
	}
	if !got.Equal(want) {
		d = append(d, fmt.Sprintf("%s = %v, want %v", field, got, want))
	}
	if got.Location() != time.UTC {
		d = append(d, fmt.Sprintf("%s location = %v, want UTC", field, got.Location()))
	}
	if got != got.Round(0) {
		d = append(d, fmt.Sprintf("%s has a monotonic clock reading", field))
	}
	return d
}

func diffSession(got, want store.Session) []string {
	var d diffs
	d.str("ID", got.ID, want.ID)
	d.str("State", got.State, want.State)
	d.str("Image", got.Image, want.Image)
	d.num("MemoryMiB", int64(got.MemoryMiB), int64(want.MemoryMiB))
	d.num("CPUs", int64(got.CPUs), int64(want.CPUs))
	if !maps.Equal(got.Env, want.Env) {
		d = append(d, fmt.Sprintf("Env = %q, want %q", got.Env, want.Env))
	}
	d.str("Accel", got.Accel, want.Accel)
	d = append(d, checkTime("CreatedAt", got.CreatedAt, want.CreatedAt)...)
	d = append(d, checkTime("UpdatedAt", got.UpdatedAt, want.UpdatedAt)...)
	d.str("Error", got.Error, want.Error)
	d.num("BootMillis", got.BootMillis, want.BootMillis)
	d.bytes("Handle", got.Handle, want.Handle)
	if got.IdleTimeout != want.IdleTimeout {
		d = append(d, fmt.Sprintf("IdleTimeout = %v, want %v", got.IdleTimeout, want.IdleTimeout))
	}
	if got.NoAutoWake != want.NoAutoWake {
		d = append(d, fmt.Sprintf("NoAutoWake = %v, want %v", got.NoAutoWake, want.NoAutoWake))
	}
	d.str("Template", got.Template, want.Template)
	d.num("TemplateVersion", int64(got.TemplateVersion), int64(want.TemplateVersion))
	d.bytes("Snapshot", got.Snapshot, want.Snapshot)
	d.str("Owner", got.Owner, want.Owner)
	d.str("Agent", got.Agent, want.Agent)
	d.str("StoredManifest", got.StoredManifest, want.StoredManifest)
	d.num("StoredBytes", got.StoredBytes, want.StoredBytes)
	d.str("Node", got.Node, want.Node)
	if got.TokenGen != want.TokenGen {
		d = append(d, fmt.Sprintf("TokenGen = %d, want %d", got.TokenGen, want.TokenGen))
	}
	d = append(d, checkTime("TokensRevokedAt", got.TokensRevokedAt, want.TokensRevokedAt)...)
	return d
}

func diffTemplate(got, want store.Template) []string {
	var d diffs
	d.str("Name", got.Name, want.Name)
	d.str("State", got.State, want.State)
	d.str("Image", got.Image, want.Image)
	d.num("MemoryMiB", int64(got.MemoryMiB), int64(want.MemoryMiB))
	d.num("CPUs", int64(got.CPUs), int64(want.CPUs))
	if !maps.Equal(got.Env, want.Env) {
		d = append(d, fmt.Sprintf("Env = %q, want %q", got.Env, want.Env))
	}
	if !slices.Equal(got.Setup, want.Setup) {
		d = append(d, fmt.Sprintf("Setup = %q, want %q", got.Setup, want.Setup))
	}
	d.str("Start", got.Start, want.Start)
	d.num("Pool", int64(got.Pool), int64(want.Pool))
	d.str("Error", got.Error, want.Error)
	d = append(d, checkTime("CreatedAt", got.CreatedAt, want.CreatedAt)...)
	d = append(d, checkTime("UpdatedAt", got.UpdatedAt, want.UpdatedAt)...)
	d.bytes("Snapshot", got.Snapshot, want.Snapshot)
	d.str("Repo", got.Repo, want.Repo)
	d.str("Branch", got.Branch, want.Branch)
	d.str("RepoDir", got.RepoDir, want.RepoDir)
	d.num("Version", int64(got.Version), int64(want.Version))
	d.str("Commit", got.Commit, want.Commit)
	d.str("Owner", got.Owner, want.Owner)
	d.str("Agent", got.Agent, want.Agent)
	return d
}

func diffImage(got, want store.Image) []string {
	var d diffs
	d.str("Name", got.Name, want.Name)
	d.str("Key", got.Key, want.Key)
	d.str("Dir", got.Dir, want.Dir)
	d.num("SizeBytes", got.SizeBytes, want.SizeBytes)
	d = append(d, checkTime("CreatedAt", got.CreatedAt, want.CreatedAt)...)
	d.num("BuildMillis", got.BuildMillis, want.BuildMillis)
	d.str("StoredManifest", got.StoredManifest, want.StoredManifest)
	return d
}

func wantSession(t *testing.T, st store.Store, want store.Session) {
	t.Helper()
	got, err := st.GetSession(t.Context(), want.ID)
	if err != nil {
		t.Fatalf("GetSession(%q): %v", want.ID, err)
	}
	for _, d := range diffSession(got, want) {
		t.Errorf("GetSession(%q): %s", want.ID, d)
	}
}

func wantImage(t *testing.T, st store.Store, want store.Image) {
	t.Helper()
	got, err := st.GetImage(t.Context(), want.Name)
	if err != nil {
		t.Fatalf("GetImage(%q): %v", want.Name, err)
	}
	for _, d := range diffImage(got, want) {
		t.Errorf("GetImage(%q): %s", want.Name, d)
	}
}

func wantTemplate(t *testing.T, st store.Store, want store.Template) {
	t.Helper()
	got, err := st.GetTemplate(t.Context(), want.Name)
	if err != nil {
		t.Fatalf("GetTemplate(%q): %v", want.Name, err)
	}
	for _, d := range diffTemplate(got, want) {
		t.Errorf("GetTemplate(%q): %s", want.Name, d)
	}
}

func wantSessionIDs(t *testing.T, st store.Store, want ...string) []store.Session {
	t.Helper()
	list, err := st.ListSessions(t.Context())
	if err != nil {
		t.Fatalf("ListSessions: %v", err)
	}
	var got []string
	for _, s := range list {
		got = append(got, s.ID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ListSessions IDs = %q, want %q", got, want)
	}
	return list
}

func wantImageNames(t *testing.T, st store.Store, want ...string) []store.Image {
	t.Helper()
	list, err := st.ListImages(t.Context())
	if err != nil {
		t.Fatalf("ListImages: %v", err)
	}
	var got []string
	for _, im := range list {
		got = append(got, im.Name)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ListImages names = %q, want %q", got, want)
	}
	return list
}

func wantTemplateNames(t *testing.T, st store.Store, want ...string) []store.Template {
	t.Helper()
	list, err := st.ListTemplates(t.Context())
	if err != nil {
		t.Fatalf("ListTemplates: %v", err)
	}
	var got []string
	for _, tm := range list {
		got = append(got, tm.Name)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ListTemplates names = %q, want %q", got, want)
	}
	return list
}

func mustCreateTemplate(t *testing.T, st store.Store, tm store.Template) {
	t.Helper()
	if err := st.CreateTemplate(t.Context(), &tm); err != nil {
		t.Fatalf("CreateTemplate(%q): %v", tm.Name, err)
	}
}

// canceled returns a context that is done already and a check that op,
// called with it, failed with context.Canceled.
func canceled(t *testing.T) (context.Context, func(op string, err error)) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	return ctx, func(op string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with canceled ctx = %v, want context.Canceled", op, err)
		}
	}
}

// closeAfterWrites fails the test at the first of steps (the errors of
// writes to st) that failed, closing st first; then it closes st, so that
// the test can reopen the store and check what it kept.
func closeAfterWrites(t *testing.T, st store.Store, steps []error) {
	t.Helper()
	for i, err := range steps {
		if err != nil {
			st.Close()
			t.Fatalf("write step %d: %v", i, err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func mustCreate(t *testing.T, st store.Store, s store.Session) {
	t.Helper()
	if err := st.CreateSession(t.Context(), &s); err != nil {
		t.Fatalf("CreateSession(%q): %v", s.ID, err)
	}
}

func mustPut(t *testing.T, st store.Store, im store.Image) {
	t.Helper()
	if err := st.PutImage(t.Context(), im); err != nil {
		t.Fatalf("PutImage(%q): %v", im.Name, err)
	}
}

// Every field, times included, comes back exactly, in UTC.
func (s *suite) sessionRoundTrip(t *testing.T) {
	st := s.fresh(t)
	want := fullSession("s-1")
	mustCreate(t, st, want)
	wantSession(t, st, want)

	list := wantSessionIDs(t, st, "s-1")
	for _, d := range diffSession(list[0], want) {
		t.Errorf("ListSessions[0]: %s", d)
	}
}

// A session of zero values (zero times, nil Env, Handle and Snapshot, no
// idle timeout, auto-wake on, no template) round-trips.
func (s *suite) zeroSessionRoundTrip(t *testing.T) {
	st := s.fresh(t)
	want := store.Session{ID: "zero"}
	mustCreate(t, st, want)
	wantSession(t, st, want)
}

// Creating a session whose id is taken fails with ErrExists and keeps the
// first one.
func (s *suite) createDuplicate(t *testing.T) {
	st := s.fresh(t)
	first := fullSession("dup")
	mustCreate(t, st, first)

	second := fullSession("dup")
	second.State = "failed"
	second.Handle = nil
	second.Snapshot = nil
	second.NoAutoWake = false
	err := st.CreateSession(t.Context(), &second)
	if !errors.Is(err, store.ErrExists) {
		t.Fatalf("second CreateSession = %v, want ErrExists", err)
	}
	wantSession(t, st, first)
	wantSessionIDs(t, st, "dup")
}

// Getting a missing session, image or template fails with ErrNotFound.
func (s *suite) getMissing(t *testing.T) {
	st := s.fresh(t)
	if _, err := st.GetSession(t.Context(), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetSession(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetImage(t.Context(), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetImage(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetTemplate(t.Context(), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetTemplate(missing) = %v, want ErrNotFound", err)
	}
}

// UpdateSession replaces every field, including clearing some.
func (s *suite) update(t *testing.T) {
	st := s.fresh(t)
	orig := fullSession("u")
	mustCreate(t, st, orig)
	other := fullSession("other")
	mustCreate(t, st, other)

	upd := store.Session{
		ID:         "u",
		Gen:        1, // a copy of the record as created
		State:      "failed",
		Image:      "big",
		MemoryMiB:  4096,
		CPUs:       8,
		Env:        map[string]string{"ONLY": "this"},
		Accel:      "tcg",
		CreatedAt:  orig.CreatedAt.Add(-time.Hour),
		UpdatedAt:  at(30).Add(7),
		Error:      "vm died",
		BootMillis: 99,
		Handle:     []byte(`{"v":2}`),

		IdleTimeout: 3 * time.Second,
		NoAutoWake:  false,
		Template:    "other-template",
		Snapshot:    []byte(`{"v":2}`),
		Owner:       "u_someoneelse",
		Agent:       "fixer",
		Allow:       []string{"example.org:8443"},
		// Parent and FromCheckpoint are written by an update too.
		Parent:         "s-other",
		FromCheckpoint: "",
		// A snapshot stored again: another manifest.
		StoredManifest: strings.Repeat("e1", 32),
		StoredBytes:    17,
		Node:           "node-mnopqrstuvwx", // moved to another node
		TokenGen:       orig.TokenGen,       // UpdateSession never changes it: see tokenGen
		// Nor this: see revokeSessionTokens.
		TokensRevokedAt: orig.TokensRevokedAt,
	}
	if err := st.UpdateSession(t.Context(), &upd); err != nil {
		t.Fatalf("UpdateSession: %v", err)
	}
	wantSession(t, st, upd)
	wantSession(t, st, other)

	// Clearing optional fields sticks too.
	cleared := upd
	cleared.Env = nil
	cleared.Handle = nil
	cleared.Error = ""
	cleared.UpdatedAt = time.Time{}
	cleared.IdleTimeout = 0
	cleared.Template = ""
	cleared.Snapshot = nil
	cleared.Owner = ""
	cleared.Agent = ""
	cleared.Node = ""
	if err := st.UpdateSession(t.Context(), &cleared); err != nil {
		t.Fatalf("UpdateSession(cleared): %v", err)
	}
	wantSession(t, st, cleared)

	// The flag turns back on.
	cleared.NoAutoWake = true
	if err := st.UpdateSession(t.Context(), &cleared); err != nil {
		t.Fatalf("UpdateSession(NoAutoWake): %v", err)
	}
	wantSession(t, st, cleared)

	// Writing the same record again is not "not found".
	if err := st.UpdateSession(t.Context(), &cleared); err != nil {
		t.Fatalf("UpdateSession(unchanged): %v", err)
	}
}

// Updating a missing session fails with ErrNotFound and creates nothing.
func (s *suite) updateMissing(t *testing.T) {
	st := s.fresh(t)
	err := st.UpdateSession(t.Context(), ptr(fullSession("ghost")))
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateSession(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetSession(t.Context(), "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetSession after failed update = %v, want ErrNotFound", err)
	}
	wantSessionIDs(t, st)
}

// ListSessions orders by CreatedAt, then ID, whatever the insertion order
// and the times' locations.
func (s *suite) listSessionsOrder(t *testing.T) {
	st := s.fresh(t)
	wantSessionIDs(t, st) // empty

	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ny := time.FixedZone("UTC-5", -5*3600)
	add := func(id string, created time.Time) {
		mustCreate(t, st, store.Session{ID: id, State: "running", CreatedAt: created})
	}
	add("c", base.Add(2*time.Second))
	add("b", base.Add(time.Nanosecond))
	add("z", base)
	add("a", base.Add(2*time.Second))
	add("B", base.Add(2*time.Second)) // bytewise, "B" < "a"
	add("y", base.Add(time.Nanosecond).In(ny))
	add("early", base.Add(-24*time.Hour).In(ny))
	add("zero", time.Time{})

	wantSessionIDs(t, st, "zero", "early", "z", "b", "y", "B", "a", "c")
}

// ListSessionsAfter pages through ListSessions' order, whatever the page
// size, from any position (a zero CreatedAt, equal CreatedAts, another
// location); a session created between pages after the position comes in
// a later page, and one removed moves no other.
func (s *suite) listSessionsAfter(t *testing.T) {
	st := s.fresh(t)
	ctx := t.Context()
	if got, err := st.ListSessionsAfter(ctx, store.SessionCursor{}, 10); err != nil || len(got) != 0 {
		t.Fatalf("ListSessionsAfter on an empty store = %v, %v", got, err)
	}
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ny := time.FixedZone("UTC-5", -5*3600)
	add := func(id string, created time.Time) {
		mustCreate(t, st, store.Session{ID: id, State: "running", CreatedAt: created})
	}
	add("c", base.Add(2*time.Second))
	add("b", base.Add(time.Nanosecond))
	add("z", base)
	add("a", base.Add(2*time.Second))
	add("B", base.Add(2*time.Second))
	add("y", base.Add(time.Nanosecond).In(ny))
	add("zero2", time.Time{})
	add("zero", time.Time{})
	want := []string{"zero", "zero2", "z", "b", "y", "B", "a", "c"}
	page := func(after store.SessionCursor, limit int) []store.Session {
		t.Helper()
		got, err := st.ListSessionsAfter(ctx, after, limit)
		if err != nil {
			t.Fatalf("ListSessionsAfter(%v, %d): %v", after, limit, err)
		}
		return got
	}
	for limit := 1; limit <= len(want)+1; limit++ {
		var got []string
		var after store.SessionCursor
		for range len(want) + 2 {
			p := page(after, limit)
			if len(p) > limit {
				t.Fatalf("limit %d: a page of %d", limit, len(p))
			}
			for _, s := range p {
				got = append(got, s.ID)
			}
			if len(p) < limit {
				break
			}
			last := p[len(p)-1]
			after = store.SessionCursor{CreatedAt: last.CreatedAt, ID: last.ID}
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("limit %d: pages give %q, want %q", limit, got, want)
		}
	}
	if got := page(store.SessionCursor{}, 0); len(got) != 0 {
		t.Errorf("limit 0: %d sessions", len(got))
	}
	// From the position of "y" (in another location): the rest.
	p := page(store.SessionCursor{CreatedAt: base.Add(time.Nanosecond).In(ny), ID: "y"}, 10)
	if ids := sessionIDs(p); ids != "B a c" {
		t.Errorf("after y: %q, want \"B a c\"", ids)
	}
	// After "zero" (a zero time): the other zero, then the rest.
	if ids := sessionIDs(page(store.SessionCursor{ID: "zero"}, 3)); ids != "zero2 z b" {
		t.Errorf("after zero: %q, want \"zero2 z b\"", ids)
	}
	// A session made between pages, after the position, and one removed
	// at the position.
	add("d", base.Add(3*time.Second))
	if err := st.DeleteSession(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	if ids := sessionIDs(page(store.SessionCursor{CreatedAt: base.Add(2 * time.Second), ID: "B"}, 10)); ids != "a c d" {
		t.Errorf("after the removed B: %q, want \"a c d\"", ids)
	}
}

// sessionIDs is the ids of list, space-separated.
func sessionIDs(list []store.Session) string {
	ids := make([]string, len(list))
	for i, s := range list {
		ids[i] = s.ID
	}
	return strings.Join(ids, " ")
}

// BumpTokenGen adds one to a session's token generation and returns it;
// UpdateSession, even with a stale or zeroed copy, leaves the stored one
// as it is (a revoke stays in force); a reopened store keeps it; a missing
// session is ErrNotFound and changes nothing.
func (s *suite) tokenGen(t *testing.T) {
	dir := t.TempDir()
	st := s.open(t, dir)
	orig := fullSession("g")
	mustCreate(t, st, orig)
	mustCreate(t, st, fullSession("other"))
	for i := uint64(1); i <= 2; i++ {
		gen, err := st.BumpTokenGen(t.Context(), "g")
		if err != nil || gen != orig.TokenGen+i {
			t.Fatalf("BumpTokenGen #%d = %d, %v; want %d", i, gen, err, orig.TokenGen+i)
		}
	}
	stale := orig
	stale.Gen = 1 // current: the token calls leave the generation
	stale.State, stale.TokenGen = "parked", 0
	if err := st.UpdateSession(t.Context(), &stale); err != nil {
		t.Fatalf("UpdateSession: %v", err)
	}
	stale.TokenGen = orig.TokenGen + 2
	wantSession(t, st, stale)
	wantSession(t, st, fullSession("other"))
	if gen, err := st.BumpTokenGen(t.Context(), "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("BumpTokenGen(missing) = %d, %v; want ErrNotFound", gen, err)
	}
	if _, err := st.GetSession(t.Context(), "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("BumpTokenGen(missing) created it: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wantSession(t, s.openIn(t, dir), stale)
}

// RevokeSessionTokens bumps the token generation and sets
// TokensRevokedAt, once: a second revoke bumps again and keeps the first
// time. UpdateSession, even with a stale copy that has no mark, leaves
// it, and a reopened store keeps it. A zero time, or a missing session,
// fails and changes nothing; other sessions are untouched.
func (s *suite) revokeSessionTokens(t *testing.T) {
	dir := t.TempDir()
	st := s.open(t, dir)
	orig := fullSession("r")
	orig.TokensRevokedAt = time.Time{}
	mustCreate(t, st, orig)
	mustCreate(t, st, fullSession("other"))

	if gen, err := st.RevokeSessionTokens(t.Context(), "r", time.Time{}); err == nil {
		t.Errorf("RevokeSessionTokens with a zero time = %d, nil; want an error", gen)
	}
	wantSession(t, st, orig)

	first := at(50).Add(3)
	gen, err := st.RevokeSessionTokens(t.Context(), "r", first)
	if err != nil || gen != orig.TokenGen+1 {
		t.Fatalf("RevokeSessionTokens = %d, %v; want %d", gen, err, orig.TokenGen+1)
	}
	want := orig
	want.TokenGen, want.TokensRevokedAt = gen, first
	wantSession(t, st, want)

	if gen, err = st.RevokeSessionTokens(t.Context(), "r", at(55)); err != nil || gen != orig.TokenGen+2 {
		t.Fatalf("second RevokeSessionTokens = %d, %v; want %d", gen, err, orig.TokenGen+2)
	}
	want.TokenGen = gen
	wantSession(t, st, want)

	stale := orig // as read before the revoke: not revoked
	stale.Gen = 1 // and current: the token calls leave the generation
	stale.State = "parked"
	if err := st.UpdateSession(t.Context(), &stale); err != nil {
		t.Fatalf("UpdateSession: %v", err)
	}
	want.State = "parked"
	wantSession(t, st, want)
	wantSession(t, st, fullSession("other"))

	if gen, err := st.RevokeSessionTokens(t.Context(), "missing", at(56)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeSessionTokens(missing) = %d, %v; want ErrNotFound", gen, err)
	}
	if _, err := st.GetSession(t.Context(), "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeSessionTokens(missing) created it: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := st.RevokeSessionTokens(ctx, "other", at(57)); !errors.Is(err, context.Canceled) {
		t.Errorf("RevokeSessionTokens with canceled ctx = %v, want context.Canceled", err)
	}
	wantSession(t, st, fullSession("other"))
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wantSession(t, s.openIn(t, dir), want)
}

// A deleted session is gone from Get and List; others stay.
func (s *suite) deleteSession(t *testing.T) {
	st := s.fresh(t)
	mustCreate(t, st, fullSession("keep"))
	mustCreate(t, st, fullSession("drop"))

	if err := st.DeleteSession(t.Context(), "drop"); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	if _, err := st.GetSession(t.Context(), "drop"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetSession(deleted) = %v, want ErrNotFound", err)
	}
	wantSessionIDs(t, st, "keep")
	wantSession(t, st, fullSession("keep"))

	if err := st.DeleteSession(t.Context(), "drop"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteSession = %v, want ErrNotFound", err)
	}
	// The id is free again.
	mustCreate(t, st, fullSession("drop"))
	wantSession(t, st, fullSession("drop"))
}

// Deleting a session that never existed fails with ErrNotFound.
func (s *suite) deleteSessionMissing(t *testing.T) {
	st := s.fresh(t)
	if err := st.DeleteSession(t.Context(), "never"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("DeleteSession(missing) = %v, want ErrNotFound", err)
	}
}

// The store keeps its own copies: changing a record's Env, Handle or
// Snapshot after writing it, or after reading it, does not change the stored
// record.
func (s *suite) copiesInAndOut(t *testing.T) {
	st := s.fresh(t)
	in := fullSession("copy")
	want := fullSession("copy")
	mustCreate(t, st, in)
	in.Env["HOME"] = "/changed"
	in.Env["NEW"] = "x"
	in.Handle[0] = 'X'
	in.Snapshot[0] = 'X'
	wantSession(t, st, want)

	got, err := st.GetSession(t.Context(), "copy")
	if err != nil {
		t.Fatalf("GetSession: %v", err)
	}
	got.Env["HOME"] = "/changed"
	got.Handle[0] = 'X'
	got.Snapshot[0] = 'X'
	list, err := st.ListSessions(t.Context())
	if err != nil {
		t.Fatalf("ListSessions: %v", err)
	}
	list[0].Env["HOME"] = "/changed"
	list[0].Handle[0] = 'X'
	list[0].Snapshot[0] = 'X'
	wantSession(t, st, want)
}

// Every image field comes back exactly, in UTC.
func (s *suite) imageRoundTrip(t *testing.T) {
	st := s.fresh(t)
	want := fullImage("tiny")
	mustPut(t, st, want)
	wantImage(t, st, want)
	list := wantImageNames(t, st, "tiny")
	for _, d := range diffImage(list[0], want) {
		t.Errorf("ListImages[0]: %s", d)
	}

	zero := store.Image{Name: "zero"}
	mustPut(t, st, zero)
	wantImage(t, st, zero)
}

// PutImage on an existing name replaces every field and adds no record.
func (s *suite) imageUpsert(t *testing.T) {
	st := s.fresh(t)
	mustPut(t, st, fullImage("tiny"))
	mustPut(t, st, fullImage("other"))

	repl := store.Image{
		Name:        "tiny",
		Key:         "sha256:" + strings.Repeat("cd", 32),
		Dir:         "/elsewhere",
		SizeBytes:   7,
		CreatedAt:   at(40).Add(3),
		BuildMillis: 1,
	}
	mustPut(t, st, repl)
	wantImage(t, st, repl)
	wantImage(t, st, fullImage("other"))
	wantImageNames(t, st, "other", "tiny")
}

// ListImages orders by Name, bytewise.
func (s *suite) listImagesOrder(t *testing.T) {
	st := s.fresh(t)
	wantImageNames(t, st) // empty
	for _, n := range []string{"tiny", "Zeta", "alpine", "b", "alpine-2"} {
		mustPut(t, st, fullImage(n))
	}
	wantImageNames(t, st, "Zeta", "alpine", "alpine-2", "b", "tiny")
}

// A deleted image is gone; deleting a missing one fails with ErrNotFound.
func (s *suite) deleteImage(t *testing.T) {
	st := s.fresh(t)
	mustPut(t, st, fullImage("keep"))
	mustPut(t, st, fullImage("drop"))
	if err := st.DeleteImage(t.Context(), "drop"); err != nil {
		t.Fatalf("DeleteImage: %v", err)
	}
	if _, err := st.GetImage(t.Context(), "drop"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetImage(deleted) = %v, want ErrNotFound", err)
	}
	wantImageNames(t, st, "keep")
	if err := st.DeleteImage(t.Context(), "drop"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteImage = %v, want ErrNotFound", err)
	}
	if err := st.DeleteImage(t.Context(), "never"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteImage(missing) = %v, want ErrNotFound", err)
	}
}

// Every template field, times included, comes back exactly, in UTC.
func (s *suite) templateRoundTrip(t *testing.T) {
	st := s.fresh(t)
	want := fullTemplate("py")
	mustCreateTemplate(t, st, want)
	wantTemplate(t, st, want)
	list := wantTemplateNames(t, st, "py")
	for _, d := range diffTemplate(list[0], want) {
		t.Errorf("ListTemplates[0]: %s", d)
	}
}

// A template of zero values (zero times, nil Env, Setup and Snapshot)
// round-trips.
func (s *suite) zeroTemplateRoundTrip(t *testing.T) {
	st := s.fresh(t)
	want := store.Template{Name: "zero"}
	mustCreateTemplate(t, st, want)
	wantTemplate(t, st, want)
}

// Creating a template whose name is taken fails with ErrExists and keeps
// the first one.
func (s *suite) templateCreateDuplicate(t *testing.T) {
	st := s.fresh(t)
	first := fullTemplate("dup")
	mustCreateTemplate(t, st, first)

	second := fullTemplate("dup")
	second.State = "failed"
	second.Setup = []string{"other"}
	second.Snapshot = nil
	err := st.CreateTemplate(t.Context(), &second)
	if !errors.Is(err, store.ErrExists) {
		t.Fatalf("second CreateTemplate = %v, want ErrExists", err)
	}
	wantTemplate(t, st, first)
	wantTemplateNames(t, st, "dup")
}

// UpdateTemplate replaces every field, including clearing some.
func (s *suite) templateUpdate(t *testing.T) {
	st := s.fresh(t)
	orig := fullTemplate("u")
	mustCreateTemplate(t, st, orig)
	other := fullTemplate("other")
	mustCreateTemplate(t, st, other)

	upd := store.Template{
		Gen:       1, // a copy of the record as created
		Name:      "u",
		State:     "failed",
		Image:     "big",
		MemoryMiB: 8192,
		CPUs:      16,
		Env:       map[string]string{"ONLY": "this"},
		Setup:     []string{"second", "first"},
		Start:     "sleep infinity",
		Pool:      1,
		Error:     "setup command 2 exited 1",
		CreatedAt: orig.CreatedAt.Add(-time.Hour),
		UpdatedAt: at(31).Add(9),
		Snapshot:  []byte(`{"v":2}`),
		Owner:     "u_someoneelse",
		Agent:     "fixer",
		Allow:     []string{"*.example.org"},
	}
	if err := st.UpdateTemplate(t.Context(), &upd); err != nil {
		t.Fatalf("UpdateTemplate: %v", err)
	}
	wantTemplate(t, st, upd)
	wantTemplate(t, st, other)

	// Clearing optional fields sticks too.
	cleared := upd
	cleared.Env = nil
	cleared.Setup = nil
	cleared.Start = ""
	cleared.Pool = 0
	cleared.Error = ""
	cleared.UpdatedAt = time.Time{}
	cleared.Snapshot = nil
	cleared.Owner = ""
	cleared.Agent = ""
	if err := st.UpdateTemplate(t.Context(), &cleared); err != nil {
		t.Fatalf("UpdateTemplate(cleared): %v", err)
	}
	wantTemplate(t, st, cleared)

	// Writing the same record again is not "not found".
	if err := st.UpdateTemplate(t.Context(), &cleared); err != nil {
		t.Fatalf("UpdateTemplate(unchanged): %v", err)
	}
	wantTemplateNames(t, st, "other", "u")
}

// Updating a missing template fails with ErrNotFound and creates nothing.
func (s *suite) templateUpdateMissing(t *testing.T) {
	st := s.fresh(t)
	err := st.UpdateTemplate(t.Context(), ptr(fullTemplate("ghost")))
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateTemplate(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetTemplate(t.Context(), "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetTemplate after failed update = %v, want ErrNotFound", err)
	}
	wantTemplateNames(t, st)
}

// ListTemplates orders by Name, bytewise, whatever the insertion order and
// creation times. Templates are their own kind: an image or session with
// the same name neither shows up in nor hides from the list.
func (s *suite) listTemplatesOrder(t *testing.T) {
	st := s.fresh(t)
	wantTemplateNames(t, st) // empty
	mustPut(t, st, fullImage("alpine"))
	mustCreate(t, st, fullSession("b"))
	for i, n := range []string{"tiny", "Zeta", "alpine", "b", "alpine-2"} {
		tm := fullTemplate(n)
		tm.CreatedAt = at(0).Add(-time.Duration(i) * time.Second) // reverse of name order
		mustCreateTemplate(t, st, tm)
	}
	wantTemplateNames(t, st, "Zeta", "alpine", "alpine-2", "b", "tiny")
	wantImageNames(t, st, "alpine")
	wantSessionIDs(t, st, "b")
}

// A deleted template is gone from Get and List; others stay, deleting a
// missing one fails with ErrNotFound, and the name is free again.
func (s *suite) deleteTemplate(t *testing.T) {
	st := s.fresh(t)
	mustCreateTemplate(t, st, fullTemplate("keep"))
	mustCreateTemplate(t, st, fullTemplate("drop"))
	if err := st.DeleteTemplate(t.Context(), "drop"); err != nil {
		t.Fatalf("DeleteTemplate: %v", err)
	}
	if _, err := st.GetTemplate(t.Context(), "drop"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetTemplate(deleted) = %v, want ErrNotFound", err)
	}
	wantTemplateNames(t, st, "keep")
	wantTemplate(t, st, fullTemplate("keep"))
	if err := st.DeleteTemplate(t.Context(), "drop"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteTemplate = %v, want ErrNotFound", err)
	}
	if err := st.DeleteTemplate(t.Context(), "never"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteTemplate(missing) = %v, want ErrNotFound", err)
	}
	mustCreateTemplate(t, st, fullTemplate("drop"))
	wantTemplate(t, st, fullTemplate("drop"))
}

// The store keeps its own copies of a template's Env, Setup and Snapshot,
// on the way in and on the way out.
func (s *suite) templateCopiesInAndOut(t *testing.T) {
	st := s.fresh(t)
	in := fullTemplate("copy")
	want := fullTemplate("copy")
	mustCreateTemplate(t, st, in)
	in.Env["PATH"] = "/changed"
	in.Env["NEW"] = "x"
	in.Setup[0] = "rm -rf /"
	in.Snapshot[0] = 'X'
	wantTemplate(t, st, want)

	upd := fullTemplate("copy")
	upd.Gen = 1
	if err := st.UpdateTemplate(t.Context(), &upd); err != nil {
		t.Fatalf("UpdateTemplate: %v", err)
	}
	upd.Env["PATH"] = "/changed"
	upd.Setup[0] = "rm -rf /"
	upd.Snapshot[0] = 'X'
	wantTemplate(t, st, want)

	got, err := st.GetTemplate(t.Context(), "copy")
	if err != nil {
		t.Fatalf("GetTemplate: %v", err)
	}
	got.Env["PATH"] = "/changed"
	got.Setup[0] = "rm -rf /"
	got.Snapshot[0] = 'X'
	list, err := st.ListTemplates(t.Context())
	if err != nil {
		t.Fatalf("ListTemplates: %v", err)
	}
	list[0].Env["PATH"] = "/changed"
	list[0].Setup[0] = "rm -rf /"
	list[0].Snapshot[0] = 'X'
	wantTemplate(t, st, want)
}

// Many goroutines writing at once all succeed, none lost to a busy store.
func (s *suite) concurrentWriters(t *testing.T) {
	st := s.fresh(t)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, 6*n)
	for i := range n {
		wg.Go(func() {
			ctx := t.Context()
			id := fmt.Sprintf("s-%02d", i)
			sess := fullSession(id)
			sess.CreatedAt = at(0).Add(time.Duration(i))
			if err := st.CreateSession(ctx, &sess); err != nil {
				errs <- fmt.Errorf("CreateSession(%s): %w", id, err)
				return
			}
			sess.State = "stopping"
			if err := st.UpdateSession(ctx, &sess); err != nil {
				errs <- fmt.Errorf("UpdateSession(%s): %w", id, err)
			}
			if _, err := st.ListSessions(ctx); err != nil {
				errs <- fmt.Errorf("ListSessions: %w", err)
			}
			// Every goroutine upserts the same image, and one of its own.
			if err := st.PutImage(ctx, fullImage("shared")); err != nil {
				errs <- fmt.Errorf("PutImage(shared): %w", err)
			}
			if err := st.PutImage(ctx, fullImage(id)); err != nil {
				errs <- fmt.Errorf("PutImage(%s): %w", id, err)
			}
			tm := fullTemplate(id)
			if err := st.CreateTemplate(ctx, &tm); err != nil {
				errs <- fmt.Errorf("CreateTemplate(%s): %w", id, err)
				return
			}
			tm.State = "failed"
			if err := st.UpdateTemplate(ctx, &tm); err != nil {
				errs <- fmt.Errorf("UpdateTemplate(%s): %w", id, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	var ids, names []string
	for i := range n {
		ids = append(ids, fmt.Sprintf("s-%02d", i))
		names = append(names, fmt.Sprintf("s-%02d", i))
	}
	names = append(names, "shared")
	list := wantSessionIDs(t, st, ids...)
	for _, sess := range list {
		if sess.State != "stopping" {
			t.Errorf("session %s state = %q, want %q", sess.ID, sess.State, "stopping")
		}
	}
	wantImageNames(t, st, names...)
	for _, tm := range wantTemplateNames(t, st, ids...) {
		if tm.State != "failed" {
			t.Errorf("template %s state = %q, want %q", tm.Name, tm.State, "failed")
		}
	}
}

// A call whose context is already done fails with ctx's error and changes
// nothing.
func (s *suite) doneContext(t *testing.T) {
	st := s.fresh(t)
	mustCreate(t, st, fullSession("there"))
	mustPut(t, st, fullImage("there"))
	mustCreateTemplate(t, st, fullTemplate("there"))

	ctx, check := canceled(t)
	check("CreateSession", st.CreateSession(ctx, ptr(fullSession("new"))))
	changed := fullSession("there")
	changed.State = "failed"
	check("UpdateSession", st.UpdateSession(ctx, &changed))
	check("DeleteSession", st.DeleteSession(ctx, "there"))
	_, err := st.GetSession(ctx, "there")
	check("GetSession", err)
	_, err = st.ListSessions(ctx)
	check("ListSessions", err)
	check("PutImage", st.PutImage(ctx, fullImage("new")))
	check("DeleteImage", st.DeleteImage(ctx, "there"))
	_, err = st.GetImage(ctx, "there")
	check("GetImage", err)
	_, err = st.ListImages(ctx)
	check("ListImages", err)
	check("CreateTemplate", st.CreateTemplate(ctx, ptr(fullTemplate("new"))))
	changedTemplate := fullTemplate("there")
	changedTemplate.State = "failed"
	check("UpdateTemplate", st.UpdateTemplate(ctx, &changedTemplate))
	check("DeleteTemplate", st.DeleteTemplate(ctx, "there"))
	_, err = st.GetTemplate(ctx, "there")
	check("GetTemplate", err)
	_, err = st.ListTemplates(ctx)
	check("ListTemplates", err)

	wantSessionIDs(t, st, "there")
	wantSession(t, st, fullSession("there"))
	wantImageNames(t, st, "there")
	wantTemplateNames(t, st, "there")
	wantTemplate(t, st, fullTemplate("there"))
}

// Everything written before Close is there after reopening the same store.
func (s *suite) persistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	st := s.open(t, dir)
	if st == nil {
		t.Fatal("open returned a nil store")
	}
	a, b := fullSession("a"), fullSession("b")
	b.CreatedAt = a.CreatedAt.Add(-time.Second)
	b.Env, b.Handle, b.Snapshot = nil, nil, nil
	b.IdleTimeout, b.NoAutoWake, b.Template = 0, false, ""
	deleted := fullSession("deleted")
	updated := fullSession("updated")
	updated.Gen = 1 // as created below
	for _, sess := range []store.Session{a, b, deleted, updated} {
		if err := st.CreateSession(t.Context(), &sess); err != nil {
			st.Close()
			t.Fatalf("CreateSession(%s): %v", sess.ID, err)
		}
	}
	updated.State = "failed"
	updated.Error = "boom"
	im := fullImage("tiny")
	tmpl := fullTemplate("py")
	zeroTmpl := store.Template{Name: "zero"}
	changedTmpl := fullTemplate("changed")
	steps := []error{
		st.UpdateSession(t.Context(), &updated),
		st.DeleteSession(t.Context(), "deleted"),
		st.PutImage(t.Context(), im),
		st.PutImage(t.Context(), fullImage("gone")),
		st.DeleteImage(t.Context(), "gone"),
		st.CreateTemplate(t.Context(), &tmpl),
		st.CreateTemplate(t.Context(), &zeroTmpl),
		st.CreateTemplate(t.Context(), &changedTmpl),
		st.CreateTemplate(t.Context(), ptr(fullTemplate("gone"))),
		st.DeleteTemplate(t.Context(), "gone"),
	}
	changedTmpl.Setup = []string{"only"}
	changedTmpl.Snapshot = nil
	steps = append(steps, st.UpdateTemplate(t.Context(), &changedTmpl))
	closeAfterWrites(t, st, steps)

	st = s.openIn(t, dir)
	wantSessionIDs(t, st, "b", "a", "updated")
	wantSession(t, st, a)
	wantSession(t, st, b)
	wantSession(t, st, updated)
	wantImageNames(t, st, "tiny")
	wantImage(t, st, im)
	wantTemplateNames(t, st, "changed", "py", "zero")
	wantTemplate(t, st, tmpl)
	wantTemplate(t, st, zeroTmpl)
	wantTemplate(t, st, changedTmpl)

	// The reopened store takes writes.
	mustCreate(t, st, fullSession("after"))
	if err := st.CreateSession(t.Context(), &a); !errors.Is(err, store.ErrExists) {
		t.Errorf("CreateSession(existing after reopen) = %v, want ErrExists", err)
	}
	mustCreateTemplate(t, st, fullTemplate("after"))
	if err := st.CreateTemplate(t.Context(), &tmpl); !errors.Is(err, store.ErrExists) {
		t.Errorf("CreateTemplate(existing after reopen) = %v, want ErrExists", err)
	}
}

// ptr is a pointer to a copy of v.
func ptr[T any](v T) *T { return &v }
