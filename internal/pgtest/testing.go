package pgtest

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/cove-dev/cove/internal/testenv"
)

// The package's shared server, started by the first Shared.
var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Main runs a package's tests (m.Run) and then stops the shared server, if
// one was started; its result is the exit code. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Close()
	}
	return code
}

// Shared returns the server that the package's tests share, starting it
// at the first call. Where PostgreSQL is not installed the test is skipped
// (failed under CI: testenv.Skipf). The package's TestMain must call Main,
// which stops it.
func Shared(t testing.TB) *Server {
	t.Helper()
	shared.once.Do(func() {
		shared.srv, shared.err = Start(context.Background())
	})
	check(t, shared.err)
	return shared.srv
}

// Fresh starts a server of the test's own, for a test that stops and
// starts it, and closes it when the test ends. It skips as Shared does.
func Fresh(t testing.TB) *Server {
	t.Helper()
	s, err := Start(t.Context())
	check(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// check ends t if err, the error of starting a server, is one.
func check(t testing.TB, err error) {
	t.Helper()
	switch {
	case errors.Is(err, ErrNotInstalled):
		testenv.Skipf(t, "%v", err)
	case err != nil:
		t.Fatal(err)
	}
}

// NewDatabase makes a fresh, empty database on the shared server for t
// and returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	s := Shared(t)
	name, err := s.CreateDatabase(t.Context(), dbPrefix(t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	return s.URL(name)
}

var notWord = regexp.MustCompile(`[^a-z0-9_]+`)

// dbPrefix is a test's name made fit for a database name's start.
func dbPrefix(test string) string {
	p := notWord.ReplaceAllString(strings.ToLower(test), "_")
	if len(p) > 40 {
		p = p[len(p)-40:]
	}
	return "t_" + strings.Trim(p, "_")
}
