package main

import (
	"bytes"
	"strings"
	"testing"
)

// The identity section measures its four figures over real components,
// n samples each, and prints them as rows of the table; the policy
// decision carries its 50 µs target.
func TestIdentityRows(t *testing.T) {
	rows, err := identityRows(t.Context(), 20)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"policy decision", "authenticate an API token", "authenticate an OIDC ID token", "mint a session token"}
	if len(rows) != len(want) {
		t.Fatalf("%d rows, want %d", len(rows), len(want))
	}
	for i, r := range rows {
		if !strings.HasPrefix(r.name, want[i]) || len(r.samples) != 20 || r.unit != "µs" || pct(r.samples, 0.5) <= 0 {
			t.Errorf("row %d: %q, %d samples in %s, p50 %v", i, r.name, len(r.samples), r.unit, pct(r.samples, 0.5))
		}
	}
	if rows[0].target != 50 {
		t.Errorf("policy decision target %v, want 50 µs", rows[0].target)
	}
	var b bytes.Buffer
	printTable(&b, "in-process", rows)
	if !strings.Contains(b.String(), "| policy decision (Cedar, default policy)") || !strings.Contains(b.String(), "≤ 50 µs") {
		t.Errorf("table:\n%s", b.String())
	}
	if _, err := identityRows(t.Context(), 0); err == nil {
		t.Error("0 samples: no error")
	}
}
