package issuer_test

import (
	"testing"
)

// BenchmarkMint is the session-token minting figure of make bench.
func BenchmarkMint(b *testing.B) {
	is := newIssuer(b, b.TempDir(), testURL)
	for b.Loop() {
		if _, err := is.Mint(alice, "sts.amazonaws.com", 0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	is := newIssuer(b, b.TempDir(), testURL)
	tok := mint(b, is, alice, "cove", 0)
	for b.Loop() {
		if _, err := is.Verify(tok, "cove"); err != nil {
			b.Fatal(err)
		}
	}
}
