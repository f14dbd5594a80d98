package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/cove-dev/cove/internal/store"
)

// runSecrets checks the sealed secrets of users, teams and templates.
func (s *suite) runSecrets(t *testing.T) {
	s.run(t, "SecretRoundTrip", s.secretRoundTrip)
	s.run(t, "SecretReplaceKeepsCreatedAt", s.secretReplaceKeepsCreatedAt)
	s.run(t, "SecretKeyIsOwnerKindOwnerName", s.secretKeyIsOwnerKindOwnerName)
	s.run(t, "SecretBadKey", s.secretBadKey)
	s.run(t, "ListSecretsFilters", s.listSecretsFilters)
	s.run(t, "DeleteSecret", s.deleteSecret)
	s.run(t, "SecretsGoWithTheirOwner", s.secretsGoWithTheirOwner)
	s.run(t, "SecretCopiesInAndOut", s.secretCopiesInAndOut)
	s.run(t, "ConcurrentSecretWriters", s.concurrentSecretWriters)
	s.run(t, "SecretDoneContext", s.secretDoneContext)
	s.run(t, "SecretsPersistAcrossReopen", s.secretsPersistAcrossReopen)
}

// fullSecret has every field set to a value that is not the zero value;
// Sealed holds bytes that are not UTF-8 and a NUL, as ciphertext does.
func fullSecret(kind, owner, name string) store.Secret {
	return store.Secret{
		Name:      name,
		OwnerKind: kind,
		Owner:     owner,
		Hosts:     []string{"github.com", "*.githubusercontent.com", "api.github.com"},
		Header:    "Authorization: Bearer {{value}}",
		Sealed:    []byte("\x01sealed\x00\xff\xfe-" + kind + "/" + owner + "/" + name),
		CreatedAt: at(20),
		UpdatedAt: at(21).Add(7),
	}
}

func diffSecret(got, want store.Secret) []string {
	var d diffs
	d.str("Name", got.Name, want.Name)
	d.str("OwnerKind", got.OwnerKind, want.OwnerKind)
	d.str("Owner", got.Owner, want.Owner)
	if !slices.Equal(got.Hosts, want.Hosts) {
		d = append(d, fmt.Sprintf("Hosts = %q, want %q", got.Hosts, want.Hosts))
	}
	d.str("Header", got.Header, want.Header)
	d.bytes("Sealed", got.Sealed, want.Sealed)
	d = append(d, checkTime("CreatedAt", got.CreatedAt, want.CreatedAt)...)
	d = append(d, checkTime("UpdatedAt", got.UpdatedAt, want.UpdatedAt)...)
	return d
}

func mustPutSecret(t *testing.T, st store.Store, sec store.Secret) {
	t.Helper()
	if err := st.PutSecret(t.Context(), sec); err != nil {
		t.Fatalf("PutSecret(%s %s/%s): %v", sec.OwnerKind, sec.Owner, sec.Name, err)
	}
}

func wantSecret(t *testing.T, st store.Store, want store.Secret) {
	t.Helper()
	got, err := st.GetSecret(t.Context(), want.OwnerKind, want.Owner, want.Name)
	if err != nil {
		t.Fatalf("GetSecret(%s %s/%s): %v", want.OwnerKind, want.Owner, want.Name, err)
	}
	for _, d := range diffSecret(got, want) {
		t.Errorf("GetSecret(%s %s/%s): %s", want.OwnerKind, want.Owner, want.Name, d)
	}
}

func wantNoSecret(t *testing.T, st store.Store, kind, owner, name string) {
	t.Helper()
	if _, err := st.GetSecret(t.Context(), kind, owner, name); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetSecret(%s %s/%s) = %v, want ErrNotFound", kind, owner, name, err)
	}
}

