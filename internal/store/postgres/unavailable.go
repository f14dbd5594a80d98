package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cove-dev/cove/internal/store"
)

// errorf is fmt.Errorf for the errors the Store's methods return: an
// argument that is an error from PostgreSQL or the connection to it is
// first replaced by classify's wrapping of it, so that the returned error
// wraps store.ErrUnavailable, ErrExists or ErrNotFound where it means
// that, and says why.
func (s *Store) errorf(format string, args ...any) error {
	for i, a := range args {
		if err, ok := a.(error); ok {
			args[i] = s.classify(err)
		}
	}
	return fmt.Errorf(format, args...)
}

// classify wraps err with what it means for the store's callers:
//   - store.ErrExists for a unique key another row holds;
//   - store.ErrNotFound for a row that a foreign key needs and is gone;
//   - store.ErrUnavailable, and the cause in words, where the database
//     cannot be used for now rather than the call being wrong: the server
//     cannot be reached or went away, is starting or shutting down, is
//     read-only, out of disk or memory, or timed out a lock.
//
// A broken connection resets the pool, so that the next call dials afresh
// instead of meeting the pool's other connections to the server that went
// away. Any other err comes back as it is.
func (s *Store) classify(err error) error {
	if errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrExists) ||
		errors.Is(err, store.ErrNotFound) || errors.Is(err, context.Canceled) ||
		errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok && !isConnect(err) {
		switch {
		case pe.Code == "23505": // unique_violation
			return fmt.Errorf("%w (%s)", store.ErrExists, pe.ConstraintName)
		case pe.Code == "23503": // foreign_key_violation
			return fmt.Errorf("%w (%s)", store.ErrNotFound, pe.ConstraintName)
		case pe.Code == "22021" || pe.Code == "22P05": // character_not_in_repertoire, untranslatable_character
			return fmt.Errorf("a text field holds a NUL or bytes that are not UTF-8, which PostgreSQL's text cannot: %w", err)
		}
		why := unavailableCode(pe.Code)
		if why == "" {
			return err
		}
		if strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P") {
			s.pool.Reset()
		}
		return fmt.Errorf("%w: %s (%w)", store.ErrUnavailable, why, err)
	}
	if why := connectionLost(err); why != "" {
		s.pool.Reset()
		return fmt.Errorf("%w: %s (%w)", store.ErrUnavailable, why, err)
	}
	return err
}

// unavailableCode says, in words, why the server could not do a
// statement for now if the SQLSTATE code says so, and is "" otherwise.
func unavailableCode(code string) string {
	switch {
	case strings.HasPrefix(code, "08"): // connection_exception
		return "the connection to the database server failed"
	case code == "57P01" || code == "57P02": // admin_shutdown, crash_shutdown
		return "the database server is shutting down or restarting"
	case code == "57P03": // cannot_connect_now
		return "the database server is starting up"
	case code == "57014": // query_canceled, not by ctx: statement_timeout
		return "the database server canceled the statement (statement_timeout)"
	case code == "55P03": // lock_not_available
		return "a lock another session holds was not released in time (lock_timeout)"
	case code == "25006": // read_only_sql_transaction
		return "the database is read-only (a standby, or default_transaction_read_only)"
	case code == "53100": // disk_full
		return "the disk holding the database is full"
	case strings.HasPrefix(code, "53"): // insufficient_resources
		return "the database server is out of resources (memory or connections)"
	case strings.HasPrefix(code, "58"): // system_error, io_error
		return "the database server cannot read or write its files"
	case code == "40001" || code == "40P01": // after inTx's retries
		return "too many concurrent writers conflicted (serialization failures or deadlocks)"
	}
	return ""
}

// isConnect reports whether err is a failure to connect.
func isConnect(err error) bool {
	_, ok := errors.AsType[*pgconn.ConnectError](err)
	return ok
}

// connectionLost says why, in words, if err means that no connection to
// the server could be made or one broke, and is "" otherwise.
func connectionLost(err error) string {
	switch {
	case isConnect(err):
		return "cannot connect to the database server"
	case errors.Is(err, pgconn.ErrConnClosed):
		return "the connection to the database server was closed"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return "the connection to the database server broke"
	case pgconn.Timeout(err):
		return "the database server did not answer in time"
	}
	if _, ok := errors.AsType[net.Error](err); ok {
		return "the network to the database server failed"
	}
	return ""
}
