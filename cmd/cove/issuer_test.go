package main

import "testing"

// TestDefaultIssuerURL: without --issuer-url, a loopback listen address is
// the issuer; any other gives none (verifiers need https there).
func TestDefaultIssuerURL(t *testing.T) {
	for listen, want := range map[string]string{
		"127.0.0.1:7070": "http://127.0.0.1:7070",
		"localhost:7070": "http://localhost:7070",
		"[::1]:7070":     "http://[::1]:7070",
		":7070":          "",
		"0.0.0.0:7070":   "",
		"10.0.0.5:7070":  "",
		"127.0.0.1:0":    "",
		"nonsense":       "",
	} {
		if got := defaultIssuerURL(listen); got != want {
			t.Errorf("defaultIssuerURL(%q) = %q, want %q", listen, got, want)
		}
	}
}