// wantSecretKeys lists (kind, owner) and checks the keys, in order, as
// "kind owner/name".
func wantSecretKeys(t *testing.T, st store.Store, kind, owner string, want ...string) []store.Secret {
	t.Helper()
	list, err := st.ListSecrets(t.Context(), kind, owner)
	if err != nil {
		t.Fatalf("ListSecrets(%q, %q): %v", kind, owner, err)
	}
	if list == nil {
		t.Errorf("ListSecrets(%q, %q) returned nil, want a slice", kind, owner)
	}
	got := []string{}
	for _, sec := range list {
		got = append(got, sec.OwnerKind+" "+sec.Owner+"/"+sec.Name)
	}
	if want == nil {
		want = []string{}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ListSecrets(%q, %q) = %q, want %q", kind, owner, got, want)
	}
	return list
}

// A secret of each owner kind round-trips, by get and by list, and so
// does one with no hosts and no sealed bytes.
func (s *suite) secretRoundTrip(t *testing.T) {
	st := s.fresh(t)
	user := fullSecret(store.SecretOwnerUser, "u-1", "github")
	team := fullSecret(store.SecretOwnerTeam, "platform", "npm")
	tmpl := fullSecret(store.SecretOwnerTemplate, "go-dev", "proxy")
	bare := store.Secret{Name: "bare", OwnerKind: store.SecretOwnerUser, Owner: "u-1", Header: "X: {{value}}"}
	for _, sec := range []store.Secret{user, team, tmpl, bare} {
		mustPutSecret(t, st, sec)
		wantSecret(t, st, sec)
	}
	list := wantSecretKeys(t, st, "", "", "team platform/npm", "template go-dev/proxy", "user u-1/bare", "user u-1/github")
	for i, want := range []store.Secret{team, tmpl, bare, user} {
		for _, d := range diffSecret(list[i], want) {
			t.Errorf("ListSecrets[%d]: %s", i, d)
		}
	}
}

// A second put replaces every field but CreatedAt, which says when the
// secret was first set.
func (s *suite) secretReplaceKeepsCreatedAt(t *testing.T) {
	st := s.fresh(t)
	first := fullSecret(store.SecretOwnerUser, "u-1", "github")
	mustPutSecret(t, st, first)
	second := store.Secret{
		Name: "github", OwnerKind: store.SecretOwnerUser, Owner: "u-1",
		Hosts:     []string{"gitlab.example"},
		Header:    "PRIVATE-TOKEN: {{value}}",
		Sealed:    []byte("other ciphertext"),
		CreatedAt: at(40), // ignored: the secret exists
		UpdatedAt: at(41),
	}
	mustPutSecret(t, st, second)
	want := second
	want.CreatedAt = first.CreatedAt
	wantSecret(t, st, want)
	wantSecretKeys(t, st, "", "", "user u-1/github")
}

// Secrets are keyed by owner kind, owner and name together: the same name
// under another owner, or the same owner string of another kind, is
// another secret.
func (s *suite) secretKeyIsOwnerKindOwnerName(t *testing.T) {
	st := s.fresh(t)
	a := fullSecret(store.SecretOwnerUser, "x", "github")
	b := fullSecret(store.SecretOwnerTeam, "x", "github")
	c := fullSecret(store.SecretOwnerUser, "y", "github")
	d := fullSecret(store.SecretOwnerUser, "x", "gitlab")
	for _, sec := range []store.Secret{a, b, c, d} {
		mustPutSecret(t, st, sec)
	}
	for _, sec := range []store.Secret{a, b, c, d} {
		wantSecret(t, st, sec)
	}
	wantNoSecret(t, st, store.SecretOwnerTemplate, "x", "github")
}

// A put with an unknown owner kind, or without owner or name, fails and
// stores nothing.
func (s *suite) secretBadKey(t *testing.T) {
	st := s.fresh(t)
	for _, sec := range []store.Secret{
		fullSecret("", "u-1", "github"),
		fullSecret("group", "u-1", "github"),
		fullSecret(store.SecretOwnerUser, "", "github"),
		fullSecret(store.SecretOwnerUser, "u-1", ""),
	} {
		if err := st.PutSecret(t.Context(), sec); err == nil {
			t.Errorf("PutSecret(%q %q/%q) = nil, want an error", sec.OwnerKind, sec.Owner, sec.Name)
		}
	}
	wantSecretKeys(t, st, "", "")
	if _, err := st.ListSecrets(t.Context(), "", "u-1"); err == nil {
		t.Error("ListSecrets(no kind, an owner) = nil error, want one")
	}
}

