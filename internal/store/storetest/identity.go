package storetest

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// runIdentity checks users, team memberships and API tokens.
func (s *suite) runIdentity(t *testing.T) {
	s.run(t, "UserRoundTrip", s.userRoundTrip)
	s.run(t, "UserReplace", s.userReplace)
	s.run(t, "UserDuplicate", s.userDuplicate)
	s.run(t, "UserHalfAnOIDCIdentity", s.userHalfAnOIDCIdentity)
	s.run(t, "UserMissing", s.userMissing)
	s.run(t, "ConcurrentUsersOfOneName", s.concurrentUsersOfOneName)
	s.run(t, "TeamMembers", s.teamMembers)
	s.run(t, "DeleteUserRevokesItsTokens", s.deleteUserRevokesItsTokens)
	s.run(t, "RemovedUsers", s.removedUsers)
	s.run(t, "TokenRoundTrip", s.tokenRoundTrip)
	s.run(t, "TokenDuplicate", s.tokenDuplicate)
	s.run(t, "TokenOfMissingUser", s.tokenOfMissingUser)
	s.run(t, "TokenBadTime", s.tokenBadTime)
	s.run(t, "RevokedAndExpiredTokensAreFound", s.revokedAndExpiredTokensAreFound)
	s.run(t, "ListTokensOrder", s.listTokensOrder)
	s.run(t, "RevokeToken", s.revokeToken)
	s.run(t, "TouchToken", s.touchToken)
	s.run(t, "TokenCopiesInAndOut", s.tokenCopiesInAndOut)
	s.run(t, "IdentityDoneContext", s.identityDoneContext)
	s.run(t, "IdentityPersistsAcrossReopen", s.identityPersistsAcrossReopen)
}

// fullUser is an OIDC user with every field set.
func fullUser(id, name string) store.User {
	return store.User{
		ID:        id,
		Name:      name,
		Kind:      store.UserEngineer,
		Issuer:    "https://idp.example/realms/ünï",
		Subject:   "sub-" + id,
		CreatedAt: at(7),
	}
}

// localUser is a user without an OIDC identity.
func localUser(id, name string) store.User {
	return store.User{ID: id, Name: name, Kind: store.UserService, CreatedAt: at(8)}
}

