package routing_test

import (
	"context"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// Where a call about a session goes, for each kind of node that holds
// it, from a server with a node and from one without.
func TestSession(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC()
	nodes := []store.Node{
		{ID: "node-here", Name: "here", Embedded: true, URL: "http://10.0.0.1:7070", E2BURL: "http://10.0.0.1:3000"},
		{ID: "node-other", Name: "other", Embedded: true, URL: "http://10.0.0.2:7070", E2BURL: "http://10.0.0.2:3000"},
		{ID: "node-nourl", Name: "nourl", Embedded: true},
		{ID: "node-dead", Name: "dead", Embedded: true, URL: "http://10.0.0.4:7070", Dead: true},
		{ID: "node-remote", Name: "remote", CredentialHash: "ab"},
		{ID: "node-cordoned", Name: "a-cordoned", Embedded: true, URL: "http://10.0.0.6:7070", Admin: store.NodeCordoned},
		// A 'cove node' serving sessions, its link held by the server at
		// its URL.
		{ID: "node-linked", Name: "linked", CredentialHash: "cd", URL: "http://10.0.0.7:7070"},
	}
	for i := range nodes {
		nodes[i].JoinedAt, nodes[i].HeartbeatAt = now, now
		if err := st.CreateNode(ctx, &nodes[i]); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"here", "other", "nourl", "dead", "remote", "linked", "gone", ""} {
		node := "node-" + n
		if n == "" {
			node = ""
		}
		s := store.Session{ID: "s-" + n, State: api.StateParked, Image: "tiny", MemoryMiB: 64, CPUs: 1, Node: node, CreatedAt: now, UpdatedAt: now}
		if err := st.CreateSession(ctx, &s); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		from, session string
		want          string // "" here, else the target's URL
		err           string
		e2b           bool // NewE2B's: to the nodes' E2B URLs
	}{
		{"node-here", "s-here", "", "", false},
		{"node-here", "s-other", "http://10.0.0.2:7070", "", false},
		{"node-here", "s-nourl", "", "advertises no URL (--advertise-url)", false},
		{"node-here", "s-dead", "", "", false}, // moved here by the wake
		{"node-here", "s-gone", "", "", false}, // a removed node: as a dead one
		{"node-here", "s-remote", "", "a 'cove node' no server reaches now", false},
		{"", "s-remote", "", "a 'cove node' no server reaches now", false},
		{"node-here", "s-linked", "http://10.0.0.7:7070", "", false},
		{"", "s-linked", "http://10.0.0.7:7070", "", false},
		{"node-linked", "s-linked", "", "", false}, // the node's own API
		{"node-here", "s-", "", "", false},         // from before nodes: the embedded node's
		{"node-here", "s-unknown", "", "", false},
		{"", "s-other", "http://10.0.0.2:7070", "", false},
		{"", "s-dead", "http://10.0.0.1:7070", "", false}, // the first live node that takes sessions, by name
		{"", "s-gone", "http://10.0.0.1:7070", "", false},
		{"", "s-", "http://10.0.0.1:7070", "", false},
		// The E2B API's: the same holders, at their E2B URLs.
		{"node-here", "s-here", "", "", true},
		{"node-here", "s-other", "http://10.0.0.2:3000", "", true},
		{"node-here", "s-nourl", "", "--e2b-advertise-url", true},
		{"node-here", "s-linked", "", "serves no E2B API", true},
		{"node-here", "s-dead", "", "", true},
		{"", "s-other", "http://10.0.0.2:3000", "", true},
		{"", "s-dead", "http://10.0.0.1:3000", "", true},
	}
	for _, c := range cases {
		r := routing.New(st, c.from)
		if c.e2b {
			r = routing.NewE2B(st, c.from)
		}
		got, ok, err := r.Session(ctx, c.session)
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) || !api.IsCode(err, api.CodeUnavailable) {
				t.Errorf("from %q, %s: %v, want a 503 saying %q", c.from, c.session, err, c.err)
			}
		case err != nil:
			t.Errorf("from %q, %s: %v", c.from, c.session, err)
		case c.want == "" && ok:
			t.Errorf("from %q, %s: routed to %s, want here", c.from, c.session, got.URL)
		case c.want != "" && (!ok || got.URL.String() != c.want):
			t.Errorf("from %q, %s: %+v (%v), want %s", c.from, c.session, got, ok, c.want)
		}
	}
}

