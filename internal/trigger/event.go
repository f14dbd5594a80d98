// Package trigger turns incoming events (GitHub and generic webhooks) into wake-ups of parked sessions: expressions, their index, signature checks and delivery.
//
// # Events
//
// A delivery becomes an Event: GitHubEvent normalizes a GitHub webhook
// payload (its event name and a set of Fields such as repo, pr and
// head_sha), GenericEvent takes any other hook's JSON body as it is.
//
// # Expressions
//
// A parked session waits on expressions; it wakes when an event matches any
// of them. An expression is
//
//	SOURCE:EVENT [KEY=VALUE]...
//
// with its parts separated by one or more spaces:
//
//   - SOURCE is github or the name of a generic hook: a lower-case letter
//     or digit, then up to 63 of a-z, 0-9, _ and -.
//   - EVENT is the event's name, of a-z, 0-9, _, - and dots. A GitHub event
//     is NAME (the X-GitHub-Event header) or NAME.ACTION (with the
//     payload's action); NAME alone matches every action of that event. A
//     generic hook's event is the body's top-level "event" string, or the
//     hook's name when the body has none, and must match exactly.
//   - KEY is a normalized field of the event (GitHub: repo, pr, issue,
//     head_sha, branch, ...; see GitHubEvent) or else a dotted path into
//     the JSON body: env, deployment.env, payload.items.0.id (a number
//     indexes an array). Path parts are of A-Z, a-z, 0-9, _ and -. A key
//     names a field when the event has that field and a path otherwise;
//     generic events have no fields.
//   - VALUE is a bare word (printable characters other than space, ", \
//     and *) or a double-quoted string in which \" and \\ stand for " and
//     \. KEY=* holds when the key is present with any value, including an
//     object or array; a JSON null counts as absent.
//
// Every condition must hold. Values compare as strings, exactly (case
// matters): a JSON string by its text, a number in its shortest form
// (42, 1.5, so 42.0 matches 42) and a boolean as true or false; an object
// or array equals no value. A key may appear once; an expression is at
// most 1024 bytes with at most 16 conditions. Examples:
//
//	github:check_suite.completed repo=acme/api head_sha=8d1f4c6e2b0a9f3d7c5e1b4a6f2d8c0e9a7b3f51
//	github:pull_request_review.submitted repo=acme/api pr=42 state=approved
//	github:issue_comment repo=acme/api issue=42
//	github:push repo=acme/api branch=main
//	deploy:deploy-done env=staging service.name="api server"
//
// # Matching
//
// An Index holds the subscriptions of parked sessions, each a set of
// expressions, and returns those an event matches without scanning them
// all.
//
// # Intake
//
// A Receiver answers webhook deliveries: it checks their signatures
// (VerifySignature), makes Events of them and hands those to a Sink.
package trigger

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// sourceGitHub is the source of GitHub events (the hook named github).
const sourceGitHub = "github"

// Event is one normalized incoming event.
type Event struct {
	Source string            // "github", or a generic hook's name
	Name   string            // e.g. "check_suite.completed" (GitHub: X-GitHub-Event + "." + payload action when present), or for generic hooks the hook-chosen name (see below)
	Fields map[string]string // normalized fields (GitHub: repo, head_sha, branch, pr, issue, conclusion, sender, …)
	Body   json.RawMessage   // the payload as received (bounded by the receiver)
	// ID is the delivery id (X-GitHub-Delivery or generated). GenericEvent
	// leaves it empty for the receiver to fill in.
	ID       string
	Received time.Time
}

