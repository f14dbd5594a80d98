package trigger_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/trigger"
)

// Every valid form parses, prints in canonical form, and the canonical
// form parses back to the same expression.
func TestParseValidExprs(t *testing.T) {
	long := strings.Repeat("k", 1100)
	sixteen := "github:push"
	for i := range 16 {
		sixteen += " k" + string(rune('a'+i)) + "=v"
	}
	for _, tc := range []struct {
		in, want      string
		source, event string
	}{
		{"github:push", "github:push", "github", "push"},
		{"github:check_suite", "github:check_suite", "github", "check_suite"},
		{"github:check_suite.completed repo=acme/api", "github:check_suite.completed repo=acme/api", "github", "check_suite.completed"},
		{"  github:issue_comment.created   repo=acme/api  issue=42  ", "github:issue_comment.created repo=acme/api issue=42", "github", "issue_comment.created"},
		{"webhook:deploy-done env=staging", "webhook:deploy-done env=staging", "webhook", "deploy-done"},
		{"0hook:x", "0hook:x", "0hook", "x"},
		{"h_1-2:a.b.c-d_e", "h_1-2:a.b.c-d_e", "h_1-2", "a.b.c-d_e"},
		{strings.Repeat("h", 64) + ":e", strings.Repeat("h", 64) + ":e", strings.Repeat("h", 64), "e"},
		// Paths, with upper case, digits and array indexes.
		{"ci:done deployment.env=prod payload.items.0.id=7 Build-ID=x_1", "ci:done deployment.env=prod payload.items.0.id=7 Build-ID=x_1", "ci", "done"},
		// Presence.
		{"github:push head_sha=*", "github:push head_sha=*", "github", "push"},
		// Quoting: quotes dropped where not needed, kept where needed.
		{`github:push branch="main"`, "github:push branch=main", "github", "push"},
		{`ci:x title="two words"`, `ci:x title="two words"`, "ci", "x"},
		{`ci:x a="" b="*" c="say \"hi\"" d="back\\slash" e="a*b"`, `ci:x a="" b="*" c="say \"hi\"" d="back\\slash" e="a*b"`, "ci", "x"},
		{`ci:x v="=" w==`, `ci:x v== w==`, "ci", "x"},
		{`ci:x url=https://example.com/a?b=c&d#e`, `ci:x url=https://example.com/a?b=c&d#e`, "ci", "x"},
		{"ci:x name=café", "ci:x name=café", "ci", "x"},
		{`ci:x name="é t"`, `ci:x name="é t"`, "ci", "x"},
		// Conditions keep their written order.
		{"github:push sender=a repo=b", "github:push sender=a repo=b", "github", "push"},
		// Limits: 16 conditions; 1024 bytes.
		{sixteen, sixteen, "github", "push"},
		{"ci:x k=" + long[:1024-7], "ci:x k=" + long[:1024-7], "ci", "x"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			e, err := trigger.Parse(tc.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := e.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
			if e.Source() != tc.source || e.Event() != tc.event {
				t.Errorf("Source, Event = %q, %q; want %q, %q", e.Source(), e.Event(), tc.source, tc.event)
			}
			again, err := trigger.Parse(e.String())
			if err != nil {
				t.Fatalf("Parse(String()): %v", err)
			}
			if !reflect.DeepEqual(again, e) {
				t.Errorf("Parse(%q) = %#v, want %#v", e.String(), again, e)
			}
		})
	}
}

