package sqlite

import (
	"errors"
	"fmt"

	"github.com/cove-dev/cove/internal/store"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// errorf is fmt.Errorf for the errors the Store's methods return: an
// argument that is an error SQLite gave because the database cannot be
// used for now is first replaced by unavailable's wrapping of it, so that
// the returned error wraps store.ErrUnavailable and says why.
func errorf(format string, args ...any) error {
	for i, a := range args {
		if err, ok := a.(error); ok {
			args[i] = unavailable(err)
		}
	}
	return fmt.Errorf(format, args...)
}

// unavailable wraps err with store.ErrUnavailable and the cause in words if
// SQLite's result code in it says that the database cannot be used for now
// rather than that the call was wrong: a lock another process held past
// the busy timeout, a read-only file, a full disk, an I/O error, a file
// that cannot be opened. Any other err comes back as it is.
func unavailable(err error) error {
	var se *msqlite.Error
	if errors.Is(err, store.ErrUnavailable) || !errors.As(err, &se) {
		return err
	}
	var why string
	switch se.Code() & 0xff { // the primary code of an extended one
	case sqlite3.SQLITE_BUSY:
		// All calls share one connection (see Store), so the holder is
		// another connection: another process, as a rule.
		why = "the database is locked by another process"
	case sqlite3.SQLITE_LOCKED:
		why = "the database is locked"
	case sqlite3.SQLITE_READONLY:
		why = "the database is read-only"
	case sqlite3.SQLITE_IOERR:
		why = "the database file cannot be written or read (is its file system read-only, or failing?)"
	case sqlite3.SQLITE_FULL:
		why = "the disk holding the database is full"
	case sqlite3.SQLITE_CANTOPEN:
		why = "the database file cannot be opened"
	default:
		return err
	}
	return fmt.Errorf("%w: %s (%w)", store.ErrUnavailable, why, err)
}
