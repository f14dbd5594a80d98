package apiserver

import (
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestManagerTemplatePoolAndLog: in front of the real manager on the fake
// VMM, PUT /v1/templates/NAME/pool sizes the warm pool (it fills to the
// size, then shrinks to a smaller one); bad sizes, a missing or unknown
// field and a body that is not JSON are 400 and an unknown template 404,
// each changing nothing; and a template's versions carry their build's
// log, a good build's too: each setup command's line, output and exit.
func TestManagerTemplatePoolAndLog(t *testing.T) {
	e, _, _ := newManagerEnv(t)
	req := api.CreateTemplateRequest{Name: "py", Setup: []string{"echo setting up py", "touch /root/ready"}}
	decode[api.Template](t, e.doJSON("POST", "/v1/templates", req), 201)

	vs := decode[templateVersionList](t, e.do("GET", "/v1/templates/py/versions", nil), 200).Versions
	want := "$ echo setting up py\nsetting up py\n(exit 0)\n$ touch /root/ready\n(exit 0)\n"
	if len(vs) != 1 || vs[0].State != api.VersionReady || vs[0].Log != want {
		t.Fatalf("versions after create: %+v; want one ready version whose log is %q", vs, want)
	}

	poolReady := func(n int) api.Template {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			tp := decode[api.Template](t, e.do("GET", "/v1/templates/py", nil), 200)
			if tp.PoolReady == n {
				return tp
			}
			if time.Now().After(deadline) {
				t.Fatalf("pool: %d of %d ready, want %d ready", tp.PoolReady, tp.Pool, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if tp := decode[api.Template](t, e.doJSON("PUT", "/v1/templates/py/pool", map[string]int{"size": 2}), 200); tp.Pool != 2 {
		t.Fatalf("PUT pool 2: %+v", tp)
	}
	poolReady(2)
	if tp := decode[api.Template](t, e.doJSON("PUT", "/v1/templates/py/pool", map[string]int{"size": 1}), 200); tp.Pool != 1 || tp.PoolReady != 1 {
		t.Fatalf("PUT pool 1: pool %d, %d ready; want 1, 1 (the extra clone stopped at once)", tp.Pool, tp.PoolReady)
	}

	for _, bad := range []struct{ body, msg string }{
		{`{"size": -1}`, "size -1: want 0..64"},
		{`{"size": 65}`, "size 65: want 0..64"},
		{`{}`, "size: required"},
		{`{"size": 2, "extra": 1}`, "extra"},
		{`{"size": "two"}`, ""},
		{`size=2`, ""},
	} {
		got := wantError(t, e.do("PUT", "/v1/templates/py/pool", strings.NewReader(bad.body), "Content-Type", "application/json"), 400, api.CodeInvalid)
		if !strings.Contains(got.Message, bad.msg) {
			t.Errorf("PUT pool %s: %q, want it to say %q", bad.body, got.Message, bad.msg)
		}
	}
	wantError(t, e.doJSON("PUT", "/v1/templates/nope/pool", map[string]int{"size": 1}), 404, api.CodeNotFound)
	if tp := decode[api.Template](t, e.do("GET", "/v1/templates/py", nil), 200); tp.Pool != 1 {
		t.Errorf("after the refusals the pool is %d, want 1", tp.Pool)
	}
	decode[api.Template](t, e.doJSON("PUT", "/v1/templates/py/pool", map[string]int{"size": 0}), 200)
	poolReady(0)
}