// GitHubEvent normalizes a GitHub webhook delivery: eventHeader is the
// X-GitHub-Event header, deliveryID the X-GitHub-Delivery header and body
// the JSON payload (a form-encoded delivery's payload field). Received is
// the current time.
//
// Name is eventHeader, then "." and the payload's action when it has one
// ("check_suite.completed"; "push"). Fields holds what the payload has of:
//
//	every event       repo (repository.full_name), sender (sender.login)
//	check_suite       head_sha, branch (head_branch), conclusion, status,
//	                  pr (when the suite lists exactly one pull request)
//	check_run         head_sha, branch (check_suite.head_branch), conclusion,
//	                  status, check (its name), pr (as check_suite)
//	workflow_run      head_sha, branch (head_branch), conclusion, status,
//	                  workflow (the run's name, else the workflow's), pr (as check_suite)
//	pull_request      pr, head_sha, branch (head.ref), base (base.ref), author
//	pull_request_review
//	                  pr, head_sha, branch, state (review.state, e.g. approved),
//	                  reviewer (review.user.login)
//	pull_request_review_comment
//	                  pr, head_sha, branch, comment_id, author (comment.user.login)
//	issue_comment     issue, pr (the same number, when the issue is a pull
//	                  request), comment_id, author (comment.user.login)
//	issues            issue, author (issue.user.login)
//	push              branch (ref without refs/heads/) or tag (without
//	                  refs/tags/), head_sha (after), before
//
// A field whose value is missing or null in the payload is left out;
// numbers are written in decimal. It fails when eventHeader is not an event
// name (a-z, 0-9, _ and -), the body is not a JSON object, or the action is
// not a string of the same characters.
func GitHubEvent(eventHeader, deliveryID string, body []byte) (Event, error) {
	if !isGitHubEventPart(eventHeader) {
		return Event{}, fmt.Errorf("trigger: github event %q: not an event name (want a-z, 0-9, _ and -)", eventHeader)
	}
	root, err := decodeEventBody(body)
	if err != nil {
		return Event{}, fmt.Errorf("trigger: github %s event: %w", eventHeader, err)
	}
	obj, ok := root.(map[string]any)
	if !ok {
		return Event{}, fmt.Errorf("trigger: github %s event: payload is not a JSON object", eventHeader)
	}
	name := eventHeader
	if a, ok := obj["action"]; ok && a != nil {
		action, ok := a.(string)
		if !ok {
			return Event{}, fmt.Errorf("trigger: github %s event: action is not a string", eventHeader)
		}
		if action != "" {
			if !isGitHubEventPart(action) {
				return Event{}, fmt.Errorf("trigger: github %s event: action %q: not an action name (want a-z, 0-9, _ and -)", eventHeader, action)
			}
			name += "." + action
		}
	}
	return Event{
		Source:   sourceGitHub,
		Name:     name,
		Fields:   gitHubFields(eventHeader, root),
		Body:     json.RawMessage(bytes.Clone(body)),
		ID:       deliveryID,
		Received: time.Now(),
	}, nil
}

// gitHubFields extracts the normalized fields of a GitHub payload; see
// GitHubEvent.
func gitHubFields(event string, root any) map[string]string {
	f := make(map[string]string)
	put := func(field, path string) {
		if s, p := jsonPathValue(root, path); p == valueScalar {
			f[field] = s
		}
	}
	// onlyPR sets pr when the list at path holds exactly one pull request.
	onlyPR := func(path string) {
		if _, p := jsonPathValue(root, path+".1"); p != valueAbsent {
			return
		}
		put("pr", path+".0.number")
	}
	put("repo", "repository.full_name")
	put("sender", "sender.login")
	switch event {
	case "check_suite":
		put("head_sha", "check_suite.head_sha")
		put("branch", "check_suite.head_branch")
		put("conclusion", "check_suite.conclusion")
		put("status", "check_suite.status")
		onlyPR("check_suite.pull_requests")
	case "check_run":
		put("head_sha", "check_run.head_sha")
		put("branch", "check_run.check_suite.head_branch")
		put("conclusion", "check_run.conclusion")
		put("status", "check_run.status")
		put("check", "check_run.name")
		onlyPR("check_run.pull_requests")
	case "workflow_run":
		put("head_sha", "workflow_run.head_sha")
		put("branch", "workflow_run.head_branch")
		put("conclusion", "workflow_run.conclusion")
		put("status", "workflow_run.status")
		put("workflow", "workflow_run.name")
		if f["workflow"] == "" {
			put("workflow", "workflow.name")
		}
		onlyPR("workflow_run.pull_requests")
	case "pull_request":
		put("pr", "pull_request.number")
		put("head_sha", "pull_request.head.sha")
		put("branch", "pull_request.head.ref")
		put("base", "pull_request.base.ref")
		put("author", "pull_request.user.login")
	case "pull_request_review":
		put("pr", "pull_request.number")
		put("head_sha", "pull_request.head.sha")
		put("branch", "pull_request.head.ref")
		put("state", "review.state")
		put("reviewer", "review.user.login")
	case "pull_request_review_comment":
		put("pr", "pull_request.number")
		put("head_sha", "pull_request.head.sha")
		put("branch", "pull_request.head.ref")
		put("comment_id", "comment.id")
		put("author", "comment.user.login")
	case "issue_comment":
		put("issue", "issue.number")
		if _, p := jsonPathValue(root, "issue.pull_request"); p != valueAbsent {
			put("pr", "issue.number")
		}
		put("comment_id", "comment.id")
		put("author", "comment.user.login")
	case "issues":
		put("issue", "issue.number")
		put("author", "issue.user.login")
	case "push":
		if ref, p := jsonPathValue(root, "ref"); p == valueScalar {
			if b, ok := strings.CutPrefix(ref, "refs/heads/"); ok {
				f["branch"] = b
			} else if t, ok := strings.CutPrefix(ref, "refs/tags/"); ok {
				f["tag"] = t
			}
		}
		put("head_sha", "after")
		put("before", "before")
	}
	return f
}

