// Package testenv decides what a test may do when its machine lacks
// something: skip, saying why, on a developer's machine; fail under CI,
// where a skipped test would leave a promise untested while the run stays
// green.
package testenv

import (
	"fmt"
	"os"
	"testing"
)

// CI reports whether the tests run under CI (the CI environment variable is
// set, as .ci/run and every CI service set it).
func CI() bool { return os.Getenv("CI") != "" }

// Skipf skips the test with the reason given, or, under CI, fails it with
// that reason: 'make deps' (which .ci/run's make test runs) must make every
// precondition true there.
func Skipf(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatalf("%s (CI is set: tests never skip there; 'make deps' should provide this)", msg)
	}
	t.Skip("skipping: " + msg)
}
