// Package audit keeps cove's tamper-evident audit log: an append-only
// transparency log (tessera on POSIX storage) of who did what, through which
// agent, in which session, with checkpoints signed in the
// golang.org/x/mod/sumdb/note format, and the offline verifier that proves
// nobody altered, removed, inserted or reordered an entry since.
//
// # What an entry may hold
//
// Never the value of a secret or a token, and never a file's contents: a
// secret is named, a token is identified by its id, a file by its path,
// size and SHA-256. The types below have no free-form map (no headers, no
// environment) so that nothing arrives in the log unread.
package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// MaxEntrySize is the largest canonical entry the log takes (the C2SP
// tlog-tiles limit on a leaf).
const MaxEntrySize = 1<<16 - 1

// ActorKind says who acted.
type ActorKind string

// The kinds of actor.
const (
	ActorUser      ActorKind = "user"      // an engineer, through the API
	ActorAgent     ActorKind = "agent"     // an agent inside a session
	ActorCove      ActorKind = "cove"      // the server on its own: idle parks, wakes on events, rebuilds, recovery
	ActorAnonymous ActorKind = "anonymous" // an unauthenticated caller (auth.failed)
)

// Decision is the policy's answer to an action.
type Decision string

// The decisions.
const (
	Allow Decision = "allow"
	Deny  Decision = "deny"
)

// Actor is who did it.
type Actor struct {
	Kind    ActorKind `json:"kind"`
	User    string    `json:"user,omitempty"`    // cove user id
	Issuer  string    `json:"issuer,omitempty"`  // token or OIDC issuer
	Subject string    `json:"subject,omitempty"` // subject at that issuer
	Session string    `json:"session,omitempty"` // the session an agent acts from
	Agent   string    `json:"agent,omitempty"`   // the agent's name
}

// Target is what it was done to. Every field is an identifier or a name,
// never a value that grants access.
type Target struct {
	Session  string   `json:"session,omitempty"`
	Template string   `json:"template,omitempty"`
	User     string   `json:"user,omitempty"`
	Path     string   `json:"path,omitempty"`
	Host     string   `json:"host,omitempty"`
	Port     int      `json:"port,omitempty"`
	Method   string   `json:"method,omitempty"`
	Argv     []string `json:"argv,omitempty"`     // exec; the caller keeps secrets out of argv's record (see the package doc)
	Cwd      string   `json:"cwd,omitempty"`      // exec
	Secret   string   `json:"secret,omitempty"`   // the secret's name, never its value
	Token    string   `json:"token,omitempty"`    // the token's id, never the token
	Trigger  string   `json:"trigger,omitempty"`  // a trigger's id
	Image    string   `json:"image,omitempty"`    // an image's name (image.build)
	Team     string   `json:"team,omitempty"`     // a team's name (members, team secrets)
	Hook     string   `json:"hook,omitempty"`     // a webhook's name (hook secrets)
	Audience string   `json:"audience,omitempty"` // a minted identity token's audience
	Witness  string   `json:"witness,omitempty"`  // an audit witness's URL
	Node     string   `json:"node,omitempty"`     // a node's id or name (node cordon, drain, remove)
}

// Outcome is how it ended. A nil pointer is "not known", which differs from
// zero (exit code 0, an empty file).
type Outcome struct {
	ExitCode   *int   `json:"exit_code,omitempty"`
	DurationMS int64  `json:"duration_ms,omitempty"`
	Size       *int64 `json:"size,omitempty"`
	SHA256     string `json:"sha256,omitempty"` // hex; a file's hash, never its contents
	Error      string `json:"error,omitempty"`  // free text, for a failure
}

