package main

import (
	"net/http"
	"testing"

	"github.com/cove-dev/cove/api"
)

// cove admin gc asks the server for a GC and says what it did; --json
// prints the answer as it came.
func TestAdminGCCommand(t *testing.T) {
	calls := 0
	addr := fakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/admin/gc": func(w http.ResponseWriter, r *http.Request) {
			calls++
			writeJSON(w, 200, api.GCResult{ManifestsKept: 4, ManifestsDeleted: 1, ChunksKept: 9, ChunksYoung: 2, ChunksDeleted: 3, BytesDeleted: 3 << 20})
		},
	})
	code, out, errOut := runCLI(t, addr, "", "admin", "gc")
	want := "deleted 1 manifests and 3 chunks (3.0MiB); kept 4 manifests, 9 chunks, 2 chunks younger than the grace\n"
	if code != 0 || out != want || calls != 1 {
		t.Fatalf("admin gc: exit %d, stdout %q (stderr %q), %d calls; want %q, 1 call", code, out, errOut, calls, want)
	}
	code, out, _ = runCLI(t, addr, "", "admin", "gc", "--json")
	if code != 0 || out != `{
  "manifests_kept": 4,
  "manifests_deleted": 1,
  "chunks_kept": 9,
  "chunks_young": 2,
  "chunks_deleted": 3,
  "bytes_deleted": 3145728
}
` {
		t.Fatalf("admin gc --json: exit %d, stdout %q", code, out)
	}
}
