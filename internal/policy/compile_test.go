package policy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestDefaultPolicyChecks: the embedded default parses and validates, and
// Default and Source return its text.
func TestDefaultPolicyChecks(t *testing.T) {
	e := New()
	if err := e.Check(Default()); err != nil {
		t.Fatalf("default policy: %v", err)
	}
	name, src := e.Source()
	if name != DefaultName || !bytes.Equal(src, defaultPolicy) {
		t.Errorf("Source() = %q, %d bytes; want %q and the default's %d", name, len(src), DefaultName, len(defaultPolicy))
	}
}

// TestCheckReportsPositions protects what 'cove policy check' and Load
// report for a bad policy: an *Error whose problems carry the line and
// column of the fault, and the @id of the policy at fault, with a message
// that says what is wrong.
func TestCheckReportsPositions(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []Problem // Msg: a substring of the message
	}{
		{
			name: "syntax: missing operand",
			src:  "permit (principal, action, resource)\n  when { principal.kind == };\n",
			// Cedar places the error at the token after the fault.
			want: []Problem{{Line: 2, Column: 29, Msg: `syntax error at ";": invalid primary`}},
		},
		{
			name: "syntax: misspelt effect",
			src:  "// a comment\n\nallow (principal, action, resource);\n",
			want: []Problem{{Line: 3, Column: 7, Msg: "unexpected effect: allow"}},
		},
		{
			name: "syntax: unterminated string",
			src:  `permit (principal == Cove::User::"alice, action, resource);`,
			want: []Problem{{Line: 1, Column: 34, Msg: "literal not terminated"}},
		},
		{
			name: "syntax: cut short",
			src:  "permit (principal, action, resource",
			want: []Problem{{Line: 1, Column: 36, Msg: "syntax error at end of input"}},
		},
		{
			name: "unknown action",
			src:  "@id(\"ok\")\npermit (principal, action == Cove::Action::\"session.read\", resource);\n\n@id(\"typo\")\npermit (principal, action == Cove::Action::\"session.exce\", resource);\n",
			want: []Problem{
				{Line: 4, Column: 1, Policy: "typo", Msg: "unable to find an applicable action"},
				{Line: 4, Column: 1, Policy: "typo", Msg: "unrecognized action `Cove::Action::\"session.exce\"`"},
			},
		},
		{
			name: "misspelt attribute",
			src:  "@id(\"admins\")\npermit (principal is Cove::User, action, resource) when { principal.knd == \"admin\" };",
			want: []Problem{{Line: 1, Column: 1, Policy: "admins", Msg: "attribute `knd` on entity type `Cove::User` not found"}},
		},
		{
			name: "attribute of the wrong principal",
			src:  "  permit (principal, action, resource) when { principal.kind == \"admin\" };",
			want: []Problem{{Line: 1, Column: 3, Msg: "attribute `kind` on entity type `Cove::Agent` not found (the principal may be a session's Agent here: add `principal is Cove::User` to the scope)"}},
		},
		{
			name: "unknown entity type",
			src:  "@id(\"u\") permit (principal is Cove::Usr, action, resource);",
			want: []Problem{
				{Line: 1, Column: 1, Policy: "u", Msg: "unable to find an applicable action"},
				{Line: 1, Column: 1, Policy: "u", Msg: "unrecognized entity type `Cove::Usr`"},
			},
		},
		{
			name: "wrong type in context",
			src:  "@id(\"argv\") permit (principal, action == Cove::Action::\"session.exec\", resource) when { context.argv.contains(3) };",
			want: []Problem{{Line: 1, Column: 1, Policy: "argv", Msg: "not compatible"}},
		},
		{
			name: "agent on an action it cannot take",
			src:  "@id(\"a\") permit (principal is Cove::Agent, action == Cove::Action::\"session.exec\", resource);",
			want: []Problem{{Line: 1, Column: 1, Policy: "a", Msg: "unable to find an applicable action"}},
		},
		{
			name: "duplicate @id",
			src:  "@id(\"x\") permit (principal, action, resource);\n@id(\"x\") forbid (principal, action, resource);",
			want: []Problem{{Line: 2, Column: 1, Policy: "x", Msg: "another policy has this @id"}},
		},
		{
			name: "empty",
			src:  "",
			want: []Problem{{Msg: "the policy has no permit, so it would deny every request"}},
		},
		{
			name: "comments only",
			src:  "// cove's policy\n\n// (cut short here)\n",
			want: []Problem{{Msg: "the policy has no permit"}},
		},
		{
			name: "forbids only",
			src:  "@id(\"no-sudo\") forbid (principal, action == Cove::Action::\"session.exec\", resource) when { context.command == \"sudo\" };",
			want: []Problem{{Msg: "the policy has no permit"}},
		},
		{
			name: "too large",
			src:  "// " + strings.Repeat("x", MaxPolicyBytes),
			want: []Problem{{Msg: "the limit is 1048576"}},
		},
	}
	var e Engine
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pe := errorsAs(t, e.Check([]byte(tc.src)))
			if pe.File != "" {
				t.Errorf("File = %q, want none from Check", pe.File)
			}
			if len(pe.Problems) != len(tc.want) {
				t.Fatalf("problems:\n%v\nwant %d", pe, len(tc.want))
			}
			for i, got := range pe.Problems {
				want := tc.want[i]
				if got.Line != want.Line || got.Column != want.Column || got.Policy != want.Policy || !strings.Contains(got.Msg, want.Msg) {
					t.Errorf("problem %d = %+v, want %+v (Msg a substring)", i, got, want)
				}
			}
		})
	}
	if name, _ := e.Source(); name != "" {
		t.Errorf("Check put a policy in force: %q", name)
	}
}

