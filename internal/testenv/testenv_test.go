package testenv_test

import (
	"testing"

	"github.com/cove-dev/cove/internal/testenv"
)

// recorder is a testing.TB that records how the test ended.
type recorder struct {
	testing.TB
	failed, skipped bool
	msg             string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = true
	r.msg = format
	panic(r)
}
func (r *recorder) Skip(args ...any) {
	r.skipped = true
	panic(r)
}

func end(f func()) {
	defer func() { _ = recover() }()
	f()
}

func TestSkipfFailsUnderCI(t *testing.T) {
	t.Setenv("CI", "true")
	r := &recorder{TB: t}
	end(func() { testenv.Skipf(r, "no %s", "thing") })
	if !r.failed || r.skipped {
		t.Fatalf("under CI: failed=%v skipped=%v, want a failure", r.failed, r.skipped)
	}
}

func TestSkipfSkipsOutsideCI(t *testing.T) {
	t.Setenv("CI", "")
	r := &recorder{TB: t}
	end(func() { testenv.Skipf(r, "no %s", "thing") })
	if r.failed || !r.skipped {
		t.Fatalf("outside CI: failed=%v skipped=%v, want a skip", r.failed, r.skipped)
	}
}
