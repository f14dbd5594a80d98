package dashboard_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/dashboard"
)

// auditAPI serves the /v1/audit routes the dashboard reads from a real
// audit log, for goodToken only; tamper changes the entry it lists.
type auditAPI struct {
	log    *audit.Log
	tamper bool
}

func (a *auditAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+goodToken {
		w.WriteHeader(http.StatusForbidden)
		_ = json.NewEncoder(w).Encode(api.ErrorResponse{Error: api.ErrorBody{Code: api.CodeForbidden, Message: "policy: audit.read denied"}})
		return
	}
	ctx := r.Context()
	switch {
	case r.URL.Path == "/v1/whoami":
		_ = json.NewEncoder(w).Encode(api.WhoAmI{Kind: "user", User: &api.User{Name: "alice"}, Scopes: []string{}})
	case r.URL.Path == "/v1/audit/key":
		_ = json.NewEncoder(w).Encode(api.AuditKey{Key: a.log.VerifierKey()})
	case r.URL.Path == "/v1/audit/entries":
		recs, err := a.log.Entries(ctx, 0, 10)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		var page api.AuditPage
		for _, rec := range recs {
			if r.URL.Query().Get("from") != "" && r.URL.Query().Get("from") != "0" && rec.Index == 0 {
				continue
			}
			data := rec.Data
			if a.tamper {
				data = []byte(strings.Replace(string(data), "session.park", "session.wake", 1))
			}
			page.Entries = append(page.Entries, api.AuditRecord{Index: rec.Index, LeafHash: hex.EncodeToString(rec.LeafHash), Entry: data})
		}
		_ = json.NewEncoder(w).Encode(page)
	case strings.HasPrefix(r.URL.Path, "/v1/audit/proof/"):
		p, err := a.log.InclusionProof(ctx, 0)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		out := api.AuditProof{Index: p.Index, LeafHash: hex.EncodeToString(p.LeafHash),
			Checkpoint: api.AuditCheckpoint{Origin: p.Checkpoint.Origin, Size: p.Checkpoint.Size, Note: string(p.Checkpoint.Note)}}
		for _, h := range p.Hashes {
			out.Hashes = append(out.Hashes, hex.EncodeToString(h))
		}
		_ = json.NewEncoder(w).Encode(out)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

// TestAuditVerify: /dash/audit/verify says an entry of a real audit log
// is in its signed checkpoint, says not when the listed entry differs
// from what was logged, and refuses a request with no sign-in.
func TestAuditVerify(t *testing.T) {
	ctx := context.Background()
	l, err := audit.Open(ctx, t.TempDir(), audit.Options{Origin: "cove.test/audit"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(ctx) })
	idx, err := l.Append(ctx, audit.Entry{Actor: audit.Actor{Kind: audit.ActorUser, User: "u1"}, Action: "session.park",
		Target: audit.Target{Session: "s1"}, Decision: audit.Allow})
	if err != nil || idx != 0 {
		t.Fatalf("append: %d %v", idx, err)
	}
	if _, err := l.WaitCheckpoint(ctx, 1); err != nil {
		t.Fatal(err)
	}
	a := &auditAPI{log: l}
	h, err := dashboard.New(dashboard.Config{API: a, Key: []byte(strings.Repeat("k", 32)), Assets: built})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{h: h}
	_, ck, _ := f.signIn(t, goodToken, nil)
	verify := func() (int, map[string]any) {
		r := httptest.NewRequest("GET", "/dash/audit/verify?index=0", nil)
		r.AddCookie(ck)
		w := f.do(r)
		var v map[string]any
		_ = json.Unmarshal(w.Body.Bytes(), &v)
		return w.Code, v
	}
	if code, v := verify(); code != 200 || v["verified"] != true || v["checkpoint_size"] != 1.0 {
		t.Fatalf("verify a logged entry: %d %v, want verified in a checkpoint of size 1", code, v)
	}
	a.tamper = true
	if code, v := verify(); code != 200 || v["verified"] != false || v["error"] == "" {
		t.Fatalf("verify a changed entry: %d %v, want not verified, saying why", code, v)
	}
	a.tamper = false

	// Not signed in: 401; no index: 400.
	if w := f.do(httptest.NewRequest("GET", "/dash/audit/verify?index=0", nil)); w.Code != http.StatusUnauthorized {
		t.Fatalf("verify without a cookie: %d, want 401", w.Code)
	}
	r := httptest.NewRequest("GET", "/dash/audit/verify?index=x", nil)
	r.AddCookie(ck)
	if w := f.do(r); w.Code != http.StatusBadRequest {
		t.Fatalf("verify ?index=x: %d, want 400", w.Code)
	}
}
