package secret

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"

	"github.com/cove-dev/cove/internal/store"
)

// Plain is an opened secret, for the egress proxy: the header Header with
// value Value goes on the requests to Hosts. It lives on the host only.
type Plain struct {
	Name string
	// OwnerKind and Owner are whose it is (see store.Secret).
	OwnerKind string
	Owner     string
	Hosts     []string
	// Header is the header's name (canonical), Value its whole value:
	// the template with the secret in place ("Bearer ghp_…").
	Header string
	Value  string
}

// Matches reports whether p goes on a request to host (see MatchHost).
func (p Plain) Matches(host string) bool {
	return slices.ContainsFunc(p.Hosts, func(pat string) bool { return MatchHost(pat, host) })
}

// LogValue keeps the value out of logs.
func (p Plain) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("name", p.Name),
		slog.String("owner_kind", p.OwnerKind),
		slog.String("owner", p.Owner),
		slog.Any("hosts", p.Hosts),
		slog.String("header", p.Header),
	)
}

// String keeps the value out of fmt's %v and %+v.
func (p Plain) String() string {
	return fmt.Sprintf("{%s %s/%s hosts:%q header:%s value:[redacted]}", p.OwnerKind, p.Owner, p.Name, p.Hosts, p.Header)
}

// GoString keeps the value out of fmt's %#v.
func (p Plain) GoString() string { return "secret.Plain" + p.String() }

// Resolver opens the secrets that a session's requests carry. Store and
// Box are required.
type Resolver struct {
	Store store.Store
	Box   *Box
}

// For returns the secrets that go with the requests of a session owned by
// the user with id userID, cloned from template ("" for none): the user's
// own, those of each team the user is in (store.TeamsOf), and the
// template's, opened.
//
// Precedence: the user's come first, then the teams' (by team name), then
// the template's, and the list is in that order. A secret whose name an
// earlier one has is left out (a user's "github" replaces its team's
// "github"); so is a host of a secret whose header an earlier secret
// already sets for that same host pattern, and a secret left with no
// host. Where patterns differ but both match a request ("*.github.com"
// and "api.github.com"), the first in the list applies.
//
// An error names the secret that failed to open, never its value; a
// secret left out by precedence is not opened.
func (r *Resolver) For(ctx context.Context, userID, template string) ([]Plain, error) {
	type owner struct{ kind, id string }
	var owners []owner
	if userID != "" {
		owners = append(owners, owner{store.SecretOwnerUser, userID})
		teams, err := r.Store.TeamsOf(ctx, userID)
		if err != nil {
			return nil, fmt.Errorf("secret: resolve for user %s: %w", userID, err)
		}
		for _, t := range teams {
			owners = append(owners, owner{store.SecretOwnerTeam, t})
		}
	}
	if template != "" {
		owners = append(owners, owner{store.SecretOwnerTemplate, template})
	}

	var out []Plain
	names := map[string]bool{}
	type claim struct{ header, host string }
	claimed := map[claim]bool{}
	for _, o := range owners {
		list, err := r.Store.ListSecrets(ctx, o.kind, o.id)
		if err != nil {
			return nil, fmt.Errorf("secret: resolve for user %s: %w", userID, err)
		}
		for _, rec := range list {
			if names[rec.Name] {
				continue
			}
			names[rec.Name] = true
			h, err := ParseHeader(rec.Header)
			if err != nil {
				return nil, fmt.Errorf("secret: %s %s/%s: stored %w", rec.OwnerKind, rec.Owner, rec.Name, err)
			}
			var hosts []string
			for _, host := range rec.Hosts {
				c := claim{http.CanonicalHeaderKey(h.Name), host}
				if !claimed[c] {
					claimed[c] = true
					hosts = append(hosts, host)
				}
			}
			if len(hosts) == 0 {
				continue
			}
			value, err := r.Box.Open(rec.Sealed, AAD(rec.OwnerKind, rec.Owner, rec.Name))
			if err != nil {
				return nil, fmt.Errorf("secret %s of %s %s: %w", rec.Name, rec.OwnerKind, rec.Owner, err)
			}
			out = append(out, Plain{Name: rec.Name, OwnerKind: rec.OwnerKind, Owner: rec.Owner,
				Hosts: hosts, Header: h.Name, Value: h.Render(string(value))})
		}
	}
	return out, nil
}

// Check opens every stored secret, so that a server can tell at start
// whether its key is the one they were sealed with (a key file lost or
// replaced leaves secrets that no one can open). It returns how many
// secrets there are and, if any does not open, an error naming the first
// and saying how many failed; never a value.
func (r *Resolver) Check(ctx context.Context) (int, error) {
	list, err := r.Store.ListSecrets(ctx, "", "")
	if err != nil {
		return 0, fmt.Errorf("secret: check: %w", err)
	}
	var first error
	failed := 0
	for _, rec := range list {
		if _, err := r.Box.Open(rec.Sealed, AAD(rec.OwnerKind, rec.Owner, rec.Name)); err != nil {
			failed++
			if first == nil {
				first = fmt.Errorf("secret %s of %s %s: %w", rec.Name, rec.OwnerKind, rec.Owner, err)
			}
		}
	}
	if first != nil {
		return len(list), fmt.Errorf("%d of %d secrets do not open: %w", failed, len(list), first)
	}
	return len(list), nil
}
