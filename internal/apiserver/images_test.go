package apiserver

import (
	"bufio"
	"encoding/json"
	"errors"
	"testing"

	"github.com/cove-dev/cove/api"
)

func TestImagesListAndBuild(t *testing.T) {
	e := newEnv(t)
	list := decode[imageList](t, e.do("GET", "/v1/images", nil), 200)
	if len(list.Images) != 1 || list.Images[0].Name != "tiny" {
		t.Fatalf("list %+v", list)
	}

	e.images.set([]string{"fetch kernel", "pack rootfs"}, nil)
	evs := buildEvents(t, e, "tiny")
	if len(evs) != 3 || evs[0].Message != "fetch kernel" || evs[1].Type != "progress" ||
		evs[2].Type != "done" || evs[2].Image == nil || evs[2].Image.Name != "tiny" {
		t.Fatalf("events %+v", evs)
	}

	e.images.set(nil, errors.New("build: write /var/cache/cove/x: disk full"))
	evs = buildEvents(t, e, "tiny")
	last := evs[len(evs)-1]
	if last.Type != "error" || last.Error == nil || last.Error.Code != api.CodeInternal {
		t.Fatalf("last event %+v", last)
	}
}

func TestImagesWithoutBuilderAreUnavailable(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Images = nil })
	wantError(t, e.do("GET", "/v1/images", nil), 503, api.CodeUnavailable)
	wantError(t, e.do("POST", "/v1/images/tiny/build", nil), 503, api.CodeUnavailable)
}

func buildEvents(t *testing.T, e *testEnv, name string) []api.ImageBuildEvent {
	t.Helper()
	resp := e.do("POST", "/v1/images/"+name+"/build", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("build: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var evs []api.ImageBuildEvent
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ev api.ImageBuildEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("decode %q: %v", sc.Bytes(), err)
		}
		evs = append(evs, ev)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs
}
