package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/store"
)

const userColumns = `id, name, kind, issuer, subject, created_at`

// PutUser implements store.Store. A clash found by the checks says which
// user holds what; one with a writer on another server committing between
// check and insert fails the insert on the unique index, still ErrExists.
func (s *Store) PutUser(ctx context.Context, u store.User) error {
	if (u.Issuer == "") != (u.Subject == "") {
		return s.errorf("postgres: put user %s: issuer %q and subject %q: set both (an OIDC user) or neither (a local user)", u.ID, u.Issuer, u.Subject)
	}
	created, err := encodeTime(u.CreatedAt)
	if err != nil {
		return s.errorf("postgres: put user %s: created_at: %w", u.ID, err)
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var other string
		err := tx.QueryRow(ctx, `SELECT id FROM users WHERE name = $1 AND id != $2`, u.Name, u.ID).Scan(&other)
		if err == nil {
			return fmt.Errorf("name %q is taken by user %s: %w", u.Name, other, store.ErrExists)
		} else if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if u.Issuer != "" {
			err = tx.QueryRow(ctx, `SELECT id FROM users WHERE issuer = $1 AND subject = $2 AND id != $3`,
				u.Issuer, u.Subject, u.ID).Scan(&other)
			if err == nil {
				return fmt.Errorf("issuer %q subject %q is user %s: %w", u.Issuer, u.Subject, other, store.ErrExists)
			} else if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
		}
		_, err = tx.Exec(ctx, `INSERT INTO users (`+userColumns+`) VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (id) DO UPDATE SET
				name = excluded.name, kind = excluded.kind, issuer = excluded.issuer,
				subject = excluded.subject, created_at = excluded.created_at`,
			u.ID, u.Name, u.Kind, nullString(u.Issuer), nullString(u.Subject), created)
		if err != nil {
			return fmt.Errorf("name %q or issuer %q subject %q: %w", u.Name, u.Issuer, u.Subject, s.classify(err))
		}
		if u.Issuer == "" {
			return nil
		}
		// Put back: the issuer and subject may sign in again.
		_, err = tx.Exec(ctx, `DELETE FROM removed_users WHERE issuer = $1 AND subject = $2`, u.Issuer, u.Subject)
		return err
	})
	if err != nil {
		return s.errorf("postgres: put user %s: %w", u.ID, err)
	}
	return nil
}

// GetUser implements store.Store.
func (s *Store) GetUser(ctx context.Context, id string) (store.User, error) {
	u, err := scanUser(s.queryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1`, id))
	if err != nil {
		return store.User{}, s.errorf("postgres: get user %s: %w", id, notFound(err))
	}
	return u, nil
}

// GetUserByName implements store.Store.
func (s *Store) GetUserByName(ctx context.Context, name string) (store.User, error) {
	u, err := scanUser(s.queryRow(ctx, `SELECT `+userColumns+` FROM users WHERE name = $1`, name))
	if err != nil {
		return store.User{}, s.errorf("postgres: get user named %q: %w", name, notFound(err))
	}
	return u, nil
}

// GetUserBySubject implements store.Store.
func (s *Store) GetUserBySubject(ctx context.Context, issuer, subject string) (store.User, error) {
	u, err := scanUser(s.queryRow(ctx, `SELECT `+userColumns+` FROM users WHERE issuer = $1 AND subject = $2`, issuer, subject))
	if err != nil {
		return store.User{}, s.errorf("postgres: get user of issuer %q subject %q: %w", issuer, subject, notFound(err))
	}
	return u, nil
}

// ListUsers implements store.Store.
func (s *Store) ListUsers(ctx context.Context) ([]store.User, error) {
	out, err := query(ctx, s, scanUser, `SELECT `+userColumns+` FROM users ORDER BY name`)
	if err != nil {
		return nil, s.errorf("postgres: list users: %w", err)
	}
	return out, nil
}

// DeleteUser implements store.Store. Its DELETE waits for a PutToken or
// AddTeamMember of the user on another server (they hold the user's row
// FOR SHARE) to commit, and its revoke, a later statement, then sees the
// token: no token of a deleted user stays live.
func (s *Store) DeleteUser(ctx context.Context, id string, at time.Time) error {
	if at.IsZero() {
		return s.errorf("postgres: delete user %s: zero time for revoking its tokens", id)
	}
	revoked, err := encodeTime(at)
	if err != nil {
		return s.errorf("postgres: delete user %s: %w", id, err)
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		// Its team memberships go with it (ON DELETE CASCADE).
		var issuer, subject, name *string
		err := tx.QueryRow(ctx, `DELETE FROM users WHERE id = $1 RETURNING issuer, subject, name`, id).Scan(&issuer, &subject, &name)
		if err != nil {
			return notFound(err)
		}
		// An OIDC user leaves a record of its issuer and subject, so that
		// its next ID token makes no new user.
		if issuer != nil {
			_, err := tx.Exec(ctx, `INSERT INTO removed_users (issuer, subject, id, name, removed_at)
				VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (issuer, subject) DO UPDATE SET
					id = excluded.id, name = excluded.name, removed_at = excluded.removed_at`,
				*issuer, *subject, id, *name, revoked)
			if err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL`, revoked, id)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM secrets WHERE owner_kind = $1 AND owner = $2`, store.SecretOwnerUser, id)
		return err
	})
	if err != nil {
		return s.errorf("postgres: delete user %s: %w", id, err)
	}
	return nil
}

const removedUserColumns = `issuer, subject, id, name, removed_at`

// GetRemovedUser implements store.Store.
func (s *Store) GetRemovedUser(ctx context.Context, issuer, subject string) (store.RemovedUser, error) {
	r, err := scanRemovedUser(s.queryRow(ctx, `SELECT `+removedUserColumns+` FROM removed_users
		WHERE issuer = $1 AND subject = $2`, issuer, subject))
	if err != nil {
		return store.RemovedUser{}, s.errorf("postgres: get removed user of issuer %q subject %q: %w", issuer, subject, notFound(err))
	}
	return r, nil
}

// GetRemovedUserByName implements store.Store.
func (s *Store) GetRemovedUserByName(ctx context.Context, name string) (store.RemovedUser, error) {
	// NULL, the zero time, is earliest: last when latest comes first.
	r, err := scanRemovedUser(s.queryRow(ctx, `SELECT `+removedUserColumns+` FROM removed_users
		WHERE name = $1 ORDER BY removed_at DESC NULLS LAST, id DESC LIMIT 1`, name))
	if err != nil {
		return store.RemovedUser{}, s.errorf("postgres: get removed user named %q: %w", name, notFound(err))
	}
	return r, nil
}

func scanRemovedUser(sc pgx.Row) (store.RemovedUser, error) {
	var (
		r       store.RemovedUser
		removed *int64
	)
	if err := sc.Scan(&r.Issuer, &r.Subject, &r.ID, &r.Name, &removed); err != nil {
		return store.RemovedUser{}, err
	}
	r.RemovedAt = decodeTime(removed)
	return r, nil
}

// AddTeamMember implements store.Store.
func (s *Store) AddTeamMember(ctx context.Context, userID, team string) error {
	if team == "" {
		return s.errorf("postgres: add user %s to a team: empty team name", userID)
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if err := lockUser(ctx, tx, userID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO team_members (user_id, team) VALUES ($1, $2)
			ON CONFLICT DO NOTHING`, userID, team)
		return err
	})
	if err != nil {
		return s.errorf("postgres: add user %s to team %q: %w", userID, team, err)
	}
	return nil
}

