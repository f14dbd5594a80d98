package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// The node commands against a fake API: what they send and print.
func TestNodeCommands(t *testing.T) {
	a := api.Node{ID: "node-aaaaaaaaaaaa", Name: "host-a", State: api.NodeReady, Embedded: true,
		Capacity:    api.NodeCapacity{VCPUs: 16, MemoryMiB: 64 << 10, Accel: "kvm"},
		HeartbeatAt: testNow.Add(-4 * time.Second), Sessions: 3, Running: 2}
	b := api.Node{ID: "node-bbbbbbbbbbbb", Name: "host-b", State: api.NodeDead,
		Capacity: api.NodeCapacity{VCPUs: 2, MemoryMiB: 2048, Accel: "tcg"}}
	var posted []string
	var created api.CreateSessionRequest
	addr := fakeAPI(t, map[string]http.HandlerFunc{
		"GET /v1/nodes": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, api.NodeList{Nodes: []api.Node{a, b}})
		},
		"GET /v1/nodes/{id}": func(w http.ResponseWriter, r *http.Request) {
			if id := r.PathValue("id"); id != a.Name && id != a.ID {
				writeError(w, api.CodeNotFound, "no node "+id)
				return
			}
			writeJSON(w, 200, a)
		},
		"POST /v1/nodes/{id}/{verb}": func(w http.ResponseWriter, r *http.Request) {
			posted = append(posted, r.PathValue("verb")+" "+r.PathValue("id"))
			switch r.PathValue("verb") {
			case "drain":
				d := a
				d.State = api.NodeDraining
				writeJSON(w, 200, api.DrainResult{Node: d, Parked: 2, Errors: []string{"s-x: guest did not answer"}})
			case "cordon":
				c := a
				c.State = api.NodeCordoned
				writeJSON(w, 200, c)
			default:
				writeJSON(w, 200, a)
			}
		},
		"DELETE /v1/nodes/{id}": func(w http.ResponseWriter, r *http.Request) {
			writeError(w, api.CodeConflict, "node host-a holds 3 sessions")
		},
		"POST /v1/sessions": func(w http.ResponseWriter, r *http.Request) {
			json.NewDecoder(r.Body).Decode(&created)
			writeJSON(w, 201, api.Session{ID: "new1", State: api.StateRunning})
		},
	})

	code, out, errOut := runCLI(t, addr, "", "node", "ls")
	if code != 0 {
		t.Fatalf("node ls: exit %d, %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "NAME ID STATE VCPUS MEMORY ACCEL SESSIONS HEARTBEAT" ||
		strings.Join(strings.Fields(lines[1]), " ") != "host-a node-aaaaaaaaaaaa ready 16 64GiB kvm 2/3 4s ago" ||
		strings.Join(strings.Fields(lines[2]), " ") != "host-b node-bbbbbbbbbbbb dead 2 2.0GiB tcg 0/0 -" {
		t.Errorf("node ls:\n%s", out)
	}
	code, out, _ = runCLI(t, addr, "", "node", "inspect", "host-a")
	var got api.Node
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.ID != a.ID {
		t.Errorf("node inspect: exit %d, %q", code, out)
	}
	if code, _, errOut = runCLI(t, addr, "", "node", "inspect", "nope"); code != 1 || !strings.Contains(errOut, "no node nope") {
		t.Errorf("node inspect nope: exit %d, %q", code, errOut)
	}
	if code, out, _ = runCLI(t, addr, "", "node", "cordon", "host-a"); code != 0 || out != "host-a (node-aaaaaaaaaaaa): cordoned\n" {
		t.Errorf("node cordon: exit %d, %q", code, out)
	}
	runCLI(t, addr, "", "node", "uncordon", "host-a")
	code, out, errOut = runCLI(t, addr, "", "node", "drain", "host-a")
	if code != 1 || !strings.Contains(out, "draining; parked 2 sessions") || !strings.Contains(errOut, "s-x: guest did not answer") {
		t.Errorf("node drain with a session not parked: exit %d, %q, %q", code, out, errOut)
	}
	if want := []string{"cordon host-a", "uncordon host-a", "drain host-a"}; strings.Join(posted, ",") != strings.Join(want, ",") {
		t.Errorf("posted %q, want %q", posted, want)
	}
	if code, _, errOut = runCLI(t, addr, "", "node", "rm", "host-a"); code != 1 || !strings.Contains(errOut, "holds 3 sessions") {
		t.Errorf("node rm: exit %d, %q", code, errOut)
	}

	if code, _, errOut = runCLI(t, addr, "", "session", "create", "--node-selector", "zone=eu,gpu=yes", "--node-selector", "disk=ssd"); code != 0 {
		t.Fatalf("create --node-selector: exit %d, %s", code, errOut)
	}
	if want := map[string]string{"zone": "eu", "gpu": "yes", "disk": "ssd"}; mustJSON(created.NodeSelector) != mustJSON(want) {
		t.Errorf("selector sent %v, want %v", created.NodeSelector, want)
	}
	if code, _, errOut = runCLI(t, addr, "", "session", "create", "--node-selector", "=x"); code != 2 || !strings.Contains(errOut, "want KEY=VALUE") {
		t.Errorf("create --node-selector =x: exit %d, %q", code, errOut)
	}
}
