package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

const userColumns = `id, name, kind, issuer, subject, created_at`

// PutUser implements store.Store.
func (s *Store) PutUser(ctx context.Context, u store.User) error {
	if (u.Issuer == "") != (u.Subject == "") {
		return errorf("sqlite: put user %s: issuer %q and subject %q: set both (an OIDC user) or neither (a local user)", u.ID, u.Issuer, u.Subject)
	}
	created, err := encodeTime(u.CreatedAt)
	if err != nil {
		return errorf("sqlite: put user %s: created_at: %w", u.ID, err)
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		// Checked first, so that a clash says which user holds what.
		var other string
		err := tx.QueryRowContext(ctx, `SELECT id FROM users WHERE name = ? AND id != ?`, u.Name, u.ID).Scan(&other)
		if err == nil {
			return fmt.Errorf("name %q is taken by user %s: %w", u.Name, other, store.ErrExists)
		} else if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if u.Issuer != "" {
			err = tx.QueryRowContext(ctx, `SELECT id FROM users WHERE issuer = ? AND subject = ? AND id != ?`,
				u.Issuer, u.Subject, u.ID).Scan(&other)
			if err == nil {
				return fmt.Errorf("issuer %q subject %q is user %s: %w", u.Issuer, u.Subject, other, store.ErrExists)
			} else if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO users (`+userColumns+`) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET
				name = excluded.name, kind = excluded.kind, issuer = excluded.issuer,
				subject = excluded.subject, created_at = excluded.created_at`,
			u.ID, u.Name, u.Kind, nullString(u.Issuer), nullString(u.Subject), created)
		if err != nil || u.Issuer == "" {
			return err
		}
		// Put back: the issuer and subject may sign in again.
		_, err = tx.ExecContext(ctx, `DELETE FROM removed_users WHERE issuer = ? AND subject = ?`, u.Issuer, u.Subject)
		return err
	})
	if err != nil {
		return errorf("sqlite: put user %s: %w", u.ID, err)
	}
	return nil
}

// GetUser implements store.Store.
func (s *Store) GetUser(ctx context.Context, id string) (store.User, error) {
	u, err := s.getUser(ctx, `id = ?`, id)
	if err != nil {
		return store.User{}, errorf("sqlite: get user %s: %w", id, err)
	}
	return u, nil
}

// GetUserByName implements store.Store.
func (s *Store) GetUserByName(ctx context.Context, name string) (store.User, error) {
	u, err := s.getUser(ctx, `name = ?`, name)
	if err != nil {
		return store.User{}, errorf("sqlite: get user named %q: %w", name, err)
	}
	return u, nil
}

// GetUserBySubject implements store.Store.
func (s *Store) GetUserBySubject(ctx context.Context, issuer, subject string) (store.User, error) {
	u, err := s.getUser(ctx, `issuer = ? AND subject = ?`, issuer, subject)
	if err != nil {
		return store.User{}, errorf("sqlite: get user of issuer %q subject %q: %w", issuer, subject, err)
	}
	return u, nil
}

// getUser returns the one user that where (a condition on users) holds,
// or store.ErrNotFound.
func (s *Store) getUser(ctx context.Context, where string, args ...any) (store.User, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+userColumns+` FROM users WHERE `+where, args...)
	u, err := scanUser(row)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	return u, err
}

// ListUsers implements store.Store.
func (s *Store) ListUsers(ctx context.Context) ([]store.User, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+userColumns+` FROM users ORDER BY name`)
	if err != nil {
		return nil, errorf("sqlite: list users: %w", err)
	}
	defer rows.Close()
	list := []store.User{}
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, errorf("sqlite: list users: %w", err)
		}
		list = append(list, u)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list users: %w", err)
	}
	return list, nil
}

// DeleteUser implements store.Store.
func (s *Store) DeleteUser(ctx context.Context, id string, at time.Time) error {
	if at.IsZero() {
		return errorf("sqlite: delete user %s: zero time for revoking its tokens", id)
	}
	revoked, err := encodeTime(at)
	if err != nil {
		return errorf("sqlite: delete user %s: %w", id, err)
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		// An OIDC user leaves a record of its issuer and subject, so that
		// its next ID token makes no new user.
		_, err := tx.ExecContext(ctx, `INSERT INTO removed_users (issuer, subject, id, name, removed_at)
			SELECT issuer, subject, id, name, ? FROM users WHERE id = ? AND issuer IS NOT NULL
			ON CONFLICT (issuer, subject) DO UPDATE SET
				id = excluded.id, name = excluded.name, removed_at = excluded.removed_at`, revoked, id)
		if err != nil {
			return err
		}
		// Its team memberships go with it (ON DELETE CASCADE).
		res, err := tx.ExecContext(ctx, `DELETE FROM users WHERE id = ?`, id)
		if err := oneRow(res, err, store.ErrNotFound); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL`, revoked, id)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM secrets WHERE owner_kind = ? AND owner = ?`, store.SecretOwnerUser, id)
		return err
	})
	if err != nil {
		return errorf("sqlite: delete user %s: %w", id, err)
	}
	return nil
}

const removedUserColumns = `issuer, subject, id, name, removed_at`

// GetRemovedUser implements store.Store.
func (s *Store) GetRemovedUser(ctx context.Context, issuer, subject string) (store.RemovedUser, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+removedUserColumns+` FROM removed_users
		WHERE issuer = ? AND subject = ?`, issuer, subject)
	r, err := scanRemovedUser(row)
	if err != nil {
		return store.RemovedUser{}, errorf("sqlite: get removed user of issuer %q subject %q: %w", issuer, subject, err)
	}
	return r, nil
}

// GetRemovedUserByName implements store.Store.
func (s *Store) GetRemovedUserByName(ctx context.Context, name string) (store.RemovedUser, error) {
	// NULL, the zero time, sorts first, as the zero time is earliest.
	row := s.db.QueryRowContext(ctx, `SELECT `+removedUserColumns+` FROM removed_users
		WHERE name = ? ORDER BY removed_at DESC, id DESC LIMIT 1`, name)
	r, err := scanRemovedUser(row)
	if err != nil {
		return store.RemovedUser{}, errorf("sqlite: get removed user named %q: %w", name, err)
	}
	return r, nil
}

func scanRemovedUser(row *sql.Row) (store.RemovedUser, error) {
	var (
		r       store.RemovedUser
		removed sql.NullInt64
	)
	err := row.Scan(&r.Issuer, &r.Subject, &r.ID, &r.Name, &removed)
	if errors.Is(err, sql.ErrNoRows) {
		return store.RemovedUser{}, store.ErrNotFound
	}
	if err != nil {
		return store.RemovedUser{}, err
	}
	r.RemovedAt = decodeTime(removed)
	return r, nil
}

// AddTeamMember implements store.Store.
func (s *Store) AddTeamMember(ctx context.Context, userID, team string) error {
	if team == "" {
		return errorf("sqlite: add user %s to a team: empty team name", userID)
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := userExists(ctx, tx, userID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO team_members (user_id, team) VALUES (?, ?)
			ON CONFLICT DO NOTHING`, userID, team)
		return err
	})
	if err != nil {
		return errorf("sqlite: add user %s to team %q: %w", userID, team, err)
	}
	return nil
}

