package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/store"
)

const versionColumns = `template, version, state, commit_sha, base, reason, error,
	build_millis, created_at, updated_at, snapshot, stored_manifest, build_log`

// PutTemplateVersion implements store.Store.
func (s *Store) PutTemplateVersion(ctx context.Context, v store.TemplateVersion) error {
	if err := s.inTx(ctx, func(tx pgx.Tx) error { return putVersion(ctx, tx, v) }); err != nil {
		return s.errorf("postgres: put template %s version %d: %w", v.Template, v.Version, err)
	}
	return nil
}

// SwapTemplateVersion implements store.Store.
func (s *Store) SwapTemplateVersion(ctx context.Context, t *store.Template, v store.TemplateVersion) error {
	if v.Template != t.Name {
		return s.errorf("postgres: swap template %s: version is of template %q", t.Name, v.Template)
	}
	args, err := templateArgs(*t)
	if err != nil {
		return s.errorf("postgres: swap template %s: %w", t.Name, err)
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		if err := putVersion(ctx, tx, v); err != nil {
			return err
		}
		return updateTemplate(ctx, tx, args, t.Gen)
	})
	if err != nil {
		return s.errorf("postgres: swap template %s to version %d: %w", t.Name, v.Version, err)
	}
	t.Gen++
	return nil
}

// ListTemplateVersions implements store.Store.
func (s *Store) ListTemplateVersions(ctx context.Context, name string) ([]store.TemplateVersion, error) {
	out, err := query(ctx, s, scanVersion, `SELECT `+versionColumns+` FROM template_versions
		WHERE template = $1 ORDER BY version`, name)
	if err != nil {
		return nil, s.errorf("postgres: list template %s versions: %w", name, err)
	}
	return out, nil
}

func scanVersion(sc pgx.Row) (store.TemplateVersion, error) {
	var (
		v                store.TemplateVersion
		created, updated *int64
	)
	if err := sc.Scan(&v.Template, &v.Version, &v.State, &v.Commit, &v.Base, &v.Reason, &v.Error,
		&v.BuildMillis, &created, &updated, &v.Snapshot, &v.StoredManifest, &v.Log); err != nil {
		return store.TemplateVersion{}, err
	}
	v.CreatedAt, v.UpdatedAt = decodeTime(created), decodeTime(updated)
	if len(v.Snapshot) == 0 {
		v.Snapshot = nil
	}
	return v, nil
}

// putVersion upserts v, failing with ErrNotFound if its template is
// missing. The template's row is locked (FOR SHARE) until tx ends, so
// that a DeleteTemplate on another server waits rather than leaves a
// version of a template that is gone.
func putVersion(ctx context.Context, tx pgx.Tx, v store.TemplateVersion) error {
	created, err := encodeTime(v.CreatedAt)
	if err != nil {
		return fmt.Errorf("created_at: %w", err)
	}
	updated, err := encodeTime(v.UpdatedAt)
	if err != nil {
		return fmt.Errorf("updated_at: %w", err)
	}
	var one int
	if err := tx.QueryRow(ctx, `SELECT 1 FROM templates WHERE name = $1 FOR SHARE`, v.Template).Scan(&one); err != nil {
		return notFound(err)
	}
	_, err = tx.Exec(ctx, `INSERT INTO template_versions (`+versionColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
		ON CONFLICT (template, version) DO UPDATE SET
			state = excluded.state, commit_sha = excluded.commit_sha, base = excluded.base,
			reason = excluded.reason, error = excluded.error, build_millis = excluded.build_millis,
			created_at = excluded.created_at, updated_at = excluded.updated_at, snapshot = excluded.snapshot,
			stored_manifest = excluded.stored_manifest, build_log = excluded.build_log`,
		v.Template, v.Version, v.State, v.Commit, v.Base, v.Reason, errorText(v.Error),
		v.BuildMillis, created, updated, encodeBlob(v.Snapshot), v.StoredManifest, errorText(v.Log))
	return err
}