// Where a drain of each kind of node goes, by id or name: to the
// node's own server while it is alive and reachable, else here.
func TestDrain(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC()
	for _, n := range []store.Node{
		{ID: "node-here", Name: "here", Embedded: true, URL: "http://10.0.0.1:7070"},
		{ID: "node-other", Name: "other", Embedded: true, URL: "http://10.0.0.2:7070"},
		{ID: "node-nourl", Name: "nourl", Embedded: true},
		{ID: "node-dead", Name: "dead", Embedded: true, URL: "http://10.0.0.4:7070", Dead: true},
		{ID: "node-remote", Name: "remote", CredentialHash: "ab"},
		{ID: "node-cordoned", Name: "cordoned", Embedded: true, URL: "http://10.0.0.6:7070", Admin: store.NodeCordoned},
		{ID: "node-linked", Name: "linked", CredentialHash: "cd", URL: "http://10.0.0.7:7070"},
	} {
		n.JoinedAt, n.HeartbeatAt = now, now
		if err := st.CreateNode(ctx, &n); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ from, node, want string }{
		{"node-here", "here", ""},
		{"node-here", "node-other", "http://10.0.0.2:7070"},
		{"node-here", "other", "http://10.0.0.2:7070"},
		{"", "other", "http://10.0.0.2:7070"},
		{"", "here", "http://10.0.0.1:7070"},
		{"", "cordoned", "http://10.0.0.6:7070"},
		{"node-here", "nourl", ""},
		{"node-here", "dead", ""},
		{"node-here", "remote", ""},
		{"node-here", "linked", "http://10.0.0.7:7070"}, // relayed to the node, which parks its sessions
		{"", "linked", "http://10.0.0.7:7070"},
		{"node-linked", "linked", ""},
		{"node-here", "unknown", ""},
	} {
		got, ok, err := routing.New(st, c.from).Drain(ctx, c.node)
		switch {
		case err != nil:
			t.Errorf("from %q, drain %s: %v", c.from, c.node, err)
		case c.want == "" && ok:
			t.Errorf("from %q, drain %s: routed to %s, want here", c.from, c.node, got.URL)
		case c.want != "" && (!ok || got.URL.String() != c.want):
			t.Errorf("from %q, drain %s: %+v (%v), want %s", c.from, c.node, got, ok, c.want)
		}
	}
}

func TestParseURL(t *testing.T) {
	for _, ok := range []string{"http://10.0.0.1:7070", "https://cove-a.internal", "http://h:1/prefix"} {
		if _, err := routing.ParseURL(ok); err != nil {
			t.Errorf("ParseURL(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "10.0.0.1:7070", "ftp://h", "http://", "http://h?x=1", "http://u:p@h"} {
		if _, err := routing.ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) accepted", bad)
		}
	}
}

// Which calls for a linked node a server carries (LinkedHere): relayed
// over the node's connection when it is here and the node's record names
// this server (or either URL is missing); answered here (503) when the
// connection dropped but the record names this server; left to the
// server the record names otherwise, a stale connection here included.
func TestLinkedHere(t *testing.T) {
	own := routing.OwnURL("http://cove-a:7070/")
	if own == nil || routing.OwnURL("") != nil || routing.OwnURL("not a url") != nil {
		t.Fatalf("OwnURL: %v, want cove-a's, and nil for none or a bad one", own)
	}
	this, _ := routing.ParseURL("http://COVE-A:7070")
	other, _ := routing.ParseURL("http://cove-b:7070")
	for _, c := range []struct {
		name             string
		url              *url.URL
		connected        bool
		own              *url.URL
		wantRelay, wantH bool
	}{
		{"connected, names this server", this, true, own, true, true},
		{"connected, no URL recorded", nil, true, own, true, true},
		{"connected, this server has no URL", other, true, nil, true, true},
		{"connected here, names another (stale)", other, true, own, false, false},
		{"dropped, names this server", this, false, own, false, true},
		{"not connected, names another", other, false, own, false, false},
		{"not connected, no URL", nil, false, own, false, false},
		{"not connected, this server has no URL", this, false, nil, false, false},
	} {
		relay, here := routing.LinkedHere(routing.Target{NodeID: "n1", URL: c.url}, c.connected, c.own)
		if relay != c.wantRelay || here != c.wantH {
			t.Errorf("%s: relay %v, here %v; want %v, %v", c.name, relay, here, c.wantRelay, c.wantH)
		}
	}
}

