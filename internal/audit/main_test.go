package audit

import (
	"io"
	"os"
	"testing"

	"k8s.io/klog/v2"
)

// TestMain quiets tessera's klog lines (a directory initialised, a
// checkpoint not found yet), which drown the tests' own output. Started as
// one of the crash tests' child processes, the binary runs that child
// instead of the tests (so no test shows as skipped).
func TestMain(m *testing.M) {
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
	}
	if p := os.Getenv(lockChildEnv); p != "" {
		lockChild(p)
	}
	os.Exit(m.Run())
}