// Entry is one record. Its canonical form (Marshal) is JSON with the
// fields in this order, empty fields left out, no insignificant space:
//
//	{"time":"2026-12-05T07:47:34.123456789Z","actor":{...},"action":"session.exec",
//	 "target":{...},"decision":"allow","outcome":{...},"ref":41}
//
// An action that takes effect is logged twice: first its announcement
// (decision, no outcome), appended before the action runs so that the action
// is refused when the log cannot take it; then, once it ended, an entry with
// the same action, its Outcome, and Ref set to the announcement's index. A
// denied action is one entry (decision deny).
type Entry struct {
	Time     time.Time // UTC, written in RFC 3339 with nanoseconds; zero is set to now by Append
	Actor    Actor
	Action   string // e.g. session.exec, session.park, egress, auth.failed, policy.denied, token.mint, secret.use, template.build
	Target   Target
	Decision Decision // allow, deny, or empty for what needs no decision (an outcome)
	Outcome  *Outcome
	Ref      *uint64 // the index of the entry that announced this action
}

// wireEntry fixes the canonical field order and names.
type wireEntry struct {
	Time     string   `json:"time"`
	Actor    Actor    `json:"actor"`
	Action   string   `json:"action"`
	Target   *Target  `json:"target,omitempty"`
	Decision Decision `json:"decision,omitempty"`
	Outcome  *Outcome `json:"outcome,omitempty"`
	Ref      *uint64  `json:"ref,omitempty"`
}

// ErrInvalidEntry is wrapped by the errors of an entry that cannot be
// logged as it is (missing action, unknown actor kind, too large).
var ErrInvalidEntry = errors.New("invalid audit entry")

// Validate says whether the entry can be logged.
func (e Entry) Validate() error {
	switch {
	case e.Action == "":
		return fmt.Errorf("audit: entry has no action: %w", ErrInvalidEntry)
	case e.Time.IsZero():
		return fmt.Errorf("audit: %s: entry has no time: %w", e.Action, ErrInvalidEntry)
	}
	switch e.Actor.Kind {
	case ActorUser, ActorAgent, ActorCove, ActorAnonymous:
	default:
		return fmt.Errorf("audit: %s: actor kind %q: %w", e.Action, e.Actor.Kind, ErrInvalidEntry)
	}
	switch e.Decision {
	case "", Allow, Deny:
	default:
		return fmt.Errorf("audit: %s: decision %q: %w", e.Action, e.Decision, ErrInvalidEntry)
	}
	return nil
}

// Marshal returns the entry's canonical JSON.
func (e Entry) Marshal() ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	w := wireEntry{
		Time:     e.Time.UTC().Format(time.RFC3339Nano),
		Actor:    e.Actor,
		Action:   e.Action,
		Decision: e.Decision,
		Outcome:  e.Outcome,
		Ref:      e.Ref,
	}
	if !e.Target.isZero() {
		w.Target = &e.Target
	}
	if w.Outcome != nil && *w.Outcome == (Outcome{}) {
		w.Outcome = nil
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(w); err != nil {
		return nil, fmt.Errorf("audit: marshal %s: %w", e.Action, err)
	}
	out := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
	if len(out) > MaxEntrySize {
		return nil, fmt.Errorf("audit: %s: entry is %d bytes, over %d: %w", e.Action, len(out), MaxEntrySize, ErrInvalidEntry)
	}
	return out, nil
}

// isZero says whether t names nothing. Every field is omitempty, so the
// JSON form says it for any field added later, too.
func (t Target) isZero() bool {
	b, err := json.Marshal(t)
	return err == nil && string(b) == "{}"
}

// ParseEntry reads an entry's canonical JSON; unknown fields are an error.
func ParseEntry(data []byte) (Entry, error) {
	var w wireEntry
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return Entry{}, fmt.Errorf("audit: parse entry: %w", err)
	}
	t, err := time.Parse(time.RFC3339Nano, w.Time)
	if err != nil {
		return Entry{}, fmt.Errorf("audit: parse entry time: %w", err)
	}
	e := Entry{Time: t, Actor: w.Actor, Action: w.Action, Decision: w.Decision, Outcome: w.Outcome, Ref: w.Ref}
	if w.Target != nil {
		e.Target = *w.Target
	}
	return e, nil
}
