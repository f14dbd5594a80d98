package apiserver

import (
	"context"
	"reflect"
	"testing"

	"github.com/cove-dev/cove/api"
)

// POST /v1/admin/gc runs the server's GC and answers what it did; a
// server with no object store to collect answers 503. (Who may ask is
// TestCrossEngineerDenied's.)
func TestCollectGarbageRoute(t *testing.T) {
	calls := 0
	want := api.GCResult{ManifestsKept: 4, ManifestsDeleted: 1, ChunksKept: 9, ChunksYoung: 2, ChunksDeleted: 3, BytesDeleted: 4096, Broken: []string{"ab12"}}
	e := newEnv(t, func(c *Config) {
		c.GC = func(context.Context) (api.GCResult, error) {
			calls++
			return want, nil
		}
	})
	if got := decode[api.GCResult](t, e.do("POST", "/v1/admin/gc", nil), 200); !reflect.DeepEqual(got, want) || calls != 1 {
		t.Fatalf("POST /v1/admin/gc: %+v after %d calls; want %+v after 1", got, calls, want)
	}
	wantError(t, newEnv(t).do("POST", "/v1/admin/gc", nil), 503, api.CodeUnavailable)
}
