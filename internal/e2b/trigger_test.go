package e2b_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/trigger"
)

// TestFakePauseUntilEvent drives the triggers extension over HTTP in
// front of the real session manager over the fake guest: a pause with
// {"cove": {"until": […]}} parks the sandbox until a matching event,
// getInfo shows what it waits for (under "cove", which the SDK does not
// read), the event wakes it, and the end-time sweep then gives it the
// time a resume gives. A pause as the SDK sends it is unchanged, and bad
// extensions are 400 and change nothing.
func TestFakePauseUntilEvent(t *testing.T) {
	e := newFakeEnv(t)
	ctx := t.Context()
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":60}`)
	pause := "/sandboxes/" + sbx.SandboxID + "/pause"
	for what, body := range map[string]string{
		"no events nor timeout": `{"cove":{}}`,
		"a bad expression":      `{"cove":{"until":["deploys:"]}}`,
		"a bad timeout":         `{"cove":{"until":["deploys:done"],"timeout":"forever"}}`,
		"a timeout too long":    `{"cove":{"timeout":"10000h"}}`,
		"broken JSON":           `{"cove":`,
	} {
		e.refused(what, http.StatusBadRequest, e.alice, "POST", pause, body)
	}
	e.refused("bob's pause of alice's sandbox", http.StatusForbidden, e.bob, "POST", pause, `{"cove":{"until":["deploys:done"]}}`)
	e.refused("an unknown sandbox", http.StatusNotFound, e.alice, "POST", "/sandboxes/s-nosuch/pause", `{"cove":{"until":["deploys:done"]}}`)
	if s, err := e.mgr.Get(ctx, sbx.SandboxID); err != nil || s.State != api.StateRunning {
		t.Fatalf("after refused pauses: %+v, %v; want it running", s, err)
	}

	until := []string{"deploys:deploy-done env=staging"}
	e.ok(nil, http.StatusNoContent, e.alice, "POST", pause, `{"cove":{"until":["deploys:deploy-done env=staging"],"timeout":"6h"}}`)
	var info struct {
		State string    `json:"state"`
		EndAt time.Time `json:"endAt"`
		Cove  *struct {
			Waiting *api.Waiting `json:"waiting"`
		} `json:"cove"`
	}
	e.ok(&info, http.StatusOK, e.alice, "GET", "/sandboxes/"+sbx.SandboxID, "")
	if info.State != "paused" || info.Cove == nil || info.Cove.Waiting == nil || !slices.Equal(info.Cove.Waiting.Until, until) || info.Cove.Waiting.Deadline == nil {
		t.Fatalf("getInfo of the sandbox paused until an event: %+v", info)
	}
	createdEnd := info.EndAt

	go e.e2b.Run(ctx, 50*time.Millisecond)
	// The event wakes it (as a webhook's would: cove's receiver hands it
	// to the session manager).
	ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"deploy-done","env":"staging"}`))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = "d1", time.Now()
	if dup, err := e.mgr.Accept(ctx, ev); err != nil || dup {
		t.Fatalf("accept: dup %v, %v", dup, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		info.Cove = nil // absent fields leave a decoded struct's alone
		e.ok(&info, http.StatusOK, e.alice, "GET", "/sandboxes/"+sbx.SandboxID, "")
		x, err := e.st.GetE2BSandbox(ctx, sbx.SandboxID)
		var rec struct {
			EventWake bool `json:"eventWake"`
		}
		if err == nil && json.Unmarshal(x.Record, &rec) == nil && info.State == "running" && !rec.EventWake {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after the matching event: %+v, record %s (%v)", info, x.Record, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if info.Cove != nil {
		t.Errorf("a running sandbox shows a wait: %+v", *info.Cove.Waiting)
	}
	// It ends a resume's time after the wake, no longer at the create's
	// end time (which the 6 h wait may have passed).
	if !info.EndAt.After(createdEnd) || info.EndAt.Before(time.Now().Add(4*time.Minute)) {
		t.Errorf("end time after the wake: %s (the create's: %s); want about five minutes from now", info.EndAt, createdEnd)
	}
	// A pause as the SDK sends it is the plain pause.
	e.ok(nil, http.StatusNoContent, e.alice, "POST", pause, `{"memory":false}`)
	info.Cove = nil
	e.ok(&info, http.StatusOK, e.alice, "GET", "/sandboxes/"+sbx.SandboxID, "")
	if info.State != "paused" || info.Cove != nil {
		t.Errorf("after a plain pause: %+v", info)
	}
}