// Every error names its position and says what is wrong.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		in  string
		pos int
		msg string
	}{
		{"", 0, "empty expression; want SOURCE:EVENT [KEY=VALUE]..."},
		{"   ", 3, "empty expression; want SOURCE:EVENT [KEY=VALUE]..."},
		{strings.Repeat("x", 1025), 1024, "expression longer than 1024 bytes"},
		{"ci:x v=a\xffb", 8, "invalid UTF-8"},
		// SOURCE
		{":push", 0, "expected source (github or a hook name) before ':'"},
		{"GitHub:push", 0, `expected source (github or a hook name), found 'G'`},
		{"_hook:x", 0, "source must start with a-z or 0-9"},
		{"-hook:x", 0, "source must start with a-z or 0-9"},
		{strings.Repeat("h", 65) + ":e", 64, "hook name longer than 64 characters"},
		{"github", 6, `expected ':' after source "github"`},
		{"github push", 6, `expected ':' after source "github"`},
		{"gitHub:push", 3, `invalid character 'H' in source (want a-z, 0-9, _ or -, then ':')`},
		{"git.hub:push", 3, `invalid character '.' in source (want a-z, 0-9, _ or -, then ':')`},
		// EVENT
		{"github:", 7, "expected event name after ':'"},
		{"github: repo=x", 7, "expected event name after ':'"},
		{"github:Push", 7, `invalid character 'P' in event name (want a-z, 0-9, _, - or .)`},
		{"github:check_suite:completed", 18, `invalid character ':' in event name (want a-z, 0-9, _, - or .)`},
		{"github:push,repo=x", 11, `invalid character ',' in event name (want a-z, 0-9, _, - or .)`},
		{"github:.push", 7, `empty part in event name ".push"`},
		{"github:push.", 11, `empty part in event name "push."`},
		{"ci:a..b", 5, `empty part in event name "a..b"`},
		{"github:a.b.c", 10, `github event is NAME or NAME.ACTION, not "a.b.c"`},
		// KEY
		{"github:push repo", 16, `expected '=' after key "repo"`},
		{"github:push repo =x", 16, `expected '=' after key "repo", found ' '`},
		{"github:push repo:acme/api", 16, `expected '=' after key "repo", found ':'`},
		{"github:push =x", 12, `expected KEY=VALUE, found '='`},
		{`github:push "repo"=x`, 12, `expected KEY=VALUE, found '"'`},
		{"ci:x .a=1", 5, `empty part in key path ".a"`},
		{"ci:x a.=1", 6, `empty part in key path "a."`},
		{"ci:x a..b=1", 7, `empty part in key path "a..b"`},
		{"github:push repo=a pr=1 repo=b", 24, `duplicate key "repo"`},
		{"github:push repo=* repo=a", 19, `duplicate key "repo"`},
		// VALUE
		{"github:push repo=", 17, `expected value after "repo=" (a word, a "quoted string" or *)`},
		{"github:push repo= pr=1", 17, `expected value after "repo=" (a word, a "quoted string" or *)`},
		{`github:push repo="acme/api`, 17, "unterminated quoted value"},
		{`github:push repo="acme\"`, 17, "unterminated quoted value"},
		{`github:push repo="acme\`, 17, "unterminated quoted value"},
		{`github:push repo="a\nb"`, 19, `unknown escape \n in quoted value (only \" and \\)`},
		{"github:push repo=\"a\tb\"", 19, "unprintable character U+0009 in quoted value"},
		{`github:push repo="a"b`, 20, `expected space after quoted value, found 'b'`},
		{`github:push repo=a"b"`, 18, `unexpected '"' in value; quote the whole value`},
		{`github:push repo=a\b`, 18, `unexpected '\' in unquoted value; quote the value and write \\`},
		{`github:push branch=agent/*`, 25, `'*' alone means any value; quote a value that contains '*'`},
		{`github:push branch=**`, 19, `'*' alone means any value; quote a value that contains '*'`},
		{"github:push repo=a\tpr=1", 18, "unprintable character U+0009 in value"},
		{"github:push repo=a\u00a0b", 18, "unprintable character U+00A0 in value"},
		// Limits
		{"github:push a=1 b=2 c=3 d=4 e=5 f=6 g=7 h=8 i=9 j=10 k=11 l=12 m=13 n=14 o=15 p=16 q=17", 83, "more than 16 conditions"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			_, err := trigger.Parse(tc.in)
			var pe *trigger.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse error = %v (%T), want a *ParseError", err, err)
			}
			if pe.Pos != tc.pos || pe.Msg != tc.msg || pe.Input != tc.in {
				t.Errorf("ParseError{Pos: %d, Msg: %q}, want {Pos: %d, Msg: %q}", pe.Pos, pe.Msg, tc.pos, tc.msg)
			}
		})
	}
}

// The error shows the message, the expression, and a caret under the
// offending column; a long expression is cut around it.
func TestParseErrorCaret(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"github:check_suite.completed repo", `trigger: expression: expected '=' after key "repo" (column 34)
    github:check_suite.completed repo
                                     ^`},
		{"", `trigger: expression: empty expression; want SOURCE:EVENT [KEY=VALUE]... (column 1)
    
    ^`},
		// Columns count characters, not bytes; tabs show as '?'.
		{"ci:x name=café\tb", `trigger: expression: unprintable character U+0009 in value (column 15)
    ci:x name=café?b
                  ^`},
		{"ci:x k=" + strings.Repeat("a", 60) + " m=" + strings.Repeat("b", 30) + `"` + strings.Repeat("c", 100),
			`trigger: expression: unexpected '"' in value; quote the whole value (column 101)
    ...` + strings.Repeat("a", 7) + " m=" + strings.Repeat("b", 30) + `"` + strings.Repeat("c", 39) + `...
                                               ^`},
	} {
		_, err := trigger.Parse(tc.in)
		if err == nil {
			t.Fatalf("Parse(%q) succeeded", tc.in)
		}
		if got := err.Error(); got != tc.want {
			t.Errorf("Parse(%q) error:\n%s\nwant:\n%s", tc.in, got, tc.want)
		}
	}
}