// ListSecrets gives one owner's, one kind's or every secret, ordered by
// kind, owner and name.
func (s *suite) listSecretsFilters(t *testing.T) {
	st := s.fresh(t)
	for _, k := range [][3]string{
		{store.SecretOwnerUser, "u-2", "b"},
		{store.SecretOwnerUser, "u-1", "z"},
		{store.SecretOwnerUser, "u-1", "a"},
		{store.SecretOwnerTeam, "platform", "a"},
		{store.SecretOwnerTemplate, "go-dev", "a"},
	} {
		mustPutSecret(t, st, fullSecret(k[0], k[1], k[2]))
	}
	wantSecretKeys(t, st, "", "", "team platform/a", "template go-dev/a", "user u-1/a", "user u-1/z", "user u-2/b")
	wantSecretKeys(t, st, store.SecretOwnerUser, "", "user u-1/a", "user u-1/z", "user u-2/b")
	wantSecretKeys(t, st, store.SecretOwnerUser, "u-1", "user u-1/a", "user u-1/z")
	wantSecretKeys(t, st, store.SecretOwnerTeam, "platform", "team platform/a")
	wantSecretKeys(t, st, store.SecretOwnerTeam, "u-1")
	wantSecretKeys(t, st, store.SecretOwnerTemplate, "nope")
}

// DeleteSecret removes one secret, and a missing one is ErrNotFound.
func (s *suite) deleteSecret(t *testing.T) {
	st := s.fresh(t)
	keep := fullSecret(store.SecretOwnerUser, "u-1", "keep")
	mustPutSecret(t, st, keep)
	mustPutSecret(t, st, fullSecret(store.SecretOwnerUser, "u-1", "drop"))
	if err := st.DeleteSecret(t.Context(), store.SecretOwnerUser, "u-1", "drop"); err != nil {
		t.Fatalf("DeleteSecret: %v", err)
	}
	wantNoSecret(t, st, store.SecretOwnerUser, "u-1", "drop")
	wantSecret(t, st, keep)
	for _, k := range [][3]string{
		{store.SecretOwnerUser, "u-1", "drop"},
		{store.SecretOwnerTeam, "u-1", "keep"},
		{store.SecretOwnerUser, "u-2", "keep"},
	} {
		if err := st.DeleteSecret(t.Context(), k[0], k[1], k[2]); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("DeleteSecret(%q) = %v, want ErrNotFound", k, err)
		}
	}
	wantSecret(t, st, keep)
}

// DeleteUser removes the user's secrets and DeleteTemplate the
// template's, so that a later user or template of the same name gains
// none; others' stay, and a team's stay when its last member leaves.
func (s *suite) secretsGoWithTheirOwner(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, localUser("u-1", "alice"))
	mustPutUser(t, st, localUser("u-2", "bob"))
	mustAddTeam(t, st, "u-1", "platform")
	mustCreateTemplate(t, st, fullTemplate("go-dev"))
	mustCreateTemplate(t, st, fullTemplate("py"))
	for _, k := range [][3]string{
		{store.SecretOwnerUser, "u-1", "github"},
		{store.SecretOwnerUser, "u-2", "github"},
		{store.SecretOwnerTeam, "platform", "npm"},
		{store.SecretOwnerTemplate, "go-dev", "proxy"},
		{store.SecretOwnerTemplate, "py", "pypi"},
		// The same owner string, of other kinds: not the user's.
		{store.SecretOwnerTeam, "u-1", "x"},
		{store.SecretOwnerTemplate, "u-1", "x"},
		{store.SecretOwnerUser, "go-dev", "x"},
	} {
		mustPutSecret(t, st, fullSecret(k[0], k[1], k[2]))
	}
	if err := st.DeleteUser(t.Context(), "u-1", at(50)); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteTemplate(t.Context(), "go-dev"); err != nil {
		t.Fatal(err)
	}
	wantSecretKeys(t, st, "", "", "team platform/npm", "team u-1/x", "template py/pypi", "template u-1/x",
		"user go-dev/x", "user u-2/github")
}

