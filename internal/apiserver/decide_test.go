package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/policy"
)

// TestHandlersDecideWithTheBody: for the verbs whose decision needs the
// body (decidedByHandler), Authorize is asked exactly once per request,
// by the handler, with what the body says (the clone's template, the
// command line, the token's user, the secret's owner; empty where the
// body names none), never
// by the gate with an empty context; on every path (with and without a
// template or a user, over HTTP and the WebSocket) its denial is the
// answer, and the session manager is never asked to act.
func TestHandlersDecideWithTheBody(t *testing.T) {
	var mu sync.Mutex
	var asked []Action
	e := newEnv(t, func(c *Config) {
		c.Authorize = func(ctx context.Context, a Action) error {
			if !decidedByHandler[a.Verb] {
				return nil
			}
			mu.Lock()
			asked = append(asked, a)
			mu.Unlock()
			return forbidden("denied %s", a.Verb)
		}
	})
	for _, tc := range []struct {
		name, path string
		body       any
		ws         bool
		want       Action
		method     string // "": POST
	}{
		{"create", "/v1/sessions", api.CreateSessionRequest{}, false, Action{Verb: "session.create"}, ""},
		{"clone", "/v1/sessions", api.CreateSessionRequest{Template: "web"}, false, Action{Verb: "session.create", Template: "web"}, ""},
		{"exec", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"ls", "-l"}}, false,
			Action{Verb: "session.exec", SessionID: "s1", Argv: []string{"ls", "-l"}}, ""},
		{"exec over the WebSocket", "/v1/sessions/s1/exec/ws", api.ExecRequest{Argv: []string{"ls"}}, true,
			Action{Verb: "session.exec", SessionID: "s1", Argv: []string{"ls"}}, ""},
		{"own token", "/v1/tokens", api.CreateTokenRequest{Name: "ci"}, false, Action{Verb: "token.create"}, ""},
		{"token for a user", "/v1/tokens", api.CreateTokenRequest{Name: "ci", User: "bob"}, false, Action{Verb: "token.create", User: "bob"}, ""},
		{"own secret", "/v1/secrets/gh", api.PutSecretRequest{Value: "v", Hosts: []string{"github.com"}, Header: "A: {{value}}"}, false,
			Action{Verb: "secret.put", Secret: "gh"}, "PUT"},
		{"a user's secret", "/v1/secrets/gh", api.PutSecretRequest{Value: "v", User: "bob"}, false,
			Action{Verb: "secret.put", Secret: "gh", User: "bob"}, "PUT"},
		{"a team's secret", "/v1/secrets/gh", api.PutSecretRequest{Value: "v", Team: "platform"}, false,
			Action{Verb: "secret.put", Secret: "gh", Team: "platform"}, "PUT"},
		{"a template's secret", "/v1/secrets/gh", api.PutSecretRequest{Value: "v", Template: "web"}, false,
			Action{Verb: "secret.put", Secret: "gh", Template: "web"}, "PUT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			asked = nil
			mu.Unlock()
			calls := e.fake.calls.Load()
			if tc.ws {
				wsDenied(t, e.with(t), tc.path, e.userToken(), tc.body, "denied session.exec")
				calls++ // the upgrade looks the session up (a 404 before it)
			} else {
				method := tc.method
				if method == "" {
					method = "POST"
				}
				body := wantError(t, e.with(t).doJSON(method, tc.path, tc.body), http.StatusForbidden, api.CodeForbidden)
				if body.Message != "denied "+tc.want.Verb {
					t.Errorf("403 %q", body.Message)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(asked) != 1 || !sameAction(asked[0], tc.want) {
				t.Errorf("Authorize was asked %+v, want once: %+v", asked, tc.want)
			}
			if n := e.fake.calls.Load() - calls; n != 0 {
				t.Errorf("the session manager was called %d times for a denied request", n)
			}
		})
	}
}

func sameAction(a, b Action) bool {
	return a.Verb == b.Verb && a.SessionID == b.SessionID && a.Template == b.Template && a.User == b.User &&
		a.Secret == b.Secret && a.Team == b.Team && a.All == b.All && slices.Equal(a.Argv, b.Argv)
}

// TestPermitOnTheCommandLine: a permit that depends on the command
// (bob may run git and echo, nothing else, in alice's session) allows
// those commands, over HTTP and the WebSocket, where the gate alone,
// deciding before the body, could never; any other command is 403 with
// the policy's reason, and never runs.
func TestPermitOnTheCommandLine(t *testing.T) {
	e := newPolicyEnv(t)
	alice := e.person(t, "alice", "")
	bob := e.person(t, "bob", "")
	id := e.createSession(t, alice, api.CreateSessionRequest{}).ID

	path := filepath.Join(t.TempDir(), "bob-git.cedar")
	grant := fmt.Sprintf(`
@id("bob-git-in-alice-session")
permit (principal == Cove::User::%q, action == Cove::Action::"session.exec", resource == Cove::Session::%q)
when { ["git", "echo"].contains(context.command) };
`, bob.ID, id)
	if err := os.WriteFile(path, append(policy.Default(), grant...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.engine.Load(t.Context(), path); err != nil {
		t.Fatal(err)
	}
	base := "/v1/sessions/" + id

	res := decode[api.ExecResult](t, e.doJSON("POST", base+"/exec", api.ExecRequest{Argv: []string{"echo", "hi"}}, bob.auth()...), 200)
	if string(res.Stdout) != "hi\n" {
		t.Errorf("bob's echo: %+v", res)
	}
	// The fake guest has no git: that it says so shows the command got
	// past the policy to the guest.
	body := wantError(t, e.doJSON("POST", base+"/exec", api.ExecRequest{Argv: []string{"git", "status"}}, bob.auth()...), 400, api.CodeInvalid)
	if !strings.Contains(body.Message, "git: executable file not found in the fake guest") {
		t.Errorf("bob's git status: %q", body.Message)
	}
	reason := fmt.Sprintf("no policy permits session.exec on Session %s for User %s", id, bob.ID)
	for _, argv := range [][]string{{"ls"}, {"touch", "/tmp/bob"}} {
		wantDenied(t, e.doJSON("POST", base+"/exec", api.ExecRequest{Argv: argv}, bob.auth()...), policy.SessionExec, "Session "+id, "User "+bob.ID)
	}
	wsDenied(t, e.testEnv, base+"/exec/ws", bob.token, api.ExecRequest{Argv: []string{"touch", "/tmp/bob"}}, reason)
	if _, err := e.mgr.Stat(t.Context(), id, "/tmp/bob"); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("a refused command ran: /tmp/bob: %v", err)
	}

	// Over the WebSocket, the permitted command runs.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, wsURL(e.testEnv, base+"/exec/ws"), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + bob.token}},
	})
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer c.CloseNow()
	wsSend(t, c, api.ExecRequest{Argv: []string{"echo", "over", "ws"}})
	var out string
	for {
		ev, err := wsRead(t, c)
		if err != nil {
			t.Fatalf("bob's echo over the WebSocket: %v (output so far %q)", err, out)
		}
		if ev.Type == api.EventError {
			t.Fatalf("bob's echo over the WebSocket: %+v", ev.Error)
		}
		if ev.Type == api.EventStdout {
			out += string(ev.Data)
		}
		if ev.Type == api.EventExit {
			break
		}
	}
	if out != "over ws\n" {
		t.Errorf("bob's echo over the WebSocket printed %q", out)
	}
	// alice, under the default policy, runs anything in her own.
	decode[api.ExecResult](t, e.doJSON("POST", base+"/exec", api.ExecRequest{Argv: []string{"true"}}, alice.auth()...), 200)
}
