package session_test

import (
	"flag"
	"os"
	"strconv"
	"testing"
)

// fakeParallel is how many parallel tests of this package run at once
// unless -parallel says otherwise. The TestFake* tests (and the other
// tests that boot no VM) call t.Parallel, but for those that time
// sub-second heartbeats or answers: over the fake driver they spend their
// time waiting (on a loop's tick, a lease, a grace period, a crash hook),
// not on a CPU, so running more of them than there are cores (go test's
// default) is what cuts this package's time. The tests that boot QEMU
// guests run one at a time, before them (see parallelVM).
const fakeParallel = 8

func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		if err := flag.Set("test.parallel", strconv.Itoa(fakeParallel)); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