// The store keeps its own copies of a secret's Hosts and Sealed, on the
// way in and on the way out.
func (s *suite) secretCopiesInAndOut(t *testing.T) {
	st := s.fresh(t)
	in := fullSecret(store.SecretOwnerUser, "u-1", "github")
	want := fullSecret(store.SecretOwnerUser, "u-1", "github")
	mustPutSecret(t, st, in)
	in.Hosts[0] = "evil.example"
	in.Sealed[1] = 'X'
	got, err := st.GetSecret(t.Context(), in.OwnerKind, in.Owner, in.Name)
	if err != nil {
		t.Fatal(err)
	}
	got.Hosts[0], got.Sealed[1] = "evil.example", 'X'
	list := wantSecretKeys(t, st, "", "", "user u-1/github")
	list[0].Hosts[0], list[0].Sealed[1] = "evil.example", 'X'
	wantSecret(t, st, want)
}

// Concurrent puts, of distinct secrets and of one, all succeed.
func (s *suite) concurrentSecretWriters(t *testing.T) {
	st := s.fresh(t)
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, 2*n)
	for i := range n {
		wg.Go(func() {
			errs[i] = st.PutSecret(t.Context(), fullSecret(store.SecretOwnerUser, "u-1", fmt.Sprintf("s%02d", i)))
		})
		wg.Go(func() {
			errs[n+i] = st.PutSecret(t.Context(), fullSecret(store.SecretOwnerTeam, "platform", "shared"))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	if list, err := st.ListSecrets(t.Context(), "", ""); err != nil || len(list) != n+1 {
		t.Errorf("ListSecrets after %d writers: %d secrets, %v; want %d", 2*n, len(list), err, n+1)
	}
}

// The secret methods, called with a done context, fail with ctx's error
// and change nothing.
func (s *suite) secretDoneContext(t *testing.T) {
	st := s.fresh(t)
	sec := fullSecret(store.SecretOwnerUser, "u-1", "github")
	mustPutSecret(t, st, sec)
	ctx, check := canceled(t)
	changed := sec
	changed.Header = "X-Other: {{value}}"
	check("PutSecret", st.PutSecret(ctx, changed))
	check("PutSecret(new)", st.PutSecret(ctx, fullSecret(store.SecretOwnerTeam, "t", "n")))
	_, err := st.GetSecret(ctx, sec.OwnerKind, sec.Owner, sec.Name)
	check("GetSecret", err)
	_, err = st.ListSecrets(ctx, "", "")
	check("ListSecrets", err)
	check("DeleteSecret", st.DeleteSecret(ctx, sec.OwnerKind, sec.Owner, sec.Name))
	wantSecretKeys(t, st, "", "", "user u-1/github")
	wantSecret(t, st, sec)
}

// Secrets written before Close are there after reopening, replaced and
// deleted ones as they were left.
func (s *suite) secretsPersistAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	st := s.open(t, dir)
	if st == nil {
		t.Fatal("open returned a nil store")
	}
	a := fullSecret(store.SecretOwnerUser, "u-1", "github")
	b := fullSecret(store.SecretOwnerTeam, "platform", "npm")
	b2 := b
	b2.Sealed, b2.UpdatedAt = []byte("re-sealed"), at(30)
	ctx := t.Context()
	closeAfterWrites(t, st, []error{
		st.PutSecret(ctx, a),
		st.PutSecret(ctx, b),
		st.PutSecret(ctx, b2),
		st.PutSecret(ctx, fullSecret(store.SecretOwnerTemplate, "go-dev", "gone")),
		st.DeleteSecret(ctx, store.SecretOwnerTemplate, "go-dev", "gone"),
	})
	st = s.openIn(t, dir)
	wantSecretKeys(t, st, "", "", "team platform/npm", "user u-1/github")
	wantSecret(t, st, a)
	wantSecret(t, st, b2)
}