// RemoveTeamMember implements store.Store.
func (s *Store) RemoveTeamMember(ctx context.Context, userID, team string) error {
	tag, err := s.exec(ctx, `DELETE FROM team_members WHERE user_id = $1 AND team = $2`, userID, team)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: remove user %s from team %q: %w", userID, team, err)
	}
	return nil
}

// TeamsOf implements store.Store.
func (s *Store) TeamsOf(ctx context.Context, userID string) ([]string, error) {
	out, err := query(ctx, s, scanString, `SELECT team FROM team_members WHERE user_id = $1 ORDER BY team`, userID)
	if err != nil {
		return nil, s.errorf("postgres: teams of user %s: %w", userID, err)
	}
	return out, nil
}

// lockUser returns nil if a user has the given id, else store.ErrNotFound,
// and holds the user's row FOR SHARE until tx ends: a DeleteUser waits
// for tx, and then sees what tx wrote (see DeleteUser).
func lockUser(ctx context.Context, tx pgx.Tx, id string) error {
	var one int
	err := tx.QueryRow(ctx, `SELECT 1 FROM users WHERE id = $1 FOR SHARE`, id).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("no user %s: %w", id, store.ErrNotFound)
	}
	return err
}

func scanUser(sc pgx.Row) (store.User, error) {
	var (
		u               store.User
		issuer, subject *string
		created         *int64
	)
	if err := sc.Scan(&u.ID, &u.Name, &u.Kind, &issuer, &subject, &created); err != nil {
		return store.User{}, err
	}
	if issuer != nil {
		u.Issuer = *issuer
	}
	if subject != nil {
		u.Subject = *subject
	}
	u.CreatedAt = decodeTime(created)
	return u, nil
}

const tokenColumns = `id, name, user_id, hash, scopes, created_at, expires_at, revoked_at, last_used_at`