// Where a call that may wake a session goes (Router.Wake): a parked,
// stored session of a draining node wakes on a node that takes sessions
// (the reached server's own, else the first live one by name, the
// draining node's own server included); a cordoned node's wakes back on
// it, and so does a draining node's that is not stored, or not parked.
func TestWake(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC()
	nodes := []store.Node{
		{ID: "node-drain", Name: "a-drain", Embedded: true, URL: "http://10.0.0.1:7070", Admin: store.NodeDraining},
		{ID: "node-cordon", Name: "b-cordon", Embedded: true, URL: "http://10.0.0.2:7070", Admin: store.NodeCordoned},
		{ID: "node-ready", Name: "c-ready", Embedded: true, URL: "http://10.0.0.3:7070"},
	}
	for i := range nodes {
		nodes[i].JoinedAt, nodes[i].HeartbeatAt = now, now
		if err := st.CreateNode(ctx, &nodes[i]); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []store.Session{
		{ID: "s-drained", Node: "node-drain", State: api.StateParked, StoredManifest: "m1"},
		{ID: "s-unstored", Node: "node-drain", State: api.StateParked},
		{ID: "s-running", Node: "node-drain", State: api.StateRunning},
		{ID: "s-cordoned", Node: "node-cordon", State: api.StateParked, StoredManifest: "m2"},
	} {
		s.Image, s.MemoryMiB, s.CPUs, s.CreatedAt, s.UpdatedAt = "tiny", 64, 1, now, now
		if err := st.CreateSession(ctx, &s); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		from, session string
		want          string // "" here, else the target's URL
	}{
		{"node-ready", "s-drained", ""},                      // moved here by the wake
		{"node-drain", "s-drained", "http://10.0.0.3:7070"},  // its own server sends it away
		{"node-cordon", "s-drained", "http://10.0.0.3:7070"}, // a cordoned node takes none
		{"", "s-drained", "http://10.0.0.3:7070"},            // a server with no node
		{"node-ready", "s-unstored", "http://10.0.0.1:7070"}, // its files are on its node alone
		{"node-drain", "s-unstored", ""},                     // wakes back there
		{"node-ready", "s-running", "http://10.0.0.1:7070"},  // nothing to move
		{"node-ready", "s-cordoned", "http://10.0.0.2:7070"}, // cordoned: wakes back on it
		{"node-cordon", "s-cordoned", ""},
	}
	for _, c := range cases {
		tg, ok, err := routing.New(st, c.from).Wake(ctx, c.session)
		got := ""
		if ok {
			got = tg.URL.String()
		}
		if err != nil || got != c.want {
			t.Errorf("from %q, wake %s: %q, %v; want %q", c.from, c.session, got, err, c.want)
		}
		// A call that wakes nothing goes to the holder, as before.
		if tg, ok, err := routing.New(st, c.from).Session(ctx, c.session); c.session == "s-drained" && c.from == "node-drain" && (ok || err != nil) {
			t.Errorf("from its own server, a call about %s that wakes nothing: %v, %v, %v; want here", c.session, tg, ok, err)
		}
	}
	// No other node takes sessions: the draining node's server wakes it.
	n, err := st.GetNode(ctx, "node-ready")
	if err != nil {
		t.Fatal(err)
	}
	n.Admin = store.NodeCordoned
	if err := st.UpdateNode(ctx, &n); err != nil {
		t.Fatal(err)
	}
	if tg, ok, err := routing.New(st, "node-drain").Wake(ctx, "s-drained"); ok || err != nil {
		t.Errorf("no other node takes sessions: %v, %v, %v; want here", tg, ok, err)
	}
	if tg, ok, err := routing.New(st, "node-ready").Wake(ctx, "s-drained"); !ok || err != nil || tg.NodeID != "node-drain" {
		t.Errorf("no other node takes sessions, from another: %v, %v, %v; want the holder's", tg, ok, err)
	}
	// A 'cove node' serving sessions takes it, at its URL.
	linked := store.Node{ID: "node-linked", Name: "d-linked", CredentialHash: "cd", URL: "http://10.0.0.4:7070", JoinedAt: now, HeartbeatAt: now}
	if err := st.CreateNode(ctx, &linked); err != nil {
		t.Fatal(err)
	}
	if tg, ok, err := routing.New(st, "node-drain").Wake(ctx, "s-drained"); !ok || err != nil || tg.NodeID != "node-linked" {
		t.Errorf("a remote node serving sessions takes it: %v, %v, %v; want node-linked", tg, ok, err)
	}
}