// hashOf is the hash of a made-up secret.
func hashOf(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// fullToken has every field set to a value that is not the zero value.
func fullToken(id, userID string) store.Token {
	return store.Token{
		ID:         id,
		Name:       "ci ☃ " + id,
		UserID:     userID,
		Hash:       hashOf("cove_secret-of-" + id),
		Scopes:     []string{"session:read", "", "template:*"},
		CreatedAt:  at(9),
		ExpiresAt:  at(9).Add(30 * 24 * time.Hour).Add(time.Nanosecond),
		RevokedAt:  at(10),
		LastUsedAt: at(11).Add(3 * time.Nanosecond),
	}
}

// liveToken is a token that is neither revoked nor expired nor used.
func liveToken(id, userID string) store.Token {
	tok := fullToken(id, userID)
	tok.ExpiresAt, tok.RevokedAt, tok.LastUsedAt = time.Time{}, time.Time{}, time.Time{}
	return tok
}

func diffUser(got, want store.User) []string {
	var d diffs
	d.str("ID", got.ID, want.ID)
	d.str("Name", got.Name, want.Name)
	d.str("Kind", got.Kind, want.Kind)
	d.str("Issuer", got.Issuer, want.Issuer)
	d.str("Subject", got.Subject, want.Subject)
	d = append(d, checkTime("CreatedAt", got.CreatedAt, want.CreatedAt)...)
	return d
}

func diffToken(got, want store.Token) []string {
	var d diffs
	d.str("ID", got.ID, want.ID)
	d.str("Name", got.Name, want.Name)
	d.str("UserID", got.UserID, want.UserID)
	d.bytes("Hash", got.Hash[:], want.Hash[:])
	if !slices.Equal(got.Scopes, want.Scopes) {
		d = append(d, fmt.Sprintf("Scopes = %q, want %q", got.Scopes, want.Scopes))
	}
	d = append(d, checkTime("CreatedAt", got.CreatedAt, want.CreatedAt)...)
	d = append(d, checkTime("ExpiresAt", got.ExpiresAt, want.ExpiresAt)...)
	d = append(d, checkTime("RevokedAt", got.RevokedAt, want.RevokedAt)...)
	d = append(d, checkTime("LastUsedAt", got.LastUsedAt, want.LastUsedAt)...)
	return d
}

func mustPutUser(t *testing.T, st store.Store, u store.User) {
	t.Helper()
	if err := st.PutUser(t.Context(), u); err != nil {
		t.Fatalf("PutUser(%s): %v", u.ID, err)
	}
}

func mustPutToken(t *testing.T, st store.Store, tok store.Token) {
	t.Helper()
	if err := st.PutToken(t.Context(), tok); err != nil {
		t.Fatalf("PutToken(%s): %v", tok.ID, err)
	}
}

func mustAddTeam(t *testing.T, st store.Store, userID, team string) {
	t.Helper()
	if err := st.AddTeamMember(t.Context(), userID, team); err != nil {
		t.Fatalf("AddTeamMember(%s, %s): %v", userID, team, err)
	}
}

// wantUser checks the user by all three lookups that apply to it.
func wantUser(t *testing.T, st store.Store, want store.User) {
	t.Helper()
	got, err := st.GetUser(t.Context(), want.ID)
	if err != nil {
		t.Fatalf("GetUser(%s): %v", want.ID, err)
	}
	for _, d := range diffUser(got, want) {
		t.Errorf("GetUser(%s): %s", want.ID, d)
	}
	got, err = st.GetUserByName(t.Context(), want.Name)
	if err != nil {
		t.Fatalf("GetUserByName(%s): %v", want.Name, err)
	}
	for _, d := range diffUser(got, want) {
		t.Errorf("GetUserByName(%s): %s", want.Name, d)
	}
	if want.Issuer == "" {
		return
	}
	got, err = st.GetUserBySubject(t.Context(), want.Issuer, want.Subject)
	if err != nil {
		t.Fatalf("GetUserBySubject(%s, %s): %v", want.Issuer, want.Subject, err)
	}
	for _, d := range diffUser(got, want) {
		t.Errorf("GetUserBySubject(%s): %s", want.Subject, d)
	}
}

func wantUserNames(t *testing.T, st store.Store, want ...string) []store.User {
	t.Helper()
	list, err := st.ListUsers(t.Context())
	if err != nil {
		t.Fatalf("ListUsers: %v", err)
	}
	if list == nil {
		t.Error("ListUsers returned nil, want a slice")
	}
	var got []string
	for _, u := range list {
		got = append(got, u.Name)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ListUsers names = %q, want %q", got, want)
	}
	return list
}

func wantTeams(t *testing.T, st store.Store, userID string, want ...string) {
	t.Helper()
	got, err := st.TeamsOf(t.Context(), userID)
	if err != nil {
		t.Fatalf("TeamsOf(%s): %v", userID, err)
	}
	if got == nil || !slices.Equal(got, want) {
		t.Errorf("TeamsOf(%s) = %#v, want %q", userID, got, want)
	}
}

// wantToken checks the token by id and by hash.
func wantToken(t *testing.T, st store.Store, want store.Token) {
	t.Helper()
	got, err := st.GetToken(t.Context(), want.ID)
	if err != nil {
		t.Fatalf("GetToken(%s): %v", want.ID, err)
	}
	for _, d := range diffToken(got, want) {
		t.Errorf("GetToken(%s): %s", want.ID, d)
	}
	got, err = st.GetTokenByHash(t.Context(), want.Hash)
	if err != nil {
		t.Fatalf("GetTokenByHash(hash of %s): %v", want.ID, err)
	}
	for _, d := range diffToken(got, want) {
		t.Errorf("GetTokenByHash(hash of %s): %s", want.ID, d)
	}
}

func wantTokenIDs(t *testing.T, st store.Store, userID string, want ...string) []store.Token {
	t.Helper()
	list, err := st.ListTokens(t.Context(), userID)
	if err != nil {
		t.Fatalf("ListTokens(%q): %v", userID, err)
	}
	if list == nil {
		t.Errorf("ListTokens(%q) returned nil, want a slice", userID)
	}
	var got []string
	for _, tok := range list {
		got = append(got, tok.ID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ListTokens(%q) IDs = %q, want %q", userID, got, want)
	}
	return list
}

// Users, OIDC and local, round-trip by id, name and subject, and list
// sorted by name.
func (s *suite) userRoundTrip(t *testing.T) {
	st := s.fresh(t)
	wantUserNames(t, st)
	oidc := fullUser("u-1", "zoë@example.com")
	local := localUser("u-2", "ci-bot")
	admin := store.User{ID: "u-3", Name: "Admin", Kind: store.UserAdmin} // zero time
	for _, u := range []store.User{oidc, local, admin} {
		mustPutUser(t, st, u)
	}
	wantUser(t, st, oidc)
	wantUser(t, st, local)
	wantUser(t, st, admin)
	list := wantUserNames(t, st, "Admin", "ci-bot", "zoë@example.com")
	for _, d := range diffUser(list[2], oidc) {
		t.Errorf("ListUsers[2]: %s", d)
	}
	// An empty subject finds no local user.
	if _, err := st.GetUserBySubject(t.Context(), "", ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetUserBySubject(\"\", \"\") = %v, want ErrNotFound", err)
	}
}

// A second PutUser with the same ID replaces every field: a rename, a new
// kind, an OIDC identity gained or lost.
func (s *suite) userReplace(t *testing.T) {
	st := s.fresh(t)
	u := localUser("u-1", "alice")
	mustPutUser(t, st, u)
	changed := fullUser("u-1", "alice2")
	changed.Kind = store.UserAdmin
	mustPutUser(t, st, changed)
	wantUser(t, st, changed)
	if _, err := st.GetUserByName(t.Context(), "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetUserByName(old name) = %v, want ErrNotFound", err)
	}
	wantUserNames(t, st, "alice2")
	// And back to a local user: the subject no longer finds it.
	mustPutUser(t, st, u)
	wantUser(t, st, u)
	if _, err := st.GetUserBySubject(t.Context(), changed.Issuer, changed.Subject); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetUserBySubject(old identity) = %v, want ErrNotFound", err)
	}
}

