package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/store"
)

const eventColumns = `seq, source, id, name, fields, body, received`

// eventLock is the key of the advisory lock RecordEvent holds from before
// it takes a Seq until it commits. Events are then recorded one at a time
// across every server on the database, so that Seq increases in the order
// events are committed: a reader that has seen Seq n never later finds a
// new event below n. Webhooks arrive at rates where this costs nothing.
const eventLock = migrationLock + 1

// RecordEvent implements store.Store.
//
// Claiming a subscription is deleting it: of two events, on two servers,
// claiming one subscription, the second's DELETE waits for the first to
// commit and then finds nothing to delete.
func (s *Store) RecordEvent(ctx context.Context, ev store.Event, sessions []string) (store.Event, []string, bool, error) {
	fail := func(err error) (store.Event, []string, bool, error) {
		return store.Event{}, nil, false, s.errorf("postgres: record event %s/%s: %w", ev.Source, ev.ID, err)
	}
	fields, err := encodeMap("field", ev.Fields)
	if err != nil {
		return fail(fmt.Errorf("fields: %w", err))
	}
	received, err := encodeTime(ev.Received)
	if err != nil {
		return fail(fmt.Errorf("received: %w", err))
	}
	var (
		rec       store.Event
		delivered []string
		dup       bool
	)
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		rec, delivered, dup = store.Event{}, nil, false
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(eventLock)); err != nil {
			return fmt.Errorf("take the event lock: %w", err)
		}
		var err error
		rec, err = scanEvent(tx.QueryRow(ctx, `INSERT INTO events (source, id, name, fields, body, received)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (source, id) DO NOTHING
			RETURNING `+eventColumns,
			ev.Source, ev.ID, ev.Name, fields, encodeBlob(ev.Body), received))
		if errors.Is(err, pgx.ErrNoRows) {
			// Recorded before: return that one, changing nothing.
			dup = true
			rec, err = scanEvent(tx.QueryRow(ctx, `SELECT `+eventColumns+` FROM events
				WHERE source = $1 AND id = $2`, ev.Source, ev.ID))
			if err != nil {
				return fmt.Errorf("look up: %w", err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		if len(sessions) == 0 {
			return nil
		}
		claimed, err := list(ctx, tx, scanString, `WITH claimed AS (
				DELETE FROM subscriptions WHERE session_id = ANY($2::text[]) RETURNING session_id)
			INSERT INTO deliveries (event_seq, session_id, state, error, created_at, updated_at)
			SELECT $1::bigint, session_id, $3::text, '', $4::bigint, $4::bigint FROM claimed
			RETURNING session_id`, rec.Seq, sessions, store.DeliveryPending, received)
		if err != nil {
			return fmt.Errorf("claim subscriptions: %w", err)
		}
		// In the order given, once each.
		for _, id := range sessions {
			if slices.Contains(claimed, id) && !slices.Contains(delivered, id) {
				delivered = append(delivered, id)
			}
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	return rec, delivered, dup, nil
}

func scanString(sc pgx.Row) (string, error) {
	var s string
	err := sc.Scan(&s)
	return s, err
}

// GetEvent implements store.Store.
func (s *Store) GetEvent(ctx context.Context, seq int64) (store.Event, error) {
	ev, err := scanEvent(s.queryRow(ctx, `SELECT `+eventColumns+` FROM events WHERE seq = $1`, seq))
	if err != nil {
		return store.Event{}, s.errorf("postgres: get event %d: %w", seq, notFound(err))
	}
	return ev, nil
}

func scanEvent(sc pgx.Row) (store.Event, error) {
	var (
		ev       store.Event
		fields   *string
		received *int64
	)
	if err := sc.Scan(&ev.Seq, &ev.Source, &ev.ID, &ev.Name, &fields, &ev.Body, &received); err != nil {
		return store.Event{}, err
	}
	var err error
	if ev.Fields, err = decodeMap(fields); err != nil {
		return store.Event{}, fmt.Errorf("event %d: fields: %w", ev.Seq, err)
	}
	ev.Received = decodeTime(received)
	if len(ev.Body) == 0 {
		ev.Body = nil
	}
	return ev, nil
}

const subscriptionColumns = `session_id, until, deadline, created_at`

// PutSubscription implements store.Store.
func (s *Store) PutSubscription(ctx context.Context, sub store.Subscription) error {
	until, err := encodeStrings("expression", sub.Until)
	if err != nil {
		return s.errorf("postgres: put subscription %s: until: %w", sub.SessionID, err)
	}
	deadline, err := encodeTime(sub.Deadline)
	if err != nil {
		return s.errorf("postgres: put subscription %s: deadline: %w", sub.SessionID, err)
	}
	created, err := encodeTime(sub.CreatedAt)
	if err != nil {
		return s.errorf("postgres: put subscription %s: created_at: %w", sub.SessionID, err)
	}
	_, err = s.exec(ctx, `INSERT INTO subscriptions (`+subscriptionColumns+`)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (session_id) DO UPDATE SET
			until = excluded.until, deadline = excluded.deadline,
			created_at = excluded.created_at`,
		sub.SessionID, until, deadline, created)
	if err != nil {
		return s.errorf("postgres: put subscription %s: %w", sub.SessionID, err)
	}
	return nil
}

// GetSubscription implements store.Store.
func (s *Store) GetSubscription(ctx context.Context, sessionID string) (store.Subscription, error) {
	sub, err := scanSubscription(s.queryRow(ctx, `SELECT `+subscriptionColumns+` FROM subscriptions
		WHERE session_id = $1`, sessionID))
	if err != nil {
		return store.Subscription{}, s.errorf("postgres: get subscription %s: %w", sessionID, notFound(err))
	}
	return sub, nil
}

// DeleteSubscription implements store.Store.
func (s *Store) DeleteSubscription(ctx context.Context, sessionID string) error {
	tag, err := s.exec(ctx, `DELETE FROM subscriptions WHERE session_id = $1`, sessionID)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: delete subscription %s: %w", sessionID, err)
	}
	return nil
}

// ListSubscriptions implements store.Store.
func (s *Store) ListSubscriptions(ctx context.Context) ([]store.Subscription, error) {
	// NULL, the zero time, sorts first, as the zero time is earliest.
	out, err := query(ctx, s, scanSubscription, `SELECT `+subscriptionColumns+` FROM subscriptions
		ORDER BY created_at NULLS FIRST, session_id`)
	if err != nil {
		return nil, s.errorf("postgres: list subscriptions: %w", err)
	}
	return out, nil
}

func scanSubscription(sc pgx.Row) (store.Subscription, error) {
	var (
		sub               store.Subscription
		until             *string
		deadline, created *int64
	)
	if err := sc.Scan(&sub.SessionID, &until, &deadline, &created); err != nil {
		return store.Subscription{}, err
	}
	var err error
	if sub.Until, err = decodeStrings(until); err != nil {
		return store.Subscription{}, fmt.Errorf("subscription %s: until: %w", sub.SessionID, err)
	}
	sub.Deadline = decodeTime(deadline)
	sub.CreatedAt = decodeTime(created)
	return sub, nil
}

const deliveryColumns = `event_seq, session_id, state, error, created_at, updated_at`

// ListDeliveries implements store.Store.
func (s *Store) ListDeliveries(ctx context.Context, state string) ([]store.Delivery, error) {
	q, args := `SELECT `+deliveryColumns+` FROM deliveries ORDER BY event_seq, session_id`, []any(nil)
	if state != "" {
		q, args = `SELECT `+deliveryColumns+` FROM deliveries WHERE state = $1 ORDER BY event_seq, session_id`, []any{state}
	}
	out, err := query(ctx, s, scanDelivery, q, args...)
	if err != nil {
		return nil, s.errorf("postgres: list deliveries %q: %w", state, err)
	}
	return out, nil
}

func scanDelivery(sc pgx.Row) (store.Delivery, error) {
	var (
		d                store.Delivery
		created, updated *int64
	)
	if err := sc.Scan(&d.EventSeq, &d.SessionID, &d.State, &d.Error, &created, &updated); err != nil {
		return store.Delivery{}, err
	}
	d.CreatedAt = decodeTime(created)
	d.UpdatedAt = decodeTime(updated)
	return d, nil
}

// UpdateDelivery implements store.Store.
func (s *Store) UpdateDelivery(ctx context.Context, d store.Delivery) error {
	updated, err := encodeTime(d.UpdatedAt)
	if err != nil {
		return s.errorf("postgres: update delivery %d/%s: updated_at: %w", d.EventSeq, d.SessionID, err)
	}
	tag, err := s.exec(ctx, `UPDATE deliveries SET state = $1, error = $2, updated_at = $3
		WHERE event_seq = $4 AND session_id = $5`,
		d.State, errorText(d.Error), updated, d.EventSeq, d.SessionID)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: update delivery %d/%s: %w", d.EventSeq, d.SessionID, err)
	}
	return nil
}

// DeleteSessionTriggers implements store.Store.
func (s *Store) DeleteSessionTriggers(ctx context.Context, sessionID string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM subscriptions WHERE session_id = $1`, sessionID); err != nil {
			return fmt.Errorf("subscription: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM deliveries WHERE session_id = $1`, sessionID); err != nil {
			return fmt.Errorf("deliveries: %w", err)
		}
		return nil
	})
	if err != nil {
		return s.errorf("postgres: delete triggers of session %s: %w", sessionID, err)
	}
	return nil
}

