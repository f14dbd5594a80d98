package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/store"
)

const secretColumns = `owner_kind, owner, name, hosts, header, sealed, created_at, updated_at`

// secretKey checks a secret's key: a known owner kind, an owner and a
// name.
func secretKey(ownerKind, owner, name string) error {
	switch ownerKind {
	case store.SecretOwnerUser, store.SecretOwnerTeam, store.SecretOwnerTemplate:
	default:
		return fmt.Errorf("owner kind %q is none of %s, %s, %s", ownerKind,
			store.SecretOwnerUser, store.SecretOwnerTeam, store.SecretOwnerTemplate)
	}
	if owner == "" || name == "" {
		return fmt.Errorf("empty owner %q or name %q", owner, name)
	}
	return nil
}

// PutSecret implements store.Store.
func (s *Store) PutSecret(ctx context.Context, sec store.Secret) error {
	fail := func(err error) error {
		return s.errorf("postgres: put secret %s %s/%s: %w", sec.OwnerKind, sec.Owner, sec.Name, err)
	}
	if err := secretKey(sec.OwnerKind, sec.Owner, sec.Name); err != nil {
		return fail(err)
	}
	hosts, err := encodeStrings("host", sec.Hosts)
	if err != nil {
		return fail(fmt.Errorf("hosts: %w", err))
	}
	created, err := encodeTime(sec.CreatedAt)
	if err != nil {
		return fail(fmt.Errorf("created_at: %w", err))
	}
	updated, err := encodeTime(sec.UpdatedAt)
	if err != nil {
		return fail(fmt.Errorf("updated_at: %w", err))
	}
	// A replace keeps created_at: it says when the secret was first set.
	_, err = s.exec(ctx, `INSERT INTO secrets (`+secretColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (owner_kind, owner, name) DO UPDATE SET
			hosts = excluded.hosts, header = excluded.header, sealed = excluded.sealed,
			updated_at = excluded.updated_at`,
		sec.OwnerKind, sec.Owner, sec.Name, hosts, sec.Header, encodeBlob(sec.Sealed), created, updated)
	if err != nil {
		return fail(err)
	}
	return nil
}

// GetSecret implements store.Store.
func (s *Store) GetSecret(ctx context.Context, ownerKind, owner, name string) (store.Secret, error) {
	sec, err := scanSecret(s.queryRow(ctx, `SELECT `+secretColumns+` FROM secrets
		WHERE owner_kind = $1 AND owner = $2 AND name = $3`, ownerKind, owner, name))
	if err != nil {
		return store.Secret{}, s.errorf("postgres: get secret %s %s/%s: %w", ownerKind, owner, name, notFound(err))
	}
	return sec, nil
}

// ListSecrets implements store.Store.
func (s *Store) ListSecrets(ctx context.Context, ownerKind, owner string) ([]store.Secret, error) {
	fail := func(err error) ([]store.Secret, error) {
		return nil, s.errorf("postgres: list secrets of %s %q: %w", ownerKind, owner, err)
	}
	q, args := `SELECT `+secretColumns+` FROM secrets`, []any(nil)
	switch {
	case ownerKind == "" && owner != "":
		return fail(errors.New("an owner without its kind"))
	case owner != "":
		q, args = q+` WHERE owner_kind = $1 AND owner = $2`, []any{ownerKind, owner}
	case ownerKind != "":
		q, args = q+` WHERE owner_kind = $1`, []any{ownerKind}
	}
	out, err := query(ctx, s, scanSecret, q+` ORDER BY owner_kind, owner, name`, args...)
	if err != nil {
		return fail(err)
	}
	return out, nil
}

// DeleteSecret implements store.Store.
func (s *Store) DeleteSecret(ctx context.Context, ownerKind, owner, name string) error {
	tag, err := s.exec(ctx, `DELETE FROM secrets WHERE owner_kind = $1 AND owner = $2 AND name = $3`,
		ownerKind, owner, name)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: delete secret %s %s/%s: %w", ownerKind, owner, name, err)
	}
	return nil
}

func scanSecret(sc pgx.Row) (store.Secret, error) {
	var (
		sec              store.Secret
		hosts            *string
		created, updated *int64
	)
	err := sc.Scan(&sec.OwnerKind, &sec.Owner, &sec.Name, &hosts, &sec.Header, &sec.Sealed, &created, &updated)
	if err != nil {
		return store.Secret{}, err
	}
	if sec.Hosts, err = decodeStrings(hosts); err != nil {
		return store.Secret{}, fmt.Errorf("secret %s %s/%s: hosts: %w", sec.OwnerKind, sec.Owner, sec.Name, err)
	}
	if len(sec.Sealed) == 0 {
		sec.Sealed = nil
	}
	sec.CreatedAt, sec.UpdatedAt = decodeTime(created), decodeTime(updated)
	return sec, nil
}