// The expressions a session would wait on match the GitHub deliveries
// they are meant for, and not the ones they are not.
func TestExprMatchGitHubFixtures(t *testing.T) {
	events := map[string]trigger.Event{}
	for _, name := range exprFixtureNames {
		events[name] = exprFixtureEvent(t, name)
	}
	const head = exprFixtureHead
	for _, tc := range []struct {
		expr    string
		fixture string
		want    bool
	}{
		{"github:check_suite.completed repo=acme/api head_sha=" + head, "check_suite-completed", true},
		{"github:check_suite repo=acme/api head_sha=" + head, "check_suite-completed", true},
		{"github:check_suite.completed repo=acme/api pr=42 conclusion=failure", "check_suite-completed", true},
		{"github:check_suite.completed repo=acme/api conclusion=success", "check_suite-completed", false},
		{"github:check_suite.requested repo=acme/api", "check_suite-completed", false},
		{"github:check_suite.completed repo=acme/web", "check_suite-completed", false},
		{"github:check_suite.completed repo=Acme/API", "check_suite-completed", false}, // exact, case matters
		{"github:check_suite.completed repo=acme/api head_sha=" + head[:7], "check_suite-completed", false},
		{"github:check_suite.completed check_suite.app.slug=github-actions check_suite.latest_check_runs_count=3", "check_suite-completed", true},
		{"github:check_suite.completed check_suite.rerequestable=true", "check_suite-completed", true},
		{"github:check_run.completed repo=acme/api check=\"test (ubuntu-latest)\" conclusion=failure", "check_run-completed", true},
		{"github:pull_request_review.submitted repo=acme/api pr=42", "pull_request_review-submitted", true},
		{"github:pull_request_review.submitted repo=acme/api pr=42 state=approved reviewer=jonas-k", "pull_request_review-submitted", true},
		{"github:pull_request_review repo=acme/api pr=42 state=changes_requested", "pull_request_review-submitted", false},
		{"github:pull_request_review.submitted repo=acme/api pr=43", "pull_request_review-submitted", false},
		{"github:pull_request_review_comment.created repo=acme/api pr=42 author=jonas-k", "pull_request_review_comment-created", true},
		{"github:pull_request_review_comment.created comment.path=internal/page/cursor.go comment.line=91", "pull_request_review_comment-created", true},
		{"github:pull_request_review.submitted repo=acme/api pr=42", "pull_request_review_comment-created", false},
		{"github:issue_comment.created repo=acme/api issue=42", "issue_comment-created", true},
		{"github:issue_comment.created repo=acme/api pr=42", "issue_comment-created", true},
		{"github:issue_comment.created repo=acme/api issue=42", "issue_comment-created-issue", true},
		{"github:issue_comment.created repo=acme/api pr=42", "issue_comment-created-issue", false},
		{"github:issue_comment.created repo=acme/api issue=42 pr=*", "issue_comment-created-issue", false},
		{"github:issue_comment.created repo=acme/api issue.pull_request=*", "issue_comment-created", true},
		{"github:issue_comment.created repo=acme/api issue.pull_request.merged_at=*", "issue_comment-created", false}, // null is absent
		{"github:issue_comment.created issue.labels=*", "issue_comment-created", true},                                // [] is present
		{"github:issue_comment.created issue.labels=x", "issue_comment-created", false},                               // but equals nothing
		{"github:workflow_run.completed repo=acme/api branch=agent/fix-7", "workflow_run-completed", true},
		{"github:workflow_run.completed repo=acme/api branch=agent/fix-7 workflow=CI conclusion=success pr=42", "workflow_run-completed", true},
		{"github:workflow_run.completed repo=acme/api branch=main", "workflow_run-completed", false},
		{"github:workflow_run.completed workflow_run.pull_requests.0.number=42", "workflow_run-completed", true},
		{"github:workflow_run.completed workflow_run.pull_requests.1.number=*", "workflow_run-completed", false},
		{"github:push repo=acme/api branch=agent/fix-7 head_sha=" + head, "push", true},
		{"github:push repo=acme/api tag=*", "push", false},
		{"github:push.created repo=acme/api", "push", false},
		{"github:push repo=acme/api action=*", "push", false},
		{"github:push commits.0.modified.1=internal/page/cursor_test.go", "push", true},
		{"github:push repository.created_at=1697102071", "push", true},
		// Another source never matches, whatever its conditions.
		{"gh:push repo=acme/api", "push", false},
	} {
		t.Run(tc.expr+"/"+tc.fixture, func(t *testing.T) {
			ev, ok := events[tc.fixture]
			if !ok {
				t.Fatalf("no fixture %s", tc.fixture)
			}
			e := trigger.MustParse(tc.expr)
			if got := e.Match(ev); got != tc.want {
				t.Errorf("Match(%s %s) = %v, want %v; fields %v", ev.Source, ev.Name, got, tc.want, ev.Fields)
			}
		})
	}
}