// TestErrorText protects the compiler-style text of an *Error: one problem
// a line, "FILE:LINE:COL: policy "ID": MSG".
func TestErrorText(t *testing.T) {
	err := &Error{File: "p.cedar", Problems: []Problem{
		{Line: 3, Column: 5, Msg: `syntax error at ";": invalid primary`},
		{Line: 7, Column: 1, Policy: "admins", Msg: "attribute `knd` not found"},
		{Msg: "value out of range"},
	}}
	want := "p.cedar:3:5: syntax error at \";\": invalid primary\n" +
		"p.cedar:7:1: policy \"admins\": attribute `knd` not found\n" +
		"p.cedar: value out of range"
	if got := err.Error(); got != want {
		t.Errorf("Error() =\n%s\nwant\n%s", got, want)
	}
	err.File = ""
	if got, want := err.Error(), "3:5: syntax error at \";\": invalid primary\n7:1: policy \"admins\": attribute `knd` not found\nvalue out of range"; got != want {
		t.Errorf("Error() without a file =\n%s\nwant\n%s", got, want)
	}
}

// TestLoadKeepsPolicyInForce protects reloads: a policy file that does not
// check, cannot be read or is too large is refused with an error naming
// the file (and line and column), and the policy in force still decides.
func TestLoadKeepsPolicyInForce(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.cedar")
	// Only admins: alice may no longer exec on her own session.
	goodSrc := `@id("admins-only") permit (principal is Cove::User, action, resource) when { principal.kind == "admin" };`
	if err := os.WriteFile(good, []byte(goodSrc), 0o600); err != nil {
		t.Fatal(err)
	}
	e := New()
	if err := e.Load(ctx, good); err != nil {
		t.Fatal(err)
	}
	own := Request{Principal: alice, Action: SessionExec, Resource: aliceSession}
	if d := e.Decide(own); d.Allow {
		t.Fatalf("after loading %s: %+v, want a denial", good, d)
	}

	bad := filepath.Join(dir, "bad.cedar")
	if err := os.WriteFile(bad, []byte(string(defaultPolicy)+"\npermit (principal, action, resource) when { context.nope };\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badLine := strings.Count(string(defaultPolicy), "\n") + 2
	large := filepath.Join(dir, "large.cedar")
	if err := os.WriteFile(large, append(append([]byte{}, defaultPolicy...), bytes.Repeat([]byte("\n"), MaxPolicyBytes)...), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.cedar") // truncated, then SIGHUP
	if err := os.WriteFile(empty, []byte("// cove policy\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	syntax := filepath.Join(dir, "syntax.cedar")
	if err := os.WriteFile(syntax, []byte("permit (principal, action, resource)\nwhen { principal == };\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	tests := []struct {
		ctx  context.Context
		path string
		want string
	}{
		{ctx, bad, bad + ":" + strconv.Itoa(badLine) + fmt.Sprintf(":1: attribute `nope` in context for Cove::Action::\"audit.admin\" and %d other actions not found", len(Actions())-1)},
		{ctx, syntax, syntax + ":2:22: syntax error at \";\": invalid primary"},
		{ctx, empty, empty + ": the policy has no permit"},
		{ctx, large, "the limit is 1048576"},
		{ctx, filepath.Join(dir, "missing.cedar"), "no such file"},
		{ctx, dir, "is a directory"},
		{canceled, good, "context canceled"},
	}
	for _, tc := range tests {
		err := e.Load(tc.ctx, tc.path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("Load(%s) = %v, want an error naming the file and containing %q", tc.path, err, tc.want)
		}
		if name, src := e.Source(); name != good || string(src) != goodSrc {
			t.Errorf("after Load(%s) failed, Source() = %q, want %q still", tc.path, name, good)
		}
		if d := e.Decide(own); d.Allow {
			t.Errorf("after Load(%s) failed: %+v, want the policy in force to deny still", tc.path, d)
		}
	}
	// The default comes back on request.
	e.LoadDefault()
	if d := e.Decide(own); !d.Allow {
		t.Errorf("after LoadDefault: %+v, want the owner allowed", d)
	}
}