// PutHookSecret implements store.Store.
func (s *Store) PutHookSecret(ctx context.Context, name string, secret []byte) error {
	_, err := s.exec(ctx, `INSERT INTO hooks (name, secret) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET secret = excluded.secret`,
		name, encodeBlob(secret))
	if err != nil {
		return s.errorf("postgres: put hook %s: %w", name, err)
	}
	return nil
}

// GetHookSecret implements store.Store.
func (s *Store) GetHookSecret(ctx context.Context, name string) ([]byte, error) {
	var secret []byte
	if err := s.queryRow(ctx, `SELECT secret FROM hooks WHERE name = $1`, name).Scan(&secret); err != nil {
		return nil, s.errorf("postgres: get hook %s: %w", name, notFound(err))
	}
	if len(secret) == 0 {
		secret = nil
	}
	return secret, nil
}

// ListHooks implements store.Store.
func (s *Store) ListHooks(ctx context.Context) ([]string, error) {
	out, err := query(ctx, s, scanString, `SELECT name FROM hooks ORDER BY name`)
	if err != nil {
		return nil, s.errorf("postgres: list hooks: %w", err)
	}
	return out, nil
}

// DeleteHook implements store.Store.
func (s *Store) DeleteHook(ctx context.Context, name string) error {
	tag, err := s.exec(ctx, `DELETE FROM hooks WHERE name = $1`, name)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: delete hook %s: %w", name, err)
	}
	return nil
}
