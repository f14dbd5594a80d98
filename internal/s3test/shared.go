package s3test

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/cove-dev/cove/internal/testenv"
)

// shared is the one server of a test binary, started by the first test
// that asks for it and stopped by Main.
var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Shared returns the test binary's server, starting it (and building weed)
// on first use. Where it cannot be had, the test skips, or fails under CI.
// The package's TestMain must call Main so that the server is stopped.
func Shared(t testing.TB) *Server {
	t.Helper()
	shared.once.Do(func() {
		shared.srv, shared.err = Start(context.Background(), os.Stderr)
	})
	if shared.err != nil {
		testenv.Skipf(t, "no S3 server: %v", shared.err)
	}
	return shared.srv
}

// Main runs the tests and stops the shared server, if one was started.
func Main(m *testing.M) {
	os.Exit(Run(m))
}

// Run is Main for a TestMain that has more to clean up before it exits:
// it runs the tests, stops the shared server and returns the exit code.
func Run(m *testing.M) int {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Stop()
	}
	return code
}

// Setenv gives objstore.Open the server's credentials for the rest of t.
func (s *Server) Setenv(t testing.TB) {
	t.Helper()
	for k, v := range s.Env() {
		t.Setenv(k, v)
	}
	t.Setenv("AWS_SESSION_TOKEN", "")
}