// Another user with a taken name, or a taken issuer and subject, is
// refused with ErrExists, saying which, and changes nothing; the same
// subject at another issuer, and local users, do not clash.
func (s *suite) userDuplicate(t *testing.T) {
	st := s.fresh(t)
	alice := fullUser("u-1", "alice")
	mustPutUser(t, st, alice)
	mustPutUser(t, st, localUser("u-2", "bob"))
	mustPutUser(t, st, localUser("u-3", "carol")) // two local users: no clash

	sameName := localUser("u-9", "alice")
	err := st.PutUser(t.Context(), sameName)
	if !errors.Is(err, store.ErrExists) || !strings.Contains(err.Error(), `"alice"`) {
		t.Errorf("PutUser(another alice) = %v, want ErrExists naming %q", err, "alice")
	}
	sameSubject := fullUser("u-9", "alice-again")
	sameSubject.Subject = alice.Subject
	err = st.PutUser(t.Context(), sameSubject)
	if !errors.Is(err, store.ErrExists) || !strings.Contains(err.Error(), alice.Subject) {
		t.Errorf("PutUser(alice's subject) = %v, want ErrExists naming the subject", err)
	}
	// Renaming bob to alice is a clash too, and leaves bob as he was.
	if err := st.PutUser(t.Context(), localUser("u-2", "alice")); !errors.Is(err, store.ErrExists) {
		t.Errorf("PutUser(bob renamed alice) = %v, want ErrExists", err)
	}
	wantUserNames(t, st, "alice", "bob", "carol")
	wantUser(t, st, alice)
	wantUser(t, st, localUser("u-2", "bob"))
	if _, err := st.GetUser(t.Context(), "u-9"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetUser(refused) = %v, want ErrNotFound", err)
	}

	otherIssuer := fullUser("u-4", "alice-elsewhere")
	otherIssuer.Issuer, otherIssuer.Subject = "https://other.example", alice.Subject
	mustPutUser(t, st, otherIssuer)
	wantUser(t, st, otherIssuer)
	wantUser(t, st, alice)
}

// An issuer without a subject, or a subject without an issuer, is
// refused and changes nothing.
func (s *suite) userHalfAnOIDCIdentity(t *testing.T) {
	st := s.fresh(t)
	for _, u := range []store.User{
		{ID: "u-1", Name: "a", Kind: store.UserEngineer, Issuer: "https://idp.example"},
		{ID: "u-1", Name: "a", Kind: store.UserEngineer, Subject: "123"},
	} {
		if err := st.PutUser(t.Context(), u); err == nil {
			t.Errorf("PutUser(issuer %q, subject %q) succeeded", u.Issuer, u.Subject)
		}
	}
	wantUserNames(t, st)
}

