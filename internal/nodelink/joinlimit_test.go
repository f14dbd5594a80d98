package nodelink

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Joins with bad join tokens are limited per source: past the burst,
// every join from that address (the right token too) is 429 with
// Retry-After and stores nothing, until its bucket refills; another
// address joins meanwhile; a right token takes nothing from the bucket.
func TestJoinRateLimit(t *testing.T) {
	st := openStore(t)
	f := newFixture(t, st, testJoinToken)
	var mu sync.Mutex
	now := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	f.hub.cfg.Now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	good := `{"name":"n1","capacity":{"vcpus":1}}`
	for i := range JoinFailuresBurst {
		resp := postJoin(t, f, "wrong", good)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("bad join %d: %s, want 401", i, resp.Status)
		}
		resp.Body.Close()
	}
	for _, token := range []string{"wrong", testJoinToken} {
		resp := postJoin(t, f, token, good)
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("join (token %q) past the burst: %s, want 429", token, resp.Status)
		}
		if ra := resp.Header.Get("Retry-After"); ra != "6" {
			t.Errorf("Retry-After %q, want 6", ra)
		}
		if e := errorOf(t, resp); e.Code != "too_many_requests" || !strings.Contains(e.Message, "too many joins with a bad join token from 127.0.0.1") {
			t.Errorf("429's error: %+v", e)
		}
	}
	if nodes, err := st.ListNodes(context.Background()); err != nil || len(nodes) != 0 {
		t.Fatalf("nodes after refused joins: %v, %v", nodes, err)
	}

	// Another address is heard.
	req := httptest.NewRequest("POST", JoinPath, strings.NewReader(`{"name":"n2","capacity":{"vcpus":1}}`))
	req.RemoteAddr = "192.0.2.7:40000"
	req.Header.Set("Authorization", "Bearer "+testJoinToken)
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	f.hub.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("join from another address: %d %s", rec.Code, rec.Body)
	}

	// One failure's worth later, the right token joins, and takes
	// nothing: the next bad one is still heard (401), then 429.
	mu.Lock()
	now = now.Add(JoinFailureEvery)
	mu.Unlock()
	joinHTTP(t, f, "n1", testJoinToken)
	for _, want := range []int{http.StatusUnauthorized, http.StatusTooManyRequests} {
		resp := postJoin(t, f, "wrong", good)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("bad join after the refill: %s, want %d", resp.Status, want)
		}
	}
}
