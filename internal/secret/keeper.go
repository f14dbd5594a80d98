package secret

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// Keeper sets, lists and removes secrets for the API: it validates what
// it is given, seals the value and keeps it in Store. Its methods return
// *api.Error (possibly wrapped) for what a client caused (CodeInvalid,
// CodeNotFound); anything else is the store's. No error, and no answer,
// holds a value. Store and Box are required; Now defaults to time.Now.
type Keeper struct {
	Store store.Store
	Box   *Box
	Now   func() time.Time
}

// teamName is what a team's name may be: identity's rule.
var teamName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// Put validates req, seals its value to the record (owner, name) and
// creates or replaces the secret; it answers the secret's metadata. The
// owner is the one req names (its User, Team or Template, at most one):
// the caller fills in its own user's name when the request names none.
func (k *Keeper) Put(ctx context.Context, name string, req api.PutSecretRequest) (api.Secret, error) {
	if err := ValidName(name); err != nil {
		return api.Secret{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	h, err := ParseHeader(req.Header)
	if err != nil {
		return api.Secret{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	hosts, err := ParseHosts(req.Hosts)
	if err != nil {
		return api.Secret{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	if err := ValidValue(req.Value); err != nil {
		return api.Secret{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	o, err := k.owner(ctx, api.SecretOwner{User: req.User, Team: req.Team, Template: req.Template})
	if err != nil {
		return api.Secret{}, err
	}
	sealed, err := k.Box.Seal([]byte(req.Value), AAD(o.kind, o.id, name))
	if err != nil {
		return api.Secret{}, err
	}
	now := k.now()
	rec := store.Secret{Name: name, OwnerKind: o.kind, Owner: o.id, Hosts: hosts, Header: h.String(),
		Sealed: sealed, CreatedAt: now, UpdatedAt: now}
	if err := k.Store.PutSecret(ctx, rec); err != nil {
		return api.Secret{}, fmt.Errorf("secret: put %s: %w", name, err)
	}
	// Read back: a replace keeps the first CreatedAt.
	rec, err = k.Store.GetSecret(ctx, o.kind, o.id, name)
	if err != nil {
		return api.Secret{}, fmt.Errorf("secret: put %s: read back: %w", name, err)
	}
	return o.describe(rec), nil
}

// List returns the secrets of owner (its User, Team or Template), or with
// owner.All every secret, without values.
func (k *Keeper) List(ctx context.Context, owner api.SecretOwner) ([]api.Secret, error) {
	if owner.All {
		if owner != (api.SecretOwner{All: true}) {
			return nil, api.Errorf(api.CodeInvalid, "all: lists every owner's secrets; name no user, team or template with it")
		}
		return k.listAll(ctx)
	}
	o, err := k.owner(ctx, owner)
	if err != nil {
		return nil, err
	}
	recs, err := k.Store.ListSecrets(ctx, o.kind, o.id)
	if err != nil {
		return nil, fmt.Errorf("secret: list: %w", err)
	}
	list := make([]api.Secret, len(recs))
	for i, rec := range recs {
		list[i] = o.describe(rec)
	}
	return list, nil
}

// listAll lists every secret, each user named.
func (k *Keeper) listAll(ctx context.Context) ([]api.Secret, error) {
	recs, err := k.Store.ListSecrets(ctx, "", "")
	if err != nil {
		return nil, fmt.Errorf("secret: list: %w", err)
	}
	users, err := k.Store.ListUsers(ctx)
	if err != nil {
		return nil, fmt.Errorf("secret: list: %w", err)
	}
	names := map[string]string{}
	for _, u := range users {
		names[u.ID] = u.Name
	}
	list := make([]api.Secret, len(recs))
	for i, rec := range recs {
		o := ownerRef{kind: rec.OwnerKind, id: rec.Owner, display: rec.Owner}
		if n, ok := names[rec.Owner]; ok && rec.OwnerKind == store.SecretOwnerUser {
			o.display = n
		}
		list[i] = o.describe(rec)
	}
	return list, nil
}

// Delete removes owner's named secret; an unknown one is CodeNotFound.
func (k *Keeper) Delete(ctx context.Context, name string, owner api.SecretOwner) error {
	if owner.All {
		return api.Errorf(api.CodeInvalid, "all: a secret is removed from one owner; name it")
	}
	o, err := k.owner(ctx, owner)
	if err != nil {
		return err
	}
	err = k.Store.DeleteSecret(ctx, o.kind, o.id, name)
	if errors.Is(err, store.ErrNotFound) {
		return api.Errorf(api.CodeNotFound, "no secret %q of %s %s", name, o.kind, o.display)
	}
	if err != nil {
		return fmt.Errorf("secret: delete %s: %w", name, err)
	}
	return nil
}

// ownerRef is a secret's owner: its kind, its id in the store (a user's
// id, a team's or template's name) and the name an answer shows.
type ownerRef struct{ kind, id, display string }

// owner resolves the one owner o names.
func (k *Keeper) owner(ctx context.Context, o api.SecretOwner) (ownerRef, error) {
	n := 0
	for _, s := range []string{o.User, o.Team, o.Template} {
		if s != "" {
			n++
		}
	}
	switch {
	case n > 1:
		return ownerRef{}, api.Errorf(api.CodeInvalid, "owner: name at most one of user, team and template")
	case o.Team != "":
		if !teamName.MatchString(o.Team) {
			return ownerRef{}, api.Errorf(api.CodeInvalid, "team: %q is not a team name (%s)", o.Team, teamName)
		}
		return ownerRef{store.SecretOwnerTeam, o.Team, o.Team}, nil
	case o.Template != "":
		if _, err := k.Store.GetTemplate(ctx, o.Template); errors.Is(err, store.ErrNotFound) {
			return ownerRef{}, api.Errorf(api.CodeNotFound, "template %q not found", o.Template)
		} else if err != nil {
			return ownerRef{}, fmt.Errorf("secret: template %s: %w", o.Template, err)
		}
		return ownerRef{store.SecretOwnerTemplate, o.Template, o.Template}, nil
	case o.User != "":
		u, err := k.Store.GetUserByName(ctx, o.User)
		if errors.Is(err, store.ErrNotFound) {
			return ownerRef{}, api.Errorf(api.CodeNotFound, "no user %q", o.User)
		} else if err != nil {
			return ownerRef{}, fmt.Errorf("secret: user %s: %w", o.User, err)
		}
		return ownerRef{store.SecretOwnerUser, u.ID, u.Name}, nil
	}
	return ownerRef{}, api.Errorf(api.CodeInvalid, "owner: none named (a user, team or template)")
}

// describe is rec as an answer shows it: never its value.
func (o ownerRef) describe(rec store.Secret) api.Secret {
	s := api.Secret{Name: rec.Name, OwnerKind: rec.OwnerKind, Owner: o.display, Hosts: rec.Hosts,
		Header: rec.Header, CreatedAt: rec.CreatedAt, UpdatedAt: rec.UpdatedAt}
	if s.Hosts == nil {
		s.Hosts = []string{}
	}
	if rec.OwnerKind == store.SecretOwnerUser {
		s.OwnerID = rec.Owner
	}
	if h, err := ParseHeader(rec.Header); err == nil {
		s.HeaderName = h.Name
	}
	return s
}

func (k *Keeper) now() time.Time {
	if k.Now != nil {
		return k.Now().UTC()
	}
	return time.Now().UTC()
}