// Missing users are ErrNotFound for every lookup and for DeleteUser.
func (s *suite) userMissing(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, fullUser("u-1", "alice"))
	if _, err := st.GetUser(t.Context(), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetUser(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetUserByName(t.Context(), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetUserByName(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetUserBySubject(t.Context(), "https://idp.example/realms/ünï", "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetUserBySubject(missing) = %v, want ErrNotFound", err)
	}
	if err := st.DeleteUser(t.Context(), "nope", at(20)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteUser(missing) = %v, want ErrNotFound", err)
	}
	wantUserNames(t, st, "alice")
}

// Of users of one name written at once, exactly one is stored; the others
// get ErrExists.
func (s *suite) concurrentUsersOfOneName(t *testing.T) {
	st := s.fresh(t)
	const n = 10
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = st.PutUser(t.Context(), localUser(fmt.Sprintf("u-%d", i), "same"))
		})
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, store.ErrExists):
			t.Errorf("PutUser #%d: %v, want nil or ErrExists", i, err)
		}
	}
	if won != 1 {
		t.Errorf("%d writers stored a user named %q, want 1", won, "same")
	}
	wantUserNames(t, st, "same")
}

// Memberships add (twice is harmless), list sorted, remove, and need a
// user; they go with the user.
func (s *suite) teamMembers(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, fullUser("u-1", "alice"))
	mustPutUser(t, st, localUser("u-2", "bob"))
	wantTeams(t, st, "u-1")
	for _, team := range []string{"platform", "Backend", "ünï", "platform"} {
		mustAddTeam(t, st, "u-1", team)
	}
	mustAddTeam(t, st, "u-2", "platform")
	wantTeams(t, st, "u-1", "Backend", "platform", "ünï")
	wantTeams(t, st, "u-2", "platform")

	if err := st.AddTeamMember(t.Context(), "nope", "platform"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AddTeamMember(missing user) = %v, want ErrNotFound", err)
	}
	wantTeams(t, st, "nope")
	if err := st.AddTeamMember(t.Context(), "u-1", ""); err == nil {
		t.Error("AddTeamMember(empty team) succeeded")
	}
	if err := st.RemoveTeamMember(t.Context(), "u-1", "platform"); err != nil {
		t.Fatalf("RemoveTeamMember: %v", err)
	}
	if err := st.RemoveTeamMember(t.Context(), "u-1", "platform"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second RemoveTeamMember = %v, want ErrNotFound", err)
	}
	if err := st.RemoveTeamMember(t.Context(), "u-1", "never"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RemoveTeamMember(not a member) = %v, want ErrNotFound", err)
	}
	wantTeams(t, st, "u-1", "Backend", "ünï")
	wantTeams(t, st, "u-2", "platform")

	// A user put again keeps its teams; a deleted one loses them, and a
	// new user of the same id starts with none.
	mustPutUser(t, st, localUser("u-1", "alice"))
	wantTeams(t, st, "u-1", "Backend", "ünï")
	if err := st.DeleteUser(t.Context(), "u-1", at(30)); err != nil {
		t.Fatalf("DeleteUser: %v", err)
	}
	wantTeams(t, st, "u-1")
	mustPutUser(t, st, localUser("u-1", "alice"))
	wantTeams(t, st, "u-1")
	wantTeams(t, st, "u-2", "platform")
}

// Deleting a user revokes, at the time given, each of its tokens not
// revoked yet; tokens revoked before keep their time, other users' tokens
// are untouched, and the tokens stay listed. A zero time is refused and
// changes nothing.
func (s *suite) deleteUserRevokesItsTokens(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, fullUser("u-1", "alice"))
	mustPutUser(t, st, localUser("u-2", "bob"))
	live1, live2 := liveToken("t-1", "u-1"), liveToken("t-2", "u-1")
	revoked := fullToken("t-3", "u-1")
	bobs := liveToken("t-4", "u-2")
	for _, tok := range []store.Token{live1, live2, revoked, bobs} {
		mustPutToken(t, st, tok)
	}

	if err := st.DeleteUser(t.Context(), "u-1", time.Time{}); err == nil {
		t.Error("DeleteUser with a zero time succeeded")
	}
	wantUser(t, st, fullUser("u-1", "alice"))
	wantToken(t, st, live1)

	when := at(40).Add(5 * time.Nanosecond)
	if err := st.DeleteUser(t.Context(), "u-1", when); err != nil {
		t.Fatalf("DeleteUser: %v", err)
	}
	if _, err := st.GetUser(t.Context(), "u-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetUser(deleted) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetUserByName(t.Context(), "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetUserByName(deleted) = %v, want ErrNotFound", err)
	}
	live1.RevokedAt, live2.RevokedAt = when, when
	wantToken(t, st, live1)
	wantToken(t, st, live2)
	wantToken(t, st, revoked)
	wantToken(t, st, bobs)
	wantTokenIDs(t, st, "u-1", "t-1", "t-2", "t-3")
	wantUserNames(t, st, "bob")
	if err := st.DeleteUser(t.Context(), "u-1", when); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteUser = %v, want ErrNotFound", err)
	}

	// A new user of the same name is a new id and holds none of them.
	mustPutUser(t, st, localUser("u-5", "alice"))
	wantTokenIDs(t, st, "u-5")
	// Nor can tokens be minted for the gone id.
	if err := st.PutToken(t.Context(), liveToken("t-6", "u-1")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PutToken(deleted user) = %v, want ErrNotFound", err)
	}
}

