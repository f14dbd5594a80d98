package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/cove-dev/cove/internal/store"
)

const versionColumns = `template, version, state, commit_sha, base, reason, error,
	build_millis, created_at, updated_at, snapshot, stored_manifest, build_log`

// PutTemplateVersion implements store.Store.
func (s *Store) PutTemplateVersion(ctx context.Context, v store.TemplateVersion) error {
	if err := s.inTx(ctx, func(tx *sql.Tx) error { return putVersion(ctx, tx, v) }); err != nil {
		return errorf("sqlite: put template %s version %d: %w", v.Template, v.Version, err)
	}
	return nil
}

// SwapTemplateVersion implements store.Store.
func (s *Store) SwapTemplateVersion(ctx context.Context, t *store.Template, v store.TemplateVersion) error {
	if v.Template != t.Name {
		return errorf("sqlite: swap template %s: version is of template %q", t.Name, v.Template)
	}
	args, err := templateArgs(*t)
	if err != nil {
		return errorf("sqlite: swap template %s: %w", t.Name, err)
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if err := putVersion(ctx, tx, v); err != nil {
			return err
		}
		return updateTemplate(ctx, tx, args, t.Gen)
	})
	if err != nil {
		return errorf("sqlite: swap template %s to version %d: %w", t.Name, v.Version, err)
	}
	t.Gen++
	return nil
}

// ListTemplateVersions implements store.Store.
func (s *Store) ListTemplateVersions(ctx context.Context, name string) ([]store.TemplateVersion, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+versionColumns+` FROM template_versions
		WHERE template = ? ORDER BY version`, name)
	if err != nil {
		return nil, errorf("sqlite: list template %s versions: %w", name, err)
	}
	defer rows.Close()
	list := []store.TemplateVersion{}
	for rows.Next() {
		var (
			v                store.TemplateVersion
			created, updated sql.NullInt64
		)
		if err := rows.Scan(&v.Template, &v.Version, &v.State, &v.Commit, &v.Base, &v.Reason, &v.Error,
			&v.BuildMillis, &created, &updated, &v.Snapshot, &v.StoredManifest, &v.Log); err != nil {
			return nil, errorf("sqlite: list template %s versions: %w", name, err)
		}
		v.CreatedAt, v.UpdatedAt = decodeTime(created), decodeTime(updated)
		if len(v.Snapshot) == 0 {
			v.Snapshot = nil
		}
		list = append(list, v)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list template %s versions: %w", name, err)
	}
	return list, nil
}

// putVersion upserts v, failing with ErrNotFound if its template is missing.
func putVersion(ctx context.Context, tx *sql.Tx, v store.TemplateVersion) error {
	created, err := encodeTime(v.CreatedAt)
	if err != nil {
		return fmt.Errorf("created_at: %w", err)
	}
	updated, err := encodeTime(v.UpdatedAt)
	if err != nil {
		return fmt.Errorf("updated_at: %w", err)
	}
	var one int
	err = tx.QueryRowContext(ctx, `SELECT 1 FROM templates WHERE name = ?`, v.Template).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return store.ErrNotFound
	}
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO template_versions (`+versionColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (template, version) DO UPDATE SET
			state = excluded.state, commit_sha = excluded.commit_sha, base = excluded.base,
			reason = excluded.reason, error = excluded.error, build_millis = excluded.build_millis,
			created_at = excluded.created_at, updated_at = excluded.updated_at, snapshot = excluded.snapshot,
			stored_manifest = excluded.stored_manifest, build_log = excluded.build_log`,
		v.Template, v.Version, v.State, v.Commit, v.Base, v.Reason, v.Error,
		v.BuildMillis, created, updated, encodeBlob(v.Snapshot), v.StoredManifest, v.Log)
	return err
}
