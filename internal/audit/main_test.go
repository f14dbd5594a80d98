package audit

import (
	"io"
	"os"
	"testing"

	"k8s.io/klog/v2"
)

// TestMain quiets tessera's klog lines (a directory initialised, a
// checkpoint not found yet), which drown the tests' own output.
func TestMain(m *testing.M) {
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	os.Exit(m.Run())
}