// wantRemoved checks the RemovedUser record of issuer and subject, by
// them and (when byName) as the last removed of its name.
func wantRemoved(t *testing.T, st store.Store, want store.RemovedUser, byName bool) {
	t.Helper()
	check := func(how string, got store.RemovedUser, err error) {
		t.Helper()
		if err != nil || got.Issuer != want.Issuer || got.Subject != want.Subject || got.ID != want.ID ||
			got.Name != want.Name || !got.RemovedAt.Equal(want.RemovedAt) || got.RemovedAt.Location() != time.UTC {
			t.Errorf("%s = %+v, %v; want %+v (in UTC)", how, got, err, want)
		}
	}
	got, err := st.GetRemovedUser(t.Context(), want.Issuer, want.Subject)
	check("GetRemovedUser", got, err)
	if byName {
		got, err = st.GetRemovedUserByName(t.Context(), want.Name)
		check("GetRemovedUserByName", got, err)
	}
}

// wantNotRemoved checks that issuer and subject have no RemovedUser record.
func wantNotRemoved(t *testing.T, st store.Store, issuer, subject string) {
	t.Helper()
	if r, err := st.GetRemovedUser(t.Context(), issuer, subject); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetRemovedUser(%q, %q) = %+v, %v; want ErrNotFound", issuer, subject, r, err)
	}
}

// Deleting an OIDC user leaves a RemovedUser record of its issuer and
// subject, id and name, at the time given; a local user, a failed delete
// and a missing user leave none. The last removed of a name is found by
// name. Putting a user with the issuer and subject back deletes their
// record (and no other); records survive a reopen.
func (s *suite) removedUsers(t *testing.T) {
	dir := t.TempDir()
	st := s.open(t, dir)
	alice, bob := fullUser("u-1", "alice"), localUser("u-2", "bob")
	mustPutUser(t, st, alice)
	mustPutUser(t, st, bob)
	wantNotRemoved(t, st, alice.Issuer, alice.Subject)
	if r, err := st.GetRemovedUserByName(t.Context(), "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetRemovedUserByName(never removed) = %+v, %v; want ErrNotFound", r, err)
	}

	if err := st.DeleteUser(t.Context(), "u-1", time.Time{}); err == nil {
		t.Error("DeleteUser with a zero time succeeded")
	}
	wantNotRemoved(t, st, alice.Issuer, alice.Subject)
	if err := st.DeleteUser(t.Context(), "u-9", at(70)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteUser(missing) = %v, want ErrNotFound", err)
	}

	when := at(71).Add(7)
	if err := st.DeleteUser(t.Context(), "u-1", when); err != nil {
		t.Fatalf("DeleteUser: %v", err)
	}
	first := store.RemovedUser{Issuer: alice.Issuer, Subject: alice.Subject, ID: "u-1", Name: "alice", RemovedAt: when}
	wantRemoved(t, st, first, true)
	if err := st.DeleteUser(t.Context(), "u-2", when); err != nil {
		t.Fatalf("DeleteUser(local): %v", err)
	}
	if r, err := st.GetRemovedUserByName(t.Context(), "bob"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetRemovedUserByName(a local user) = %+v, %v; want ErrNotFound", r, err)
	}

	// Another subject takes the name, and is removed later: the name
	// finds it; the first subject's record stays.
	other := fullUser("u-3", "alice")
	mustPutUser(t, st, other)
	if err := st.DeleteUser(t.Context(), "u-3", at(72)); err != nil {
		t.Fatalf("DeleteUser(u-3): %v", err)
	}
	second := store.RemovedUser{Issuer: other.Issuer, Subject: other.Subject, ID: "u-3", Name: "alice", RemovedAt: at(72)}
	wantRemoved(t, st, second, true)
	wantRemoved(t, st, first, false)

	// The first subject is put back under a new id: its record goes.
	back := fullUser("u-4", "alice")
	back.Subject = alice.Subject
	mustPutUser(t, st, back)
	wantNotRemoved(t, st, alice.Issuer, alice.Subject)
	wantRemoved(t, st, second, true)
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	st = s.openIn(t, dir)
	wantRemoved(t, st, second, true)
	wantNotRemoved(t, st, alice.Issuer, alice.Subject)
	wantUser(t, st, back)
}

