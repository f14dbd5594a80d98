package secret

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// resolveEnv is a real SQLite store with users alice (teams platform and
// data) and bob (no team), template go-dev, and a Keeper and Resolver
// over one Box.
type resolveEnv struct {
	st     *sqlite.Store
	keeper *Keeper
	res    *Resolver
}

func newResolveEnv(t *testing.T) *resolveEnv {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := t.Context()
	for _, u := range []store.User{{ID: "u_alice", Name: "alice", Kind: store.UserEngineer}, {ID: "u_bob", Name: "bob", Kind: store.UserEngineer}} {
		if err := st.PutUser(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	for _, team := range []string{"platform", "data"} {
		if err := st.AddTeamMember(ctx, "u_alice", team); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CreateTemplate(ctx, &store.Template{Name: "go-dev", State: "ready", Owner: "u_bob"}); err != nil {
		t.Fatal(err)
	}
	box := newBox(t)
	clock := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	return &resolveEnv{st: st, keeper: &Keeper{Store: st, Box: box, Now: func() time.Time { return clock }},
		res: &Resolver{Store: st, Box: box}}
}

// put sets a secret through the Keeper, as the API does.
func (e *resolveEnv) put(t *testing.T, name, value, header string, owner api.SecretOwner, hosts ...string) {
	t.Helper()
	_, err := e.keeper.Put(t.Context(), name, api.PutSecretRequest{Value: value, Hosts: hosts, Header: header,
		User: owner.User, Team: owner.Team, Template: owner.Template})
	if err != nil {
		t.Fatalf("put %s: %v", name, err)
	}
}

// describe lists plains as "OWNER/NAME HOSTS HEADER: VALUE", in order.
func describe(ps []Plain) []string {
	var out []string
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%s %s/%s %s %s: %s", p.OwnerKind, p.Owner, p.Name, strings.Join(p.Hosts, ","), p.Header, p.Value))
	}
	return out
}

// TestResolverPrecedence: a session's owner gets its own secrets, its
// teams' and its template's, the owner's first; by name the owner's win
// over a team's and a team's over the template's; for one header and
// host the earlier secret keeps it; another user's never come.
func TestResolverPrecedence(t *testing.T) {
	e := newResolveEnv(t)
	alice, bob := api.SecretOwner{User: "alice"}, api.SecretOwner{User: "bob"}
	platform, data, tmpl := api.SecretOwner{Team: "platform"}, api.SecretOwner{Team: "data"}, api.SecretOwner{Template: "go-dev"}
	auth := "Authorization: Bearer {{value}}"

	e.put(t, "github", "alice-gh", auth, alice, "github.com", "api.github.com")
	e.put(t, "github", "platform-gh", auth, platform, "github.com", "*.githubusercontent.com")
	e.put(t, "github", "tmpl-gh", auth, tmpl, "github.com")
	e.put(t, "npm", "platform-npm", "Authorization: Bearer {{value}}", platform, "registry.npmjs.org")
	e.put(t, "npm", "data-npm", "Authorization: Bearer {{value}}", data, "registry.npmjs.org")
	// Another name, the same header for a host alice's github has: that
	// host goes to alice's; its other host stays.
	e.put(t, "gh-ci", "data-gh", auth, data, "api.github.com", "uploads.github.com")
	// Another header for the same host: both go.
	e.put(t, "pypi", "tmpl-pypi", "X-Pypi-Token: {{value}}", tmpl, "github.com", "pypi.org")
	// All of its hosts taken by earlier secrets for its header: left out.
	e.put(t, "shadowed", "tmpl-shadow", auth, tmpl, "api.github.com")
	e.put(t, "github", "bob-gh", auth, bob, "github.com")

	got, err := e.res.For(t.Context(), "u_alice", "go-dev")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"user u_alice/github github.com,api.github.com Authorization: Bearer alice-gh",
		"team data/gh-ci uploads.github.com Authorization: Bearer data-gh",
		"team data/npm registry.npmjs.org Authorization: Bearer data-npm",
		"template go-dev/pypi github.com,pypi.org X-Pypi-Token: tmpl-pypi",
	}
	if d := describe(got); !slices.Equal(d, want) {
		t.Errorf("For(alice, go-dev) =\n%s\nwant\n%s", strings.Join(d, "\n"), strings.Join(want, "\n"))
	}

	// Without the template, and for bob (no team) with it.
	got, _ = e.res.For(t.Context(), "u_alice", "")
	if d := describe(got); len(d) != 3 || slices.ContainsFunc(d, func(s string) bool { return strings.HasPrefix(s, "template") }) {
		t.Errorf("For(alice, no template) = %q", d)
	}
	got, _ = e.res.For(t.Context(), "u_bob", "go-dev")
	want = []string{
		"user u_bob/github github.com Authorization: Bearer bob-gh",
		"template go-dev/pypi github.com,pypi.org X-Pypi-Token: tmpl-pypi",
		"template go-dev/shadowed api.github.com Authorization: Bearer tmpl-shadow",
	}
	if d := describe(got); !slices.Equal(d, want) {
		t.Errorf("For(bob, go-dev) =\n%s\nwant\n%s", strings.Join(d, "\n"), strings.Join(want, "\n"))
	}
	// A user with none, no template: none.
	if got, err := e.res.For(t.Context(), "u_nobody", ""); err != nil || len(got) != 0 {
		t.Errorf("For(nobody) = %q, %v", describe(got), err)
	}
	// The template's alone (a session of no user).
	got, _ = e.res.For(t.Context(), "", "go-dev")
	if d := describe(got); len(d) != 3 || !strings.Contains(d[0], "tmpl-gh") {
		t.Errorf("For(no user, go-dev) = %q", d)
	}
}

// TestResolverOpenErrors: a secret that does not open (its ciphertext
// moved onto another record, or sealed under another key) is an error
// naming it, never holding a value; a secret left out by precedence is
// not opened, so its being broken changes nothing.
func TestResolverOpenErrors(t *testing.T) {
	e := newResolveEnv(t)
	e.put(t, "github", "VALUE-OF-ALICE", "Authorization: Bearer {{value}}", api.SecretOwner{User: "alice"}, "github.com")
	e.put(t, "npm", "VALUE-OF-BOB", "Authorization: Bearer {{value}}", api.SecretOwner{User: "bob"}, "registry.npmjs.org")

	// Positive control: it opens as it is.
	if got, err := e.res.For(t.Context(), "u_alice", ""); err != nil || len(got) != 1 {
		t.Fatalf("For(alice) = %q, %v", describe(got), err)
	}

	// Bob's ciphertext copied onto a secret of alice's.
	bobs, err := e.st.GetSecret(t.Context(), store.SecretOwnerUser, "u_bob", "npm")
	if err != nil {
		t.Fatal(err)
	}
	moved := bobs
	moved.Owner, moved.Name = "u_alice", "stolen"
	if err := e.st.PutSecret(t.Context(), moved); err != nil {
		t.Fatal(err)
	}
	_, err = e.res.For(t.Context(), "u_alice", "")
	if err == nil || !strings.Contains(err.Error(), "secret stolen of user u_alice") ||
		!strings.Contains(err.Error(), "sealed for another record") || strings.Contains(err.Error(), "VALUE-OF") {
		t.Errorf("For with a moved ciphertext = %v", err)
	}
	if err := e.st.DeleteSecret(t.Context(), store.SecretOwnerUser, "u_alice", "stolen"); err != nil {
		t.Fatal(err)
	}

	// Check tells the same at start, for every secret.
	if n, err := e.res.Check(t.Context()); err != nil || n != 2 {
		t.Errorf("Check with the right key = %d, %v; want 2, nil", n, err)
	}
	other := &Resolver{Store: e.st, Box: newBox(t)}
	if n, err := other.Check(t.Context()); n != 2 || err == nil || !strings.HasPrefix(err.Error(), "2 of 2 secrets do not open: secret github of user u_alice") ||
		!strings.Contains(err.Error(), "wrong key?") || strings.Contains(err.Error(), "VALUE-OF") {
		t.Errorf("Check under another key = %d, %v", n, err)
	}

	// Another key: every secret is refused, saying wrong key.
	if _, err := other.For(t.Context(), "u_alice", ""); err == nil || !strings.Contains(err.Error(), "wrong key?") ||
		!strings.Contains(err.Error(), "github") || strings.Contains(err.Error(), "VALUE-OF") {
		t.Errorf("For under another key = %v", err)
	}

	// A broken secret that precedence leaves out is not opened.
	if err := e.st.AddTeamMember(t.Context(), "u_bob", "platform"); err != nil {
		t.Fatal(err)
	}
	broken := store.Secret{Name: "npm", OwnerKind: store.SecretOwnerTeam, Owner: "platform", Hosts: []string{"registry.npmjs.org"},
		Header: "Authorization: Bearer {{value}}", Sealed: []byte("garbage")}
	if err := e.st.PutSecret(t.Context(), broken); err != nil {
		t.Fatal(err)
	}
	if got, err := e.res.For(t.Context(), "u_bob", ""); err != nil || len(got) != 1 || got[0].Value != "Bearer VALUE-OF-BOB" {
		t.Errorf("For(bob) with a shadowed broken team secret = %q, %v", describe(got), err)
	}
	// Positive control: alice, whose own npm does not shadow it, meets it.
	if err := e.st.AddTeamMember(t.Context(), "u_alice", "platform"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.res.For(t.Context(), "u_alice", ""); err == nil || !strings.Contains(err.Error(), "secret npm of team platform") {
		t.Errorf("For(alice) with a broken team secret = %v", err)
	}
}

// TestPlainRedacts: a Plain printed with fmt or logged with slog shows no
// value.
func TestPlainRedacts(t *testing.T) {
	p := Plain{Name: "github", OwnerKind: "user", Owner: "u_a", Hosts: []string{"github.com"}, Header: "Authorization", Value: "Bearer TOPSECRET"}
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "cred", p, "list", []Plain{p})
	slog.New(slog.NewJSONHandler(&b, nil)).Info("x", "cred", p)
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%v %+v %#v %s", p, p, p, p), fmt.Sprintf("%v", []Plain{p}), b.String()} {
		if strings.Contains(s, "TOPSECRET") {
			t.Errorf("printed: %s", s)
		}
		if !strings.Contains(s, "github") {
			t.Errorf("printed without the name: %s", s)
		}
	}
	r := api.PutSecretRequest{Value: "TOPSECRET", Hosts: []string{"github.com"}, Header: "Authorization: Bearer {{value}}"}
	b.Reset()
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "req", r)
	for _, s := range []string{fmt.Sprintf("%v %+v %#v %s", r, r, r, r), b.String()} {
		if strings.Contains(s, "TOPSECRET") || !strings.Contains(s, "github.com") {
			t.Errorf("printed: %s", s)
		}
	}
}
