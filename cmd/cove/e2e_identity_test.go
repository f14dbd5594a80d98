package main_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/cove-dev/cove/api"
)

// TestSessionTokenInGuest: in a real guest, 'cove-agent token' prints the
// session's identity token, fetched from the server over the agent
// channel: it verifies with go-oidc against the server's own discovery
// document and JWKS (the server's default issuer, its loopback listen
// URL), with sub the session's owner and act its session and agent; no
// file of the guest's disk holds it; cove's API takes a token for its own
// audience to park the session itself, and that kills the token.
func TestSessionTokenInGuest(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer()
	// A generous boot timeout: the test machine may be loaded.
	id := e.create("--agent", "review-bot", "--boot-timeout", "4m")
	e.seen[id] = true
	issuerURL := "http://" + e.addr

	tok := strings.TrimSpace(e.ok(nil, "exec", id, "--", "cove-agent", "token", "--audience", "https://api.example.com", "--ttl", "5m"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	prov, err := oidc.NewProvider(ctx, issuerURL)
	if err != nil {
		t.Fatalf("discovery at %s: %v%s", issuerURL, err, e.serverLog())
	}
	idt, err := prov.Verifier(&oidc.Config{ClientID: "https://api.example.com"}).Verify(ctx, tok)
	if err != nil {
		t.Fatalf("go-oidc verify %q: %v", tok, err)
	}
	var c struct {
		Act struct {
			Sub   string `json:"sub"`
			Agent string `json:"agent"`
		} `json:"act"`
	}
	if err := idt.Claims(&c); err != nil {
		t.Fatal(err)
	}
	if idt.Subject != e.sessions()[id].Owner || c.Act.Sub != "session:"+id || c.Act.Agent != "review-bot" {
		t.Errorf("sub %q act %+v; want the owner %q, session:%s, review-bot", idt.Subject, c.Act, e.sessions()[id].Owner, id)
	}
	if d := idt.Expiry.Sub(idt.IssuedAt); d != 5*time.Minute {
		t.Errorf("lifetime %v, want 5m", d)
	}

	// Not on the guest's disk: no file of the root file system holds its
	// signature.
	// The search finds what is there: a control string written to a file.
	search := func(s string) string {
		return e.ok(nil, "exec", id, "--", "sh", "-c", "find / -xdev -type f -exec grep -lF "+s+" {} + ; true")
	}
	e.ok(nil, "exec", id, "--", "sh", "-c", "echo cove-control-7f3a > /root/control")
	if out := search("cove-control-7f3a"); out != "/root/control\n" {
		t.Fatalf("the disk search finds %q, want /root/control: it cannot be trusted", out)
	}
	sig := tok[strings.LastIndex(tok, ".")+1:]
	if out := search(sig); out != "" {
		t.Errorf("files in the guest hold the token: %q", out)
	}

	// A token for cove's own API parks its own session, and is dead after.
	own := strings.TrimSpace(e.ok(nil, "exec", id, "--", "cove-agent", "token", "--audience", issuerURL))
	park := func() *http.Response {
		req, _ := http.NewRequestWithContext(ctx, "POST", issuerURL+"/v1/sessions/"+id+"/park", nil)
		req.Header.Set("Authorization", "Bearer "+own)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := park()
	var s api.Session
	err = json.NewDecoder(resp.Body).Decode(&s)
	resp.Body.Close()
	if resp.StatusCode != 200 || err != nil || s.State != api.StateParked {
		t.Fatalf("park with the session's own token: %d %+v %v%s", resp.StatusCode, s, err, e.serverLog())
	}
	if resp := park(); resp.StatusCode != http.StatusUnauthorized {
		resp.Body.Close()
		t.Errorf("the token after its park: %d, want 401", resp.StatusCode)
	} else {
		resp.Body.Close()
	}
	e.ok(nil, "rm", id)
	if err := e.stopServer(syscall.SIGTERM); err != nil { // it stops its spare QEMUs
		t.Fatalf("server on SIGTERM: %v", err)
	}
}