// Every field of a token, the hash's 32 bytes and the scopes' order (an
// empty scope included) among them, comes back exactly, by id and by
// hash; a token of zero times round-trips too.
func (s *suite) tokenRoundTrip(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, fullUser("u-1", "alice"))
	full := fullToken("t-1", "u-1")
	// A hash with NUL and high bytes, which text columns would mangle.
	full.Hash = [32]byte{0, 0xff, 0xfe, 0, 'x'}
	zero := store.Token{ID: "t-2", UserID: "u-1", Hash: hashOf("zero")}
	mustPutToken(t, st, full)
	mustPutToken(t, st, zero)
	wantToken(t, st, full)
	wantToken(t, st, zero)
	list := wantTokenIDs(t, st, "", "t-2", "t-1") // zero CreatedAt first
	for _, d := range diffToken(list[1], full) {
		t.Errorf("ListTokens[1]: %s", d)
	}
	if _, err := st.GetToken(t.Context(), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetToken(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetTokenByHash(t.Context(), hashOf("nope")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetTokenByHash(unknown) = %v, want ErrNotFound", err)
	}
}

// A token is written once: a second one with the same id, or with the
// same hash, is ErrExists and changes nothing.
func (s *suite) tokenDuplicate(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, fullUser("u-1", "alice"))
	mustPutUser(t, st, localUser("u-2", "bob"))
	tok := liveToken("t-1", "u-1")
	mustPutToken(t, st, tok)

	sameID := fullToken("t-1", "u-2")
	sameID.Hash = hashOf("other")
	if err := st.PutToken(t.Context(), sameID); !errors.Is(err, store.ErrExists) {
		t.Errorf("PutToken(same id) = %v, want ErrExists", err)
	}
	sameHash := liveToken("t-2", "u-2")
	sameHash.Hash = tok.Hash
	if err := st.PutToken(t.Context(), sameHash); !errors.Is(err, store.ErrExists) {
		t.Errorf("PutToken(same hash) = %v, want ErrExists", err)
	}
	wantToken(t, st, tok)
	wantTokenIDs(t, st, "", "t-1")
	if _, err := st.GetTokenByHash(t.Context(), hashOf("other")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetTokenByHash(refused token's hash) = %v, want ErrNotFound", err)
	}
}

// A token needs its user.
func (s *suite) tokenOfMissingUser(t *testing.T) {
	st := s.fresh(t)
	if err := st.PutToken(t.Context(), liveToken("t-1", "nope")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PutToken(missing user) = %v, want ErrNotFound", err)
	}
	wantTokenIDs(t, st, "")
}

// A token whose time the store cannot hold is refused, and nothing of it
// is written.
func (s *suite) tokenBadTime(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, fullUser("u-1", "alice"))
	tok := liveToken("t-1", "u-1")
	tok.ExpiresAt = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := st.PutToken(t.Context(), tok); err == nil {
		t.Error("PutToken with ExpiresAt in year 9999 succeeded")
	}
	wantTokenIDs(t, st, "")
	mustPutToken(t, st, liveToken("t-1", "u-1"))
	if err := st.TouchToken(t.Context(), "t-1", time.Date(1, 2, 1, 0, 0, 0, 0, time.UTC)); err == nil {
		t.Error("TouchToken in year 1 succeeded")
	}
	wantToken(t, st, liveToken("t-1", "u-1"))
}

// The store hands out revoked and expired tokens as they are: deciding
// what they are worth is the caller's.
func (s *suite) revokedAndExpiredTokensAreFound(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, fullUser("u-1", "alice"))
	expired := liveToken("t-1", "u-1")
	expired.ExpiresAt = time.Unix(1, 0) // long gone
	revoked := liveToken("t-2", "u-1")
	revoked.RevokedAt = at(1)
	mustPutToken(t, st, expired)
	mustPutToken(t, st, revoked)
	wantToken(t, st, expired)
	wantToken(t, st, revoked)
}