// Generic hooks match on their event name and paths into the body, with
// JSON scalars compared in canonical text.
func TestExprMatchGeneric(t *testing.T) {
	body := `{"event":"deploy-done","env":"staging","ok":true,"count":42,"ratio":0.50,"big":12345678901234567890,
		"whole":42.0,"exp":1e3,"neg0":-0,"none":null,"tags":[],"service":{"name":"api server","port":8080},
		"payload":{"items":[{"id":"a1"},{"id":7}]},"Mixed-Case_key":"v","quote":"say \"hi\"","star":"*"}`
	ev, err := trigger.GenericEvent("webhook", []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	noEvent, err := trigger.GenericEvent("webhook", []byte(`{"env":"staging"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		expr string
		ev   trigger.Event
		want bool
	}{
		{"webhook:deploy-done env=staging", ev, true},
		{"webhook:deploy-done", ev, true},
		{"webhook:deploy-done env=prod", ev, false},
		{"webhook:deploy env=staging", ev, false},            // exact names only
		{"webhook:deploy-done.x env=staging", ev, false},     // no action matching for generic hooks
		{"other:deploy-done env=staging", ev, false},         // another hook
		{"github:deploy-done env=staging", ev, false},        // not github
		{"webhook:webhook env=staging", noEvent, true},       // no "event": the hook's name
		{"webhook:deploy-done env=staging", noEvent, false},  //
		{"webhook:deploy-done ok=true count=42", ev, true},   // booleans and numbers as text
		{"webhook:deploy-done ratio=0.5 whole=42", ev, true}, // shortest form
		{"webhook:deploy-done ratio=0.50", ev, false},        //
		{"webhook:deploy-done exp=1000 neg0=0", ev, true},    //
		{"webhook:deploy-done big=12345678901234567890", ev, true},
		{"webhook:deploy-done none=*", ev, false},           // null is absent
		{`webhook:deploy-done none=""`, ev, false},          //
		{"webhook:deploy-done missing=*", ev, false},        //
		{"webhook:deploy-done tags=* service=*", ev, true},  // objects and arrays are present
		{"webhook:deploy-done service.port=8080", ev, true}, //
		{`webhook:deploy-done service.name="api server"`, ev, true},
		{"webhook:deploy-done payload.items.0.id=a1 payload.items.1.id=7", ev, true},
		{"webhook:deploy-done payload.items.2.id=*", ev, false},
		{"webhook:deploy-done payload.items.00.id=a1", ev, false}, // an index has no leading zero
		{"webhook:deploy-done payload.items.id=*", ev, false},     // an array needs an index
		{"webhook:deploy-done env.x=*", ev, false},                // no path through a string
		{"webhook:deploy-done Mixed-Case_key=v", ev, true},
		{`webhook:deploy-done quote="say \"hi\""`, ev, true},
		{`webhook:deploy-done star="*"`, ev, true},
		{`webhook:deploy-done event=deploy-done`, ev, true}, // the name is also in the body
	} {
		t.Run(tc.expr, func(t *testing.T) {
			if got := trigger.MustParse(tc.expr).Match(tc.ev); got != tc.want {
				t.Errorf("Match = %v, want %v", got, tc.want)
			}
		})
	}
}

// A body that is not JSON (an Event not made by GenericEvent) has no paths
// but still matches on its name; the zero Expr matches nothing.
func TestExprMatchEdgeCases(t *testing.T) {
	ev := trigger.Event{Source: "ci", Name: "done", Body: []byte("not json")}
	if !trigger.MustParse("ci:done").Match(ev) {
		t.Error("ci:done does not match an event with a broken body")
	}
	if trigger.MustParse("ci:done a=*").Match(ev) {
		t.Error("a path matched in a broken body")
	}
	if (trigger.Expr{}).Match(trigger.Event{}) {
		t.Error("the zero Expr matched the zero Event")
	}
	if s := (trigger.Expr{}).String(); s != "" {
		t.Errorf("zero Expr String() = %q, want empty", s)
	}
	// A field shadows the body path of the same name.
	gh := trigger.Event{Source: "github", Name: "push", Fields: map[string]string{"ref": "field"}, Body: []byte(`{"ref":"body"}`)}
	if !trigger.MustParse("github:push ref=field").Match(gh) || trigger.MustParse("github:push ref=body").Match(gh) {
		t.Error("a field did not take precedence over the body path of the same name")
	}
}

func TestMustParsePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("MustParse of a bad expression did not panic")
		}
	}()
	trigger.MustParse("github:")
}