// RemoveTeamMember implements store.Store.
func (s *Store) RemoveTeamMember(ctx context.Context, userID, team string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM team_members WHERE user_id = ? AND team = ?`, userID, team)
	if err := oneRow(res, err, store.ErrNotFound); err != nil {
		return errorf("sqlite: remove user %s from team %q: %w", userID, team, err)
	}
	return nil
}

// TeamsOf implements store.Store.
func (s *Store) TeamsOf(ctx context.Context, userID string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT team FROM team_members WHERE user_id = ? ORDER BY team`, userID)
	if err != nil {
		return nil, errorf("sqlite: teams of user %s: %w", userID, err)
	}
	defer rows.Close()
	teams := []string{}
	for rows.Next() {
		var team string
		if err := rows.Scan(&team); err != nil {
			return nil, errorf("sqlite: teams of user %s: %w", userID, err)
		}
		teams = append(teams, team)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: teams of user %s: %w", userID, err)
	}
	return teams, nil
}

// userExists returns nil if a user has the given id, else store.ErrNotFound.
func userExists(ctx context.Context, tx *sql.Tx, id string) error {
	var one int
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM users WHERE id = ?`, id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("no user %s: %w", id, store.ErrNotFound)
	}
	return err
}

func scanUser(sc scanner) (store.User, error) {
	var (
		u               store.User
		issuer, subject sql.NullString
		created         sql.NullInt64
	)
	if err := sc.Scan(&u.ID, &u.Name, &u.Kind, &issuer, &subject, &created); err != nil {
		return store.User{}, err
	}
	u.Issuer, u.Subject = issuer.String, subject.String
	u.CreatedAt = decodeTime(created)
	return u, nil
}

const tokenColumns = `id, name, user_id, hash, scopes, created_at, expires_at, revoked_at, last_used_at`

// PutToken implements store.Store.
func (s *Store) PutToken(ctx context.Context, t store.Token) error {
	args, err := tokenArgs(t)
	if err != nil {
		return errorf("sqlite: put token %s: %w", t.ID, err)
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if err := userExists(ctx, tx, t.UserID); err != nil {
			return err
		}
		var other string
		err := tx.QueryRowContext(ctx, `SELECT id FROM tokens WHERE id = ? OR hash = ?`, t.ID, t.Hash[:]).Scan(&other)
		if err == nil {
			if other == t.ID {
				return store.ErrExists
			}
			return fmt.Errorf("token %s has the same hash: %w", other, store.ErrExists)
		} else if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO tokens (`+tokenColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...)
		return err
	})
	if err != nil {
		return errorf("sqlite: put token %s: %w", t.ID, err)
	}
	return nil
}