// ListTokens orders by CreatedAt then ID and filters by user.
func (s *suite) listTokensOrder(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, fullUser("u-1", "alice"))
	mustPutUser(t, st, localUser("u-2", "bob"))
	for _, tc := range []struct {
		id, user string
		sec      int
	}{{"c", "u-1", 2}, {"a", "u-2", 3}, {"b", "u-1", 2}, {"d", "u-2", 1}} {
		tok := liveToken(tc.id, tc.user)
		tok.CreatedAt = at(tc.sec)
		mustPutToken(t, st, tok)
	}
	wantTokenIDs(t, st, "", "d", "b", "c", "a")
	wantTokenIDs(t, st, "u-1", "b", "c")
	wantTokenIDs(t, st, "u-2", "d", "a")
	wantTokenIDs(t, st, "nope")
}

// RevokeToken sets RevokedAt once; again keeps the first time; a missing
// token is ErrNotFound; a zero time is refused.
func (s *suite) revokeToken(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, fullUser("u-1", "alice"))
	tok, other := liveToken("t-1", "u-1"), liveToken("t-2", "u-1")
	mustPutToken(t, st, tok)
	mustPutToken(t, st, other)
	if err := st.RevokeToken(t.Context(), "t-1", time.Time{}); err == nil {
		t.Error("RevokeToken with a zero time succeeded")
	}
	wantToken(t, st, tok)

	first := at(50).Add(7 * time.Nanosecond)
	if err := st.RevokeToken(t.Context(), "t-1", first); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	if err := st.RevokeToken(t.Context(), "t-1", at(59)); err != nil {
		t.Errorf("second RevokeToken: %v, want nil", err)
	}
	tok.RevokedAt = first
	wantToken(t, st, tok)
	wantToken(t, st, other)
	if err := st.RevokeToken(t.Context(), "nope", first); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeToken(missing) = %v, want ErrNotFound", err)
	}
}

// TouchToken moves LastUsedAt forward only; a missing token is
// ErrNotFound.
func (s *suite) touchToken(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, fullUser("u-1", "alice"))
	tok := liveToken("t-1", "u-1")
	mustPutToken(t, st, tok)
	for _, step := range []struct {
		at, want time.Time
	}{
		{at(20), at(20)},
		{at(25).Add(time.Nanosecond), at(25).Add(time.Nanosecond)},
		{at(21), at(25).Add(time.Nanosecond)},                      // earlier: kept
		{at(25).Add(time.Nanosecond), at(25).Add(time.Nanosecond)}, // same: no error
	} {
		if err := st.TouchToken(t.Context(), "t-1", step.at); err != nil {
			t.Fatalf("TouchToken(%v): %v", step.at, err)
		}
		tok.LastUsedAt = step.want
		wantToken(t, st, tok)
	}
	// A revoked token's use is still recorded: it says when it was last
	// shown, which is worth knowing.
	if err := st.RevokeToken(t.Context(), "t-1", at(30)); err != nil {
		t.Fatal(err)
	}
	if err := st.TouchToken(t.Context(), "t-1", at(31)); err != nil {
		t.Fatalf("TouchToken(revoked): %v", err)
	}
	tok.RevokedAt, tok.LastUsedAt = at(30), at(31)
	wantToken(t, st, tok)
	if err := st.TouchToken(t.Context(), "nope", at(31)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TouchToken(missing) = %v, want ErrNotFound", err)
	}
}