// PutToken implements store.Store.
func (s *Store) PutToken(ctx context.Context, t store.Token) error {
	args, err := tokenArgs(t)
	if err != nil {
		return s.errorf("postgres: put token %s: %w", t.ID, err)
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		if err := lockUser(ctx, tx, t.UserID); err != nil {
			return err
		}
		var other string
		err := tx.QueryRow(ctx, `SELECT id FROM tokens WHERE id = $1 OR hash = $2`, t.ID, t.Hash[:]).Scan(&other)
		if err == nil {
			if other == t.ID {
				return store.ErrExists
			}
			return fmt.Errorf("token %s has the same hash: %w", other, store.ErrExists)
		} else if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO tokens (`+tokenColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, args...)
		return err
	})
	if err != nil {
		return s.errorf("postgres: put token %s: %w", t.ID, err)
	}
	return nil
}

// GetToken implements store.Store.
func (s *Store) GetToken(ctx context.Context, id string) (store.Token, error) {
	t, err := scanToken(s.queryRow(ctx, `SELECT `+tokenColumns+` FROM tokens WHERE id = $1`, id))
	if err != nil {
		return store.Token{}, s.errorf("postgres: get token %s: %w", id, notFound(err))
	}
	return t, nil
}

// GetTokenByHash implements store.Store.
func (s *Store) GetTokenByHash(ctx context.Context, hash [32]byte) (store.Token, error) {
	t, err := scanToken(s.queryRow(ctx, `SELECT `+tokenColumns+` FROM tokens WHERE hash = $1`, hash[:]))
	if err != nil {
		// The hash is not the secret, but it need not be in logs either.
		return store.Token{}, s.errorf("postgres: get token by hash: %w", notFound(err))
	}
	return t, nil
}

// ListTokens implements store.Store.
func (s *Store) ListTokens(ctx context.Context, userID string) ([]store.Token, error) {
	q, args := `SELECT `+tokenColumns+` FROM tokens ORDER BY created_at NULLS FIRST, id`, []any(nil)
	if userID != "" {
		q, args = `SELECT `+tokenColumns+` FROM tokens WHERE user_id = $1 ORDER BY created_at NULLS FIRST, id`, []any{userID}
	}
	out, err := query(ctx, s, scanToken, q, args...)
	if err != nil {
		return nil, s.errorf("postgres: list tokens: %w", err)
	}
	return out, nil
}

// RevokeToken implements store.Store.
func (s *Store) RevokeToken(ctx context.Context, id string, at time.Time) error {
	if at.IsZero() {
		return s.errorf("postgres: revoke token %s: zero time", id)
	}
	if err := s.setTokenTime(ctx, id, "revoked_at", at, `revoked_at IS NULL`); err != nil {
		return s.errorf("postgres: revoke token %s: %w", id, err)
	}
	return nil
}

// TouchToken implements store.Store.
func (s *Store) TouchToken(ctx context.Context, id string, at time.Time) error {
	if err := s.setTokenTime(ctx, id, "last_used_at", at, `(last_used_at IS NULL OR last_used_at < $1)`); err != nil {
		return s.errorf("postgres: touch token %s: %w", id, err)
	}
	return nil
}

// setTokenTime sets column (a time) of the token with the given id to at
// where cond holds ($1 in it is at); a token for which it does not is left
// as it is. It fails with ErrNotFound if there is no such token. The
// UPDATE checks cond on the row it locks, so a concurrent one on another
// server cannot move the time the wrong way.
func (s *Store) setTokenTime(ctx context.Context, id, column string, at time.Time, cond string) error {
	v, err := encodeTime(at)
	if err != nil {
		return err
	}
	// column and cond are constants of this file, not input.
	tag, err := s.exec(ctx, `UPDATE tokens SET `+column+` = $1 WHERE id = $2 AND `+cond, v, id)
	if err != nil || tag.RowsAffected() > 0 {
		return err
	}
	// Tokens are never deleted: one that was there is there still.
	var one int
	return notFound(s.queryRow(ctx, `SELECT 1 FROM tokens WHERE id = $1`, id).Scan(&one))
}

// tokenArgs are t's column values, in tokenColumns order.
func tokenArgs(t store.Token) ([]any, error) {
	scopes, err := encodeStrings("scope", t.Scopes)
	if err != nil {
		return nil, fmt.Errorf("scopes: %w", err)
	}
	times := []struct {
		name string
		t    time.Time
	}{{"created_at", t.CreatedAt}, {"expires_at", t.ExpiresAt}, {"revoked_at", t.RevokedAt}, {"last_used_at", t.LastUsedAt}}
	args := []any{t.ID, t.Name, t.UserID, t.Hash[:], scopes}
	for _, tt := range times {
		v, err := encodeTime(tt.t)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tt.name, err)
		}
		args = append(args, v)
	}
	return args, nil
}

func scanToken(sc pgx.Row) (store.Token, error) {
	var (
		t                               store.Token
		hash                            []byte
		scopes                          *string
		created, expires, revoked, used *int64
	)
	err := sc.Scan(&t.ID, &t.Name, &t.UserID, &hash, &scopes, &created, &expires, &revoked, &used)
	if err != nil {
		return store.Token{}, err
	}
	if len(hash) != len(t.Hash) {
		return store.Token{}, fmt.Errorf("token %s: hash of %d bytes, want %d", t.ID, len(hash), len(t.Hash))
	}
	copy(t.Hash[:], hash)
	if t.Scopes, err = decodeStrings(scopes); err != nil {
		return store.Token{}, fmt.Errorf("token %s: scopes: %w", t.ID, err)
	}
	t.CreatedAt, t.ExpiresAt = decodeTime(created), decodeTime(expires)
	t.RevokedAt, t.LastUsedAt = decodeTime(revoked), decodeTime(used)
	return t, nil
}