// GenericEvent makes the event of a delivery to the generic hook named
// hook: Source is hook, Name the body's top-level "event" string when it
// has a non-empty one and hook otherwise, Fields empty (expressions on
// generic events use paths into Body) and Received the current time. ID is
// left empty for the receiver to set.
//
// The body is any JSON value, or empty (Body is then nil). It fails when
// hook is not a hook name (see the package doc; github is GitHub's) or the
// body is not JSON. A name from the body is taken as it is: one outside
// the EVENT characters of the grammar matches no expression.
func GenericEvent(hook string, body []byte) (Event, error) {
	if hook == sourceGitHub || !isHookName(hook) {
		return Event{}, fmt.Errorf("trigger: hook %q: not a generic hook name", hook)
	}
	ev := Event{Source: hook, Name: hook, Fields: map[string]string{}, Received: time.Now()}
	if len(bytes.TrimSpace(body)) == 0 {
		return ev, nil
	}
	root, err := decodeEventBody(body)
	if err != nil {
		return Event{}, fmt.Errorf("trigger: hook %s: %w", hook, err)
	}
	if obj, ok := root.(map[string]any); ok {
		if name, ok := obj["event"].(string); ok && name != "" {
			ev.Name = name
		}
	}
	ev.Body = json.RawMessage(bytes.Clone(body))
	return ev, nil
}

// isGitHubEventPart reports whether s is a GitHub event or action name.
func isGitHubEventPart(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isLowerAlnum(c) && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// isHookName reports whether s is a SOURCE of the grammar.
func isHookName(s string) bool {
	if s == "" || len(s) > maxHookName || !isLowerAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isLowerAlnum(c) && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// decodeEventBody decodes one JSON value with numbers as json.Number.
// An empty body decodes to nil.
func decodeEventBody(body []byte) (any, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("payload is not JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("payload is not JSON: data after the top-level value")
	}
	return v, nil
}

// valuePresence says what a key found in an event.
type valuePresence uint8

const (
	valueAbsent    valuePresence = iota // missing, or JSON null
	valueScalar                         // a string, number or boolean
	valueComposite                      // an object or array
)

// jsonPathValue follows a dotted path (see the grammar's KEY) from v, a
// value decoded by decodeEventBody, and returns the scalar it ends at as a
// string.
func jsonPathValue(v any, path string) (string, valuePresence) {
	for rest, more := path, true; more; {
		var part string
		part, rest, more = strings.Cut(rest, ".")
		switch x := v.(type) {
		case map[string]any:
			v = x[part]
		case []any:
			i, ok := arrayIndex(part)
			if !ok || i >= len(x) {
				return "", valueAbsent
			}
			v = x[i]
		default:
			return "", valueAbsent
		}
	}
	return scalarText(v)
}

// arrayIndex parses a path part as an array index: decimal, no sign, no
// leading zero.
func arrayIndex(s string) (int, bool) {
	if s == "" || len(s) > 9 || s[0] == '0' && len(s) > 1 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, true
}

// scalarText is the text a condition compares a decoded JSON value with.
func scalarText(v any) (string, valuePresence) {
	switch x := v.(type) {
	case nil:
		return "", valueAbsent
	case string:
		return x, valueScalar
	case bool:
		return strconv.FormatBool(x), valueScalar
	case json.Number:
		return canonicalNumber(string(x)), valueScalar
	default:
		return "", valueComposite
	}
}

// canonicalNumber writes a JSON number in its shortest form: an integer
// literal as it is (exact at any size, -0 as 0), any other as the float64
// it denotes, without exponent below 1e21 when it is whole (42.0 is 42).
func canonicalNumber(lit string) string {
	if !strings.ContainsAny(lit, ".eE") {
		if lit == "-0" {
			return "0"
		}
		return lit
	}
	f, err := strconv.ParseFloat(lit, 64)
	switch {
	case err != nil: // out of range: leave it
		return lit
	case f == 0:
		return "0"
	case f == math.Trunc(f) && math.Abs(f) < 1e21:
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}
