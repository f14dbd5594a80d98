package routing_test

import (
	"context"
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
	}
	for i := range nodes {
		nodes[i].JoinedAt, nodes[i].HeartbeatAt = now, now
		if err := st.CreateNode(ctx, &nodes[i]); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"here", "other", "nourl", "dead", "remote", "gone", ""} {
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
		{"node-here", "s-dead", "", "", false},   // moved here by the wake
		{"node-here", "s-gone", "", "", false},   // a removed node: as a dead one
		{"node-here", "s-remote", "", "", false}, // remote nodes hold none yet
		{"node-here", "s-", "", "", false},       // from before nodes: the embedded node's
		{"node-here", "s-unknown", "", "", false},
		{"", "s-other", "http://10.0.0.2:7070", "", false},
		{"", "s-dead", "http://10.0.0.1:7070", "", false}, // the first live node that takes sessions, by name
		{"", "s-gone", "http://10.0.0.1:7070", "", false},
		{"", "s-", "http://10.0.0.1:7070", "", false},
		// The E2B API's: the same holders, at their E2B URLs.
		{"node-here", "s-here", "", "", true},
		{"node-here", "s-other", "http://10.0.0.2:3000", "", true},
		{"node-here", "s-nourl", "", "--e2b-advertise-url", true},
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
