package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/cove-dev/cove/api"
)

// TestCreateRetriesWithItsKey: a create whose connection is cut before
// it is answered is sent once more, with the same Idempotency-Key, and
// its second answer is the one taken; a create answered with a 400 is
// not sent again.
func TestCreateRetriesWithItsKey(t *testing.T) {
	var (
		mu   sync.Mutex
		keys []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		keys = append(keys, r.Header.Get(api.IdempotencyHeader))
		n := len(keys)
		mu.Unlock()
		if strings.Contains(r.URL.Path, "bad") {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": api.CodeInvalid, "message": "bad"}})
			return
		}
		if n == 1 { // the answer lost: the connection cut
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		json.NewEncoder(w).Encode(api.Session{ID: "s-once", State: api.StateRunning})
	}))
	defer srv.Close()
	var stderr bytes.Buffer
	s, err := createOnce(context.Background(), api.NewClient(srv.URL, "tok"), api.CreateSessionRequest{}, &stderr)
	if err != nil || s.ID != "s-once" {
		t.Fatalf("create: %+v, %v; want s-once from the retry", s, err)
	}
	if len(keys) != 2 || keys[0] == "" || keys[0] != keys[1] {
		t.Fatalf("keys sent: %q; want the same one twice", keys)
	}
	if !strings.Contains(stderr.String(), "retrying once") {
		t.Errorf("stderr %q; want it to say the create was retried", stderr.String())
	}

	keys = nil
	bad := api.NewClient(srv.URL+"/bad", "tok")
	if _, err := createOnce(context.Background(), bad, api.CreateSessionRequest{}, &stderr); !api.IsCode(err, api.CodeInvalid) {
		t.Fatalf("create answered 400: %v", err)
	}
	if len(keys) != 1 {
		t.Errorf("a create answered 400 was sent %d times, want once", len(keys))
	}
}
