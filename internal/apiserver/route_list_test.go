package apiserver

import (
	"context"
	"slices"
	"testing"

	"github.com/cove-dev/cove/api"
)

// TestFakeRouteListPages: GET /v1/sessions?limit=N&after=TOKEN through
// any server (C runs no node) pages through the sessions of both nodes
// from the store, in List's order: the pages, followed by their next
// tokens, give the whole list once; a session made between pages comes
// in a later one and one removed moves no other; a bad token or limit is
// a 400; the client's ListSessions follows the pages.
func TestFakeRouteListPages(t *testing.T) {
	r := newRouteRig(t)
	a, b, c := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false)
	ctx := context.Background()
	for i := range 7 {
		via := []*routeServer{a, b, c}[i%3]
		if _, err := via.client.CreateSession(ctx, api.CreateSessionRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := c.client.ListSessions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := ids(all)
	if len(want) != 7 {
		t.Fatalf("list: %v; want the 7 made", want)
	}
	for _, limit := range []int{1, 3, 7, 8} {
		var got []string
		after := ""
		for range 10 {
			page, next, err := c.client.ListSessionsPage(ctx, after, limit)
			if err != nil {
				t.Fatalf("limit %d, after %q: %v", limit, after, err)
			}
			if len(page) > limit {
				t.Fatalf("limit %d: a page of %d", limit, len(page))
			}
			got = append(got, ids(page)...)
			if next == "" {
				break
			}
			after = next
		}
		if !slices.Equal(got, want) {
			t.Errorf("limit %d: pages give %v, want %v", limit, got, want)
		}
	}
	// Between pages: the first page's last session removed, one made.
	page, next, err := a.client.ListSessionsPage(ctx, "", 3)
	if err != nil || len(page) != 3 || next == "" {
		t.Fatalf("first page: %v, %q, %v", ids(page), next, err)
	}
	if err := b.client.DeleteSession(ctx, page[2].ID); err != nil {
		t.Fatal(err)
	}
	s, err := b.client.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	rest, err := c.client.ListSessions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for after := next; after != ""; {
		var p []api.Session
		p, after, err = b.client.ListSessionsPage(ctx, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ids(p)...)
	}
	if wantRest := ids(rest)[2:]; !slices.Equal(got, wantRest) || got[len(got)-1] != s.ID {
		t.Errorf("after the first page, with its last removed and one made: %v, want %v (the new one last)", got, wantRest)
	}
	for _, q := range []struct {
		after string
		limit int
	}{{"", 0}, {"", 1001}, {"not-a-token", 2}, {"Zm9v", 2}} {
		if _, _, err := c.client.ListSessionsPage(ctx, q.after, q.limit); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("list after %q, limit %d: %v; want 400", q.after, q.limit, err)
		}
	}
	for _, id := range ids(rest) {
		if err := c.client.DeleteSession(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

// ids is the ids of list, in its order.
func ids(list []api.Session) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = s.ID
	}
	return out
}