// The store keeps its own copy of a token's scopes.
func (s *suite) tokenCopiesInAndOut(t *testing.T) {
	st := s.fresh(t)
	mustPutUser(t, st, fullUser("u-1", "alice"))
	in := fullToken("t-1", "u-1")
	want := fullToken("t-1", "u-1")
	mustPutToken(t, st, in)
	in.Scopes[0] = "admin:*"
	got, err := st.GetToken(t.Context(), "t-1")
	if err != nil {
		t.Fatal(err)
	}
	got.Scopes[0] = "admin:*"
	list, err := st.ListTokens(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	list[0].Scopes[0] = "admin:*"
	wantToken(t, st, want)
}

// The identity methods, called with a done context, fail with ctx's error
// and change nothing.
func (s *suite) identityDoneContext(t *testing.T) {
	st := s.fresh(t)
	u := fullUser("u-1", "alice")
	mustPutUser(t, st, u)
	mustAddTeam(t, st, "u-1", "platform")
	tok := liveToken("t-1", "u-1")
	mustPutToken(t, st, tok)

	ctx, check := canceled(t)
	changed := u
	changed.Kind = store.UserAdmin
	check("PutUser", st.PutUser(ctx, changed))
	check("PutUser(new)", st.PutUser(ctx, localUser("u-2", "bob")))
	_, err := st.GetUser(ctx, "u-1")
	check("GetUser", err)
	_, err = st.GetUserByName(ctx, "alice")
	check("GetUserByName", err)
	_, err = st.GetUserBySubject(ctx, u.Issuer, u.Subject)
	check("GetUserBySubject", err)
	_, err = st.ListUsers(ctx)
	check("ListUsers", err)
	check("DeleteUser", st.DeleteUser(ctx, "u-1", at(60)))
	check("AddTeamMember", st.AddTeamMember(ctx, "u-1", "other"))
	check("RemoveTeamMember", st.RemoveTeamMember(ctx, "u-1", "platform"))
	_, err = st.TeamsOf(ctx, "u-1")
	check("TeamsOf", err)
	check("PutToken", st.PutToken(ctx, liveToken("t-2", "u-1")))
	_, err = st.GetToken(ctx, "t-1")
	check("GetToken", err)
	_, err = st.GetTokenByHash(ctx, tok.Hash)
	check("GetTokenByHash", err)
	_, err = st.ListTokens(ctx, "")
	check("ListTokens", err)
	check("RevokeToken", st.RevokeToken(ctx, "t-1", at(60)))
	check("TouchToken", st.TouchToken(ctx, "t-1", at(60)))
	_, err = st.GetRemovedUser(ctx, u.Issuer, u.Subject)
	check("GetRemovedUser", err)
	_, err = st.GetRemovedUserByName(ctx, "alice")
	check("GetRemovedUserByName", err)

	wantUserNames(t, st, "alice")
	wantUser(t, st, u)
	wantTeams(t, st, "u-1", "platform")
	wantTokenIDs(t, st, "", "t-1")
	wantToken(t, st, tok)
}

// Users, teams and tokens written before Close are there after reopening,
// and the reopened store still refuses duplicates.
func (s *suite) identityPersistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	st := s.open(t, dir)
	if st == nil {
		t.Fatal("open returned a nil store")
	}
	alice, bob, gone := fullUser("u-1", "alice"), localUser("u-2", "bob"), localUser("u-3", "gone")
	tok, revoked, gonesToken := liveToken("t-1", "u-1"), liveToken("t-2", "u-1"), liveToken("t-3", "u-3")
	ctx := t.Context()
	steps := []error{
		st.PutUser(ctx, alice),
		st.PutUser(ctx, bob),
		st.PutUser(ctx, gone),
		st.AddTeamMember(ctx, "u-1", "platform"),
		st.AddTeamMember(ctx, "u-1", "left"),
		st.AddTeamMember(ctx, "u-3", "platform"),
		st.RemoveTeamMember(ctx, "u-1", "left"),
		st.PutToken(ctx, tok),
		st.PutToken(ctx, revoked),
		st.PutToken(ctx, gonesToken),
		st.RevokeToken(ctx, "t-2", at(70)),
		st.TouchToken(ctx, "t-1", at(71)),
		st.DeleteUser(ctx, "u-3", at(72)),
	}
	closeAfterWrites(t, st, steps)

	st = s.openIn(t, dir)
	wantUserNames(t, st, "alice", "bob")
	wantUser(t, st, alice)
	wantUser(t, st, bob)
	wantTeams(t, st, "u-1", "platform")
	wantTeams(t, st, "u-3")
	tok.LastUsedAt, revoked.RevokedAt, gonesToken.RevokedAt = at(71), at(70), at(72)
	wantToken(t, st, tok)
	wantToken(t, st, revoked)
	wantToken(t, st, gonesToken)
	wantTokenIDs(t, st, "", "t-1", "t-2", "t-3")

	if err := st.PutUser(ctx, localUser("u-9", "alice")); !errors.Is(err, store.ErrExists) {
		t.Errorf("PutUser(taken name after reopen) = %v, want ErrExists", err)
	}
	if err := st.PutToken(ctx, liveToken("t-1", "u-1")); !errors.Is(err, store.ErrExists) {
		t.Errorf("PutToken(existing after reopen) = %v, want ErrExists", err)
	}
}
