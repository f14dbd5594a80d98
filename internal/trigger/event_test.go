package trigger_test

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/trigger"
)

// exprFixtureHead is the head commit of the pull request in the fixtures.
const exprFixtureHead = "8d1f4c6e2b0a9f3d7c5e1b4a6f2d8c0e9a7b3f51"

// exprFixtureNames are the stems of testdata/expr-github-STEM.json,
// EVENT[-ACTION[-VARIANT]].
var exprFixtureNames = []string{
	"check_suite-completed",
	"check_run-completed",
	"workflow_run-completed",
	"pull_request_review-submitted",
	"pull_request_review_comment-created",
	"issue_comment-created",
	"issue_comment-created-issue",
	"push",
}

func exprFixture(t testing.TB, stem string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "expr-github-"+stem+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// exprFixtureEvent is GitHubEvent of a fixture, as delivered with the
// X-GitHub-Event header its name starts with.
func exprFixtureEvent(t testing.TB, stem string) trigger.Event {
	t.Helper()
	header, _, _ := strings.Cut(stem, "-")
	ev, err := trigger.GitHubEvent(header, "d3b0c6e0-cd7c-11f0-9c1a-"+strings.Repeat("0", 12), exprFixture(t, stem))
	if err != nil {
		t.Fatalf("GitHubEvent(%s): %v", stem, err)
	}
	return ev
}

// GitHubEvent names each fixture EVENT.ACTION and extracts exactly the
// documented fields.
func TestGitHubEventFixtures(t *testing.T) {
	const (
		head = exprFixtureHead
		base = "3c9a0e5b7d2f4a6c8e1b3d5f7a9c0e2b4d6f8a1c"
	)
	for _, tc := range []struct {
		stem   string
		name   string
		fields map[string]string
	}{
		{"check_suite-completed", "check_suite.completed", map[string]string{
			"repo": "acme/api", "sender": "mara-dev", "head_sha": head, "branch": "agent/fix-7",
			"conclusion": "failure", "status": "completed", "pr": "42"}},
		{"check_run-completed", "check_run.completed", map[string]string{
			"repo": "acme/api", "sender": "mara-dev", "head_sha": head, "branch": "agent/fix-7",
			"conclusion": "failure", "status": "completed", "check": "test (ubuntu-latest)", "pr": "42"}},
		{"workflow_run-completed", "workflow_run.completed", map[string]string{
			"repo": "acme/api", "sender": "cove-agent[bot]", "head_sha": head, "branch": "agent/fix-7",
			"conclusion": "success", "status": "completed", "workflow": "CI", "pr": "42"}},
		{"pull_request_review-submitted", "pull_request_review.submitted", map[string]string{
			"repo": "acme/api", "sender": "jonas-k", "pr": "42", "head_sha": head, "branch": "agent/fix-7",
			"state": "approved", "reviewer": "jonas-k"}},
		{"pull_request_review_comment-created", "pull_request_review_comment.created", map[string]string{
			"repo": "acme/api", "sender": "jonas-k", "pr": "42", "head_sha": head, "branch": "agent/fix-7",
			"comment_id": "1867654321", "author": "jonas-k"}},
		{"issue_comment-created", "issue_comment.created", map[string]string{
			"repo": "acme/api", "sender": "mara-dev", "issue": "42", "pr": "42",
			"comment_id": "2512345678", "author": "mara-dev"}},
		{"issue_comment-created-issue", "issue_comment.created", map[string]string{
			"repo": "acme/api", "sender": "mara-dev", "issue": "42",
			"comment_id": "2512345678", "author": "mara-dev"}},
		{"push", "push", map[string]string{
			"repo": "acme/api", "sender": "cove-agent[bot]", "branch": "agent/fix-7", "head_sha": head, "before": base}},
	} {
		t.Run(tc.stem, func(t *testing.T) {
			body := exprFixture(t, tc.stem)
			header, _, _ := strings.Cut(tc.stem, "-")
			before := time.Now()
			ev, err := trigger.GitHubEvent(header, "delivery-1", body)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Source != "github" || ev.Name != tc.name || ev.ID != "delivery-1" {
				t.Errorf("Source, Name, ID = %q, %q, %q; want github, %q, delivery-1", ev.Source, ev.Name, ev.ID, tc.name)
			}
			if !reflect.DeepEqual(ev.Fields, tc.fields) {
				t.Errorf("Fields:\n got %v\nwant %v", ev.Fields, tc.fields)
			}
			if !bytes.Equal(ev.Body, body) {
				t.Error("Body is not the payload as received")
			}
			if ev.Received.Before(before) {
				t.Errorf("Received %v, before the call at %v", ev.Received, before)
			}
			// The event keeps its own copy of the body.
			body[0] = 'X'
			if ev.Body[0] != '{' {
				t.Error("Body aliases the caller's buffer")
			}
		})
	}
}

// A push of a tag sets tag rather than branch; one of another ref sets
// neither. An empty action leaves the name bare; null fields are absent.
func TestGitHubEventShapes(t *testing.T) {
	for _, tc := range []struct {
		header, body string
		name         string
		fields       map[string]string
	}{
		{"push", `{"ref":"refs/tags/v1.2.0","before":"0000000000000000000000000000000000000000","after":"abc","repository":{"full_name":"acme/api"}}`,
			"push", map[string]string{"repo": "acme/api", "tag": "v1.2.0", "head_sha": "abc", "before": "0000000000000000000000000000000000000000"}},
		{"push", `{"ref":"refs/notes/commits","after":"abc"}`, "push", map[string]string{"head_sha": "abc"}},
		{"check_suite", `{"action":"requested","check_suite":{"head_sha":"abc","status":"queued","conclusion":null,"pull_requests":[{"number":1},{"number":2}]}}`,
			"check_suite.requested", map[string]string{"head_sha": "abc", "status": "queued"}},
		{"workflow_run", `{"action":"completed","workflow_run":{"name":""},"workflow":{"name":"CI"}}`,
			"workflow_run.completed", map[string]string{"workflow": "CI"}},
		{"pull_request", `{"action":"opened","number":7,"pull_request":{"number":7,"user":{"login":"a"},"head":{"ref":"f","sha":"s"},"base":{"ref":"main"}}}`,
			"pull_request.opened", map[string]string{"pr": "7", "author": "a", "branch": "f", "head_sha": "s", "base": "main"}},
		{"issues", `{"action":"opened","issue":{"number":9,"user":{"login":"b"}}}`,
			"issues.opened", map[string]string{"issue": "9", "author": "b"}},
		{"star", `{"action":"","repository":{"full_name":"acme/api"}}`, "star", map[string]string{"repo": "acme/api"}},
		{"star", `{"action":null}`, "star", map[string]string{}},
		{"member", ` {"action":"added"} `, "member.added", map[string]string{}},
	} {
		ev, err := trigger.GitHubEvent(tc.header, "", []byte(tc.body))
		if err != nil {
			t.Errorf("GitHubEvent(%s, %s): %v", tc.header, tc.body, err)
			continue
		}
		if ev.Name != tc.name || !reflect.DeepEqual(ev.Fields, tc.fields) {
			t.Errorf("GitHubEvent(%s, %s) = %s %v, want %s %v", tc.header, tc.body, ev.Name, ev.Fields, tc.name, tc.fields)
		}
	}
}

func TestGitHubEventErrors(t *testing.T) {
	for _, tc := range []struct {
		header, body, want string
	}{
		{"", `{}`, `trigger: github event "": not an event name (want a-z, 0-9, _ and -)`},
		{"check.suite", `{}`, `trigger: github event "check.suite": not an event name (want a-z, 0-9, _ and -)`},
		{"Push", `{}`, `trigger: github event "Push": not an event name (want a-z, 0-9, _ and -)`},
		{"push", ``, `trigger: github push event: payload is not a JSON object`},
		{"push", `[1]`, `trigger: github push event: payload is not a JSON object`},
		{"push", `{"ref":`, `trigger: github push event: payload is not JSON: unexpected EOF`},
		{"push", `{} {}`, `trigger: github push event: payload is not JSON: data after the top-level value`},
		{"check_suite", `{"action":1}`, `trigger: github check_suite event: action is not a string`},
		{"check_suite", `{"action":"re.quested"}`, `trigger: github check_suite event: action "re.quested": not an action name (want a-z, 0-9, _ and -)`},
	} {
		_, err := trigger.GitHubEvent(tc.header, "d", []byte(tc.body))
		if err == nil || err.Error() != tc.want {
			t.Errorf("GitHubEvent(%q, %q) error = %v, want %s", tc.header, tc.body, err, tc.want)
		}
	}
}

// A generic event is named by the body's "event" string, else by the
// hook; its fields are empty and its ID is the receiver's to set.
func TestGenericEvent(t *testing.T) {
	for _, tc := range []struct {
		hook, body string
		name       string
		wantBody   bool
	}{
		{"webhook", `{"event":"deploy-done","env":"staging"}`, "deploy-done", true},
		{"webhook", `{"env":"staging"}`, "webhook", true},
		{"webhook", `{"event":""}`, "webhook", true},
		{"webhook", `{"event":42}`, "webhook", true},
		{"webhook", `{"payload":{"event":"nested"}}`, "webhook", true},
		{"ci", `[{"event":"x"}]`, "ci", true},
		{"ci", `"text"`, "ci", true},
		{"ci", ``, "ci", false},
		{"ci", " \n", "ci", false},
		{"deploy_2", `{"event":"Deploy Done"}`, "Deploy Done", true}, // kept; no expression can match it
	} {
		before := time.Now()
		ev, err := trigger.GenericEvent(tc.hook, []byte(tc.body))
		if err != nil {
			t.Errorf("GenericEvent(%s, %s): %v", tc.hook, tc.body, err)
			continue
		}
		if ev.Source != tc.hook || ev.Name != tc.name || ev.ID != "" || ev.Fields == nil || len(ev.Fields) != 0 || ev.Received.Before(before) {
			t.Errorf("GenericEvent(%s, %s) = %+v, want Source %s, Name %s, no ID, empty Fields", tc.hook, tc.body, ev, tc.hook, tc.name)
		}
		if tc.wantBody != (ev.Body != nil) || tc.wantBody && string(ev.Body) != tc.body {
			t.Errorf("GenericEvent(%s, %s) Body = %q", tc.hook, tc.body, ev.Body)
		}
	}
	for _, tc := range []struct {
		hook, body, want string
	}{
		{"github", `{}`, `trigger: hook "github": not a generic hook name`},
		{"", `{}`, `trigger: hook "": not a generic hook name`},
		{"Deploy", `{}`, `trigger: hook "Deploy": not a generic hook name`},
		{"-x", `{}`, `trigger: hook "-x": not a generic hook name`},
		{strings.Repeat("h", 65), `{}`, `trigger: hook "` + strings.Repeat("h", 65) + `": not a generic hook name`},
		{"ci", `{`, `trigger: hook ci: payload is not JSON: unexpected EOF`},
		{"ci", `event=x`, `trigger: hook ci: payload is not JSON: invalid character 'e' looking for beginning of value`},
	} {
		_, err := trigger.GenericEvent(tc.hook, []byte(tc.body))
		if err == nil || err.Error() != tc.want {
			t.Errorf("GenericEvent(%q, %q) error = %v, want %s", tc.hook, tc.body, err, tc.want)
		}
	}
}
