package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/policy"
)

// TestPolicyCheck protects 'cove policy check': "FILE: ok" on stdout for a
// policy that checks; for one that does not, each problem on stderr as
// FILE:LINE:COL and exit 1; and no server is needed for either.
func TestPolicyCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write("good.cedar", string(policy.Default()))
	syntax := write("syntax.cedar", "permit (principal, action, resource)\nwhen { principal == };\n")
	typo := write("typo.cedar", "@id(\"ok\") permit (principal, action, resource);\n\n"+
		"@id(\"typo\")\npermit (principal, action == Cove::Action::\"session.exce\", resource);\n")
	missing := filepath.Join(dir, "missing.cedar")

	tests := []struct {
		name       string
		stdin      string
		args       []string
		want       int
		wantOut    string
		wantErr    string // the whole of stderr; "" for none
		errContain string // a substring of stderr, when the whole varies
	}{
		{name: "ok", args: []string{good}, want: 0, wantOut: good + ": ok\n"},
		{name: "stdin", stdin: string(policy.Default()), args: []string{"-"}, want: 0, wantOut: "-: ok\n"},
		{name: "syntax error", args: []string{syntax}, want: 1,
			wantErr: syntax + ":2:22: syntax error at \";\": invalid primary\n"},
		{name: "validation errors", args: []string{typo}, want: 1,
			wantErr: typo + ":3:1: policy \"typo\": unable to find an applicable action given the policy scope constraints\n" +
				typo + ":3:1: policy \"typo\": unrecognized action `Cove::Action::\"session.exce\"`\n"},
		{name: "every file is checked", args: []string{syntax, good}, want: 1, wantOut: good + ": ok\n",
			wantErr: syntax + ":2:22: syntax error at \";\": invalid primary\n"},
		{name: "missing file", args: []string{missing}, want: 1, errContain: "cove: policy check: open " + missing + ": no such file"},
		{name: "too large", stdin: strings.Repeat("\n", policy.MaxPolicyBytes+1), args: []string{"-"}, want: 1, errContain: "-: policy is 1048577 bytes; the limit is 1048576"},
		{name: "no file", args: nil, want: 2, errContain: "Run 'cove policy check --help' for usage."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, "", tc.stdin, append([]string{"policy", "check"}, tc.args...)...)
			if code != tc.want {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.want, stderr)
			}
			if stdout != tc.wantOut {
				t.Errorf("stdout %q, want %q", stdout, tc.wantOut)
			}
			if tc.errContain != "" {
				if !strings.Contains(stderr, tc.errContain) {
					t.Errorf("stderr %q does not contain %q", stderr, tc.errContain)
				}
			} else if stderr != tc.wantErr {
				t.Errorf("stderr %q, want %q", stderr, tc.wantErr)
			}
		})
	}
}