// GetToken implements store.Store.
func (s *Store) GetToken(ctx context.Context, id string) (store.Token, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM tokens WHERE id = ?`, id)
	t, err := scanToken(row)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Token{}, errorf("sqlite: get token %s: %w", id, err)
	}
	return t, nil
}

// GetTokenByHash implements store.Store.
func (s *Store) GetTokenByHash(ctx context.Context, hash [32]byte) (store.Token, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM tokens WHERE hash = ?`, hash[:])
	t, err := scanToken(row)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		// The hash is not the secret, but it need not be in logs either.
		return store.Token{}, errorf("sqlite: get token by hash: %w", err)
	}
	return t, nil
}

// ListTokens implements store.Store.
func (s *Store) ListTokens(ctx context.Context, userID string) ([]store.Token, error) {
	q, args := `SELECT `+tokenColumns+` FROM tokens ORDER BY created_at, id`, []any(nil)
	if userID != "" {
		q, args = `SELECT `+tokenColumns+` FROM tokens WHERE user_id = ? ORDER BY created_at, id`, []any{userID}
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, errorf("sqlite: list tokens: %w", err)
	}
	defer rows.Close()
	list := []store.Token{}
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, errorf("sqlite: list tokens: %w", err)
		}
		list = append(list, t)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list tokens: %w", err)
	}
	return list, nil
}

// RevokeToken implements store.Store.
func (s *Store) RevokeToken(ctx context.Context, id string, at time.Time) error {
	if at.IsZero() {
		return errorf("sqlite: revoke token %s: zero time", id)
	}
	if err := s.setTokenTime(ctx, id, "revoked_at", at, `revoked_at IS NULL`); err != nil {
		return errorf("sqlite: revoke token %s: %w", id, err)
	}
	return nil
}

// TouchToken implements store.Store.
func (s *Store) TouchToken(ctx context.Context, id string, at time.Time) error {
	if err := s.setTokenTime(ctx, id, "last_used_at", at, `(last_used_at IS NULL OR last_used_at < ?1)`); err != nil {
		return errorf("sqlite: touch token %s: %w", id, err)
	}
	return nil
}

// setTokenTime sets column (a time) of the token with the given id to at
// where cond holds (?1 in it is at); a token for which it does not is left
// as it is. It fails with ErrNotFound if there is no such token.
func (s *Store) setTokenTime(ctx context.Context, id, column string, at time.Time, cond string) error {
	v, err := encodeTime(at)
	if err != nil {
		return err
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		// column and cond are constants of this file, not input.
		res, err := tx.ExecContext(ctx, `UPDATE tokens SET `+column+` = ?1 WHERE id = ?2 AND `+cond, v, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n > 0 {
			return err
		}
		var one int
		err = tx.QueryRowContext(ctx, `SELECT 1 FROM tokens WHERE id = ?`, id).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		return err
	})
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

func scanToken(sc scanner) (store.Token, error) {
	var (
		t                               store.Token
		hash                            []byte
		scopes                          sql.NullString
		created, expires, revoked, used sql.NullInt64
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

// nullString is s, or NULL if it is empty.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}
