package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"unicode/utf8"

	"github.com/cove-dev/cove/internal/store"
)

// inTx runs f in a transaction, committing if it returns nil and rolling
// back otherwise. Transactions take the write lock at BEGIN (see dsn), so f
// sees no other writer.
func (s *Store) inTx(ctx context.Context, f func(tx *sql.Tx) error) (err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	if err := f(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

const eventColumns = `seq, source, id, name, fields, body, received`

// RecordEvent implements store.Store.
//
// Events recorded at the same time share a transaction (a group commit):
// each is written under a savepoint of its own, so one that fails or is a
// duplicate leaves the others as they are, and all of them return once the
// one commit is durable. Under a burst of webhooks the commit's WAL write
// and fsync, most of an event's cost alone, are paid once per batch.
func (s *Store) RecordEvent(ctx context.Context, ev store.Event, sessions []string) (store.Event, []string, bool, error) {
	fail := func(err error) (store.Event, []string, bool, error) {
		return store.Event{}, nil, false, errorf("sqlite: record event %s/%s: %w", ev.Source, ev.ID, err)
	}
	fields, err := encodeFields(ev.Fields)
	if err != nil {
		return fail(fmt.Errorf("fields: %w", err))
	}
	received, err := encodeTime(ev.Received)
	if err != nil {
		return fail(fmt.Errorf("received: %w", err))
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	r := &eventWrite{ctx: ctx, ev: ev, sessions: sessions, fields: fields, received: received,
		lead: make(chan struct{}), done: make(chan struct{})}
	s.events.run(ctx, r, s.writeEvents)
	switch {
	case errors.Is(r.err, errDup):
		return r.rec, nil, true, nil
	case r.err != nil:
		return fail(r.err)
	}
	return r.rec, r.delivered, false, nil
}

// eventWrite is one RecordEvent waiting for, or in, a group commit.
type eventWrite struct {
	ctx      context.Context // the caller's: a write whose caller gave up is skipped
	ev       store.Event
	sessions []string
	fields   any // encoded for the database
	received any

	lead chan struct{} // closed when this write is to run the next batch
	done chan struct{} // closed when the results below are set

	rec       store.Event
	delivered []string
	err       error // errDup for a duplicate
}

// groupCommit batches the eventWrites that arrive while a batch commits.
// The first write finding no batch under way runs one with everything
// queued; when it is done it hands the lead to the oldest write queued
// meanwhile, so no caller runs batches but its own.
type groupCommit struct {
	mu      sync.Mutex
	queue   []*eventWrite // guarded by mu
	leading bool          // guarded by mu: a batch is being written
}

// run queues w and returns once its results are set: by a batch another
// write leads, or by one w leads itself. A batch does not stop for the
// leader's context: the writes of others are in it.
func (g *groupCommit) run(ctx context.Context, w *eventWrite, write func(context.Context, []*eventWrite)) {
	g.mu.Lock()
	g.queue = append(g.queue, w)
	lead := !g.leading
	g.leading = true
	g.mu.Unlock()
	if !lead {
		select {
		case <-w.done:
			return
		case <-w.lead:
		}
	}
	g.mu.Lock()
	batch := g.queue
	g.queue = nil
	g.mu.Unlock()
	// Whatever happens to the batch, its writes are answered and the lead
	// passes on: a panic in it must not leave every later write waiting.
	defer func() {
		if p := recover(); p != nil {
			for _, b := range batch {
				b.rec, b.delivered, b.err = store.Event{}, nil, fmt.Errorf("group commit: panic: %v", p)
			}
			g.finish(batch)
			panic(p)
		}
		g.finish(batch)
	}()
	write(context.WithoutCancel(ctx), batch)
}

// finish answers a written batch and hands the lead to the oldest write
// queued meanwhile, if any.
func (g *groupCommit) finish(batch []*eventWrite) {
	for _, b := range batch {
		close(b.done)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.queue) > 0 {
		close(g.queue[0].lead)
	} else {
		g.leading = false
	}
}

// writeEvents writes a batch of events in one transaction, each under a
// savepoint, and sets each write's results. If the commit fails, every
// write in the batch fails with it, duplicates too: one may be of an event
// first written in this batch, and a sender told "duplicate" would not try
// again.
func (s *Store) writeEvents(ctx context.Context, batch []*eventWrite) {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		for _, w := range batch {
			if w.err = w.ctx.Err(); w.err != nil {
				continue // changes nothing
			}
			if _, err := tx.ExecContext(ctx, `SAVEPOINT event`); err != nil {
				return fmt.Errorf("savepoint: %w", err)
			}
			w.rec, w.delivered, w.err = writeEvent(ctx, tx, w)
			if w.err != nil {
				w.delivered = nil
				if _, err := tx.ExecContext(ctx, `ROLLBACK TO event`); err != nil {
					return fmt.Errorf("roll back to savepoint: %w", err)
				}
			}
			if _, err := tx.ExecContext(ctx, `RELEASE event`); err != nil {
				return fmt.Errorf("release savepoint: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		for _, w := range batch {
			if !skipped(w) {
				w.rec, w.delivered, w.err = store.Event{}, nil, err
			}
		}
	}
}

// skipped reports whether w was left out of its batch because its caller
// had given up: its error is its context's (the batch itself runs on a
// context that is never canceled).
func skipped(w *eventWrite) bool {
	return errors.Is(w.err, context.Canceled) || errors.Is(w.err, context.DeadlineExceeded)
}

// writeEvent records one event and claims its sessions' subscriptions in
// tx; errDup if the event was recorded before (then it wrote nothing).
func writeEvent(ctx context.Context, tx *sql.Tx, w *eventWrite) (store.Event, []string, error) {
	ev := w.ev
	row := tx.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events
		WHERE source = ? AND id = ?`, ev.Source, ev.ID)
	old, err := scanEvent(row)
	switch {
	case err == nil:
		return old, nil, errDup
	case !errors.Is(err, sql.ErrNoRows):
		return store.Event{}, nil, fmt.Errorf("look up: %w", err)
	}

	res, err := tx.ExecContext(ctx, `INSERT INTO events (source, id, name, fields, body, received)
		VALUES (?, ?, ?, ?, ?, ?)`,
		ev.Source, ev.ID, ev.Name, w.fields, encodeBlob(ev.Body), w.received)
	if err != nil {
		return store.Event{}, nil, fmt.Errorf("insert: %w", err)
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return store.Event{}, nil, fmt.Errorf("insert: last insert id: %w", err)
	}
	var delivered []string
	for _, id := range w.sessions {
		// Deleting the subscription claims it: a session listed twice,
		// or one without a subscription, deletes nothing.
		res, err := tx.ExecContext(ctx, `DELETE FROM subscriptions WHERE session_id = ?`, id)
		if err != nil {
			return store.Event{}, nil, fmt.Errorf("claim subscription of %s: %w", id, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return store.Event{}, nil, fmt.Errorf("claim subscription of %s: rows affected: %w", id, err)
		}
		if n == 0 {
			continue
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO deliveries
			(event_seq, session_id, state, error, created_at, updated_at)
			VALUES (?, ?, ?, '', ?, ?)`,
			seq, id, store.DeliveryPending, w.received, w.received); err != nil {
			return store.Event{}, nil, fmt.Errorf("insert delivery to %s: %w", id, err)
		}
		delivered = append(delivered, id)
	}
	// Read back what was written: it is a copy, in the form every other
	// read gives.
	rec, err := scanEvent(tx.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events
		WHERE seq = ?`, seq))
	if err != nil {
		return store.Event{}, nil, fmt.Errorf("read back: %w", err)
	}
	return rec, delivered, nil
}

// errDup ends RecordEvent's transaction, changing nothing, when the event
// was recorded before.
var errDup = errors.New("duplicate event")

// GetEvent implements store.Store.
func (s *Store) GetEvent(ctx context.Context, seq int64) (store.Event, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events WHERE seq = ?`, seq)
	ev, err := scanEvent(row)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Event{}, errorf("sqlite: get event %d: %w", seq, err)
	}
	return ev, nil
}

func scanEvent(sc scanner) (store.Event, error) {
	var (
		ev       store.Event
		fields   sql.NullString
		received sql.NullInt64
	)
	if err := sc.Scan(&ev.Seq, &ev.Source, &ev.ID, &ev.Name, &fields, &ev.Body, &received); err != nil {
		return store.Event{}, err
	}
	var err error
	if ev.Fields, err = decodeFields(fields); err != nil {
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
		return errorf("sqlite: put subscription %s: until: %w", sub.SessionID, err)
	}
	deadline, err := encodeTime(sub.Deadline)
	if err != nil {
		return errorf("sqlite: put subscription %s: deadline: %w", sub.SessionID, err)
	}
	created, err := encodeTime(sub.CreatedAt)
	if err != nil {
		return errorf("sqlite: put subscription %s: created_at: %w", sub.SessionID, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO subscriptions (`+subscriptionColumns+`)
		VALUES (?, ?, ?, ?)
		ON CONFLICT (session_id) DO UPDATE SET
			until = excluded.until, deadline = excluded.deadline,
			created_at = excluded.created_at`,
		sub.SessionID, until, deadline, created)
	if err != nil {
		return errorf("sqlite: put subscription %s: %w", sub.SessionID, err)
	}
	return nil
}

// GetSubscription implements store.Store.
func (s *Store) GetSubscription(ctx context.Context, sessionID string) (store.Subscription, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+subscriptionColumns+` FROM subscriptions
		WHERE session_id = ?`, sessionID)
	sub, err := scanSubscription(row)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Subscription{}, errorf("sqlite: get subscription %s: %w", sessionID, err)
	}
	return sub, nil
}

// DeleteSubscription implements store.Store.
func (s *Store) DeleteSubscription(ctx context.Context, sessionID string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM subscriptions WHERE session_id = ?`, sessionID)
	if err := oneRow(res, err, store.ErrNotFound); err != nil {
		return errorf("sqlite: delete subscription %s: %w", sessionID, err)
	}
	return nil
}

// ListSubscriptions implements store.Store.
func (s *Store) ListSubscriptions(ctx context.Context) ([]store.Subscription, error) {
	// NULL, the zero time, sorts first, as the zero time is earliest.
	rows, err := s.db.QueryContext(ctx, `SELECT `+subscriptionColumns+` FROM subscriptions
		ORDER BY created_at, session_id`)
	if err != nil {
		return nil, errorf("sqlite: list subscriptions: %w", err)
	}
	defer rows.Close()
	var list []store.Subscription
	for rows.Next() {
		sub, err := scanSubscription(rows)
		if err != nil {
			return nil, errorf("sqlite: list subscriptions: %w", err)
		}
		list = append(list, sub)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list subscriptions: %w", err)
	}
	return list, nil
}

func scanSubscription(sc scanner) (store.Subscription, error) {
	var (
		sub               store.Subscription
		until             sql.NullString
		deadline, created sql.NullInt64
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
	var (
		rows *sql.Rows
		err  error
	)
	if state == "" {
		rows, err = s.db.QueryContext(ctx, `SELECT `+deliveryColumns+` FROM deliveries
			ORDER BY event_seq, session_id`)
	} else {
		rows, err = s.db.QueryContext(ctx, `SELECT `+deliveryColumns+` FROM deliveries
			WHERE state = ? ORDER BY event_seq, session_id`, state)
	}
	if err != nil {
		return nil, errorf("sqlite: list deliveries %q: %w", state, err)
	}
	defer rows.Close()
	var list []store.Delivery
	for rows.Next() {
		var (
			d                store.Delivery
			created, updated sql.NullInt64
		)
		if err := rows.Scan(&d.EventSeq, &d.SessionID, &d.State, &d.Error, &created, &updated); err != nil {
			return nil, errorf("sqlite: list deliveries %q: %w", state, err)
		}
		d.CreatedAt = decodeTime(created)
		d.UpdatedAt = decodeTime(updated)
		list = append(list, d)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list deliveries %q: %w", state, err)
	}
	return list, nil
}

// UpdateDelivery implements store.Store.
func (s *Store) UpdateDelivery(ctx context.Context, d store.Delivery) error {
	updated, err := encodeTime(d.UpdatedAt)
	if err != nil {
		return errorf("sqlite: update delivery %d/%s: updated_at: %w", d.EventSeq, d.SessionID, err)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE deliveries SET state = ?, error = ?, updated_at = ?
		WHERE event_seq = ? AND session_id = ?`,
		d.State, d.Error, updated, d.EventSeq, d.SessionID)
	if err := oneRow(res, err, store.ErrNotFound); err != nil {
		return errorf("sqlite: update delivery %d/%s: %w", d.EventSeq, d.SessionID, err)
	}
	return nil
}

// DeleteSessionTriggers implements store.Store.
func (s *Store) DeleteSessionTriggers(ctx context.Context, sessionID string) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM subscriptions WHERE session_id = ?`, sessionID); err != nil {
			return fmt.Errorf("subscription: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM deliveries WHERE session_id = ?`, sessionID); err != nil {
			return fmt.Errorf("deliveries: %w", err)
		}
		return nil
	})
	if err != nil {
		return errorf("sqlite: delete triggers of session %s: %w", sessionID, err)
	}
	return nil
}

// PutHookSecret implements store.Store.
func (s *Store) PutHookSecret(ctx context.Context, name string, secret []byte) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO hooks (name, secret) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET secret = excluded.secret`,
		name, encodeBlob(secret))
	if err != nil {
		return errorf("sqlite: put hook %s: %w", name, err)
	}
	return nil
}

// GetHookSecret implements store.Store.
func (s *Store) GetHookSecret(ctx context.Context, name string) ([]byte, error) {
	var secret []byte
	err := s.db.QueryRowContext(ctx, `SELECT secret FROM hooks WHERE name = ?`, name).Scan(&secret)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, errorf("sqlite: get hook %s: %w", name, err)
	}
	if len(secret) == 0 {
		secret = nil
	}
	return secret, nil
}

// ListHooks implements store.Store.
func (s *Store) ListHooks(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name FROM hooks ORDER BY name`)
	if err != nil {
		return nil, errorf("sqlite: list hooks: %w", err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, errorf("sqlite: list hooks: %w", err)
		}
		names = append(names, name)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list hooks: %w", err)
	}
	return names, nil
}

// DeleteHook implements store.Store.
func (s *Store) DeleteHook(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM hooks WHERE name = ?`, name)
	if err := oneRow(res, err, store.ErrNotFound); err != nil {
		return errorf("sqlite: delete hook %s: %w", name, err)
	}
	return nil
}

// encodeFields is fields as a JSON object, or NULL if it is empty. JSON
// would silently replace bytes that are not UTF-8, so those are refused.
func encodeFields(fields map[string]string) (any, error) {
	if len(fields) == 0 {
		return nil, nil
	}
	for k, v := range fields {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fmt.Errorf("field %q is not valid UTF-8", k)
		}
	}
	b, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

// decodeFields undoes encodeFields.
func decodeFields(s sql.NullString) (map[string]string, error) {
	return decodeEnv(s) // the same encoding
}
