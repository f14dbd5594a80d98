package postgres_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/postgres"
)

// openFails opens dbURL, wanting an error that says each of want and
// never password; it returns the error.
func openFails(t *testing.T, dbURL, password string, want ...string) error {
	t.Helper()
	// The store bounds its connects itself (10 s); this deadline only
	// keeps a broken one from hanging the test, and is told apart below.
	// It is under pgxpool's own bound (2 minutes), so that a store that
	// set none fails here.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	st, err := postgres.Open(ctx, dbURL)
	if err == nil {
		st.Close()
		t.Fatalf("Open(%s) succeeded", dbURL)
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		t.Fatalf("Open hung until the test's deadline: %v", err)
	}
	msg := err.Error()
	t.Logf("error: %s", msg)
	if password != "" && strings.Contains(msg, password) {
		t.Errorf("error shows the password %q: %s", password, msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not say %q", msg, w)
		}
	}
	return err
}

// withPassword is srv's URL of db with another password.
func withPassword(srv *pgtest.Server, db, password string) string {
	u, _ := url.Parse(srv.URL(db))
	u.User = url.UserPassword(srv.User, password)
	return u.String()
}

// A wrong password is called one, and never shown.
func TestOpenWrongPassword(t *testing.T) {
	srv := pgtest.Shared(t)
	const wrong = "not-the-Password-42"
	openFails(t, withPassword(srv, "postgres", wrong), wrong, "wrong password", `user "cove"`, "127.0.0.1:"+strconv.Itoa(srv.Port))
}

// A database that does not exist is called missing.
func TestOpenMissingDatabase(t *testing.T) {
	srv := pgtest.Shared(t)
	openFails(t, srv.URL("no_such_db"), srv.Password, `"no_such_db"`, "does not exist")
}

// A port nothing listens on fails at once, saying the server cannot be
// reached and where it was looked for.
func TestOpenUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	const pw = "s3cret-pw-unreachable"
	openFails(t, "postgres://cove:"+pw+"@"+addr+"/db?sslmode=disable", pw, "cannot reach", addr)
}

// A server that accepts connections and never answers (a hung host, a
// black-holed route) fails within the store's connect timeout rather than
// hanging Open; the URL's connect_timeout sets that timeout.
func TestOpenSilentServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var held []net.Conn // accepted and never answered
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	const pw = "s3cret-pw-silent"
	for _, q := range []string{"&connect_timeout=1", ""} { // "": the store's own timeout
		err = openFails(t, "postgres://cove:"+pw+"@"+l.Addr().String()+"/db?sslmode=disable"+q, pw, "cannot reach")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error = %v, want a connect timeout", err)
		}
	}
}

// A URL that does not parse says so, and shows no password.
func TestOpenBadURL(t *testing.T) {
	const pw = "s3cret-pw-bad"
	for _, u := range []string{
		"postgres://cove:" + pw + "@127.0.0.1:notaport/db",
		"postgres://cove:" + pw + "@127.0.0.1:5432/db?sslmode=sometimes",
		"mysql://cove:" + pw + "@127.0.0.1/db",
		// pgx's own message quotes net/url's, which holds the whole URL.
		"postgres://cove:" + pw + "@[::1/db",
		"postgres://cove:" + pw + "@127.0.0.1:5432/db?sslmode=disable%zz",
	} {
		openFails(t, u, pw, "bad database URL")
	}
}

// Passwords with bytes that break a URL or a keyword=value string (an
// '@', a space, a quote) are not shown, whole or in part, when the
// string does not parse.
func TestOpenBadURLHidesOddPasswords(t *testing.T) {
	for _, pw := range []string{"p@ss:w/rd#1", "p@ssw0rd!", "a b@cde", "zz]qq@xyz", "it's-me"} {
		for _, u := range []string{
			"postgres://cove:" + pw + "@[::1/db",
			"postgres://cove:" + pw + "@127.0.0.1:5432/db?x=%zz",
			"host=127.0.0.1 password=" + pw + " port=x",
			"host=127.0.0.1 password='" + pw + "' port=x",
		} {
			_, err := postgres.Open(t.Context(), u)
			if err == nil {
				t.Fatalf("Open(%q) succeeded", u)
			}
			for _, piece := range strings.FieldsFunc(pw, func(r rune) bool { return strings.ContainsRune("@:/ '", r) }) {
				if len(piece) >= 3 && strings.Contains(err.Error(), piece) {
					t.Errorf("Open(%q) = %v: shows %q of the password", u, err, piece)
				}
			}
		}
	}
}

// An unreachable server at Open is ErrUnavailable's kind of failure: it
// may pass. (A wrong password or a missing database is not.)
func TestOpenErrorsAreUnavailableOnlyWhenTheyMayPass(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = postgres.Open(t.Context(), "postgres://cove:x@"+addr+"/db?sslmode=disable")
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("unreachable: %v, want ErrUnavailable", err)
	}
	srv := pgtest.Shared(t)
	_, err = postgres.Open(t.Context(), withPassword(srv, "postgres", "wrong"))
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("wrong password: %v, want an error that is not ErrUnavailable", err)
	}
}
