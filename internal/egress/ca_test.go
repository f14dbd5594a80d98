package egress

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadOrCreateCAKeepsItsCA(t *testing.T) {
	dir := t.TempDir()
	a, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.CertPEM(), b.CertPEM()) {
		t.Fatal("the second load gave another certificate")
	}
	fi, err := os.Stat(filepath.Join(dir, caKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	c := a.Certificate()
	if !c.IsCA || !strings.HasPrefix(c.Subject.CommonName, "cove egress CA (") {
		t.Fatalf("CA certificate: IsCA=%v CN=%q", c.IsCA, c.Subject.CommonName)
	}
	if pk, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pk.Curve != elliptic.P256() {
		t.Fatalf("CA key is %T, want ECDSA P-256", c.PublicKey)
	}
	if life := time.Until(c.NotAfter); life < 9*365*24*time.Hour {
		t.Fatalf("CA valid for %s, want about ten years", life)
	}
}

func TestLoadOrCreateCARefusesAReadableKey(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateCA(dir); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, caKeyFile)
	if err := os.Chmod(key, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreateCA(dir)
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group-readable key: err = %v, want a refusal saying chmod 600", err)
	}
	// The refusal changed nothing: fixed, the same CA loads.
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err != nil {
		t.Fatalf("after chmod 600: %v", err)
	}
}

// TestLoadOrCreateCAHalfACA: a key without its certificate (a server
// killed between the two writes) gets a certificate for that key; a
// certificate without its key is refused, and the refusal makes nothing.
func TestLoadOrCreateCAHalfACA(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateCA(dir); err != nil {
		t.Fatal(err)
	}
	keyPath, certPath := filepath.Join(dir, caKeyFile), filepath.Join(dir, caCertFile)
	keyBefore, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(certPath); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatalf("key without certificate: %v, want a certificate made for it", err)
	}
	keyAfter, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(keyAfter) != string(keyBefore) {
		t.Fatal("the key was replaced")
	}
	if _, err := os.Stat(certPath); err != nil {
		t.Fatalf("no certificate written: %v", err)
	}
	if _, err := LoadOrCreateCA(dir); err != nil {
		t.Fatalf("the completed CA does not load again: %v", err)
	}
	if !ca.Certificate().IsCA {
		t.Fatal("the certificate made is not a CA")
	}

	if err := os.Remove(keyPath); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err == nil || !strings.Contains(err.Error(), caCertFile) {
		t.Fatalf("certificate without key: err = %v, want an error naming the certificate", err)
	}
	if _, err := os.Stat(keyPath); err == nil {
		t.Fatal("a refused load created a key")
	}
}

func TestLoadOrCreateCARefusesAForeignKey(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		if _, err := LoadOrCreateCA(d); err != nil {
			t.Fatal(err)
		}
	}
	other, err := os.ReadFile(filepath.Join(b, caKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a, caKeyFile), other, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(a); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Fatalf("mismatched key: err = %v", err)
	}
}

func TestLeafCertificatesVerify(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	now := time.Now()
	for _, host := range []string{"api.example.test", "127.0.0.1", "::1"} {
		leaf, err := ca.leaf(host, now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("leaf for %s: %v", host, err)
		}
		// Positive control of the check above: the leaf is for its host only.
		if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "other.example.test"}); err == nil {
			t.Errorf("leaf for %s verified for another name", host)
		}
		if ip := net.ParseIP(host); ip != nil && (len(leaf.Leaf.IPAddresses) != 1 || !leaf.Leaf.IPAddresses[0].Equal(ip)) {
			t.Errorf("leaf for %s has IP SANs %v", host, leaf.Leaf.IPAddresses)
		}
		if life := leaf.Leaf.NotAfter.Sub(now); life > 25*time.Hour || life < 23*time.Hour {
			t.Errorf("leaf for %s valid %s, want about a day", host, life)
		}
		again, _ := ca.leaf(host, now)
		if again != leaf {
			t.Errorf("leaf for %s minted twice within its life", host)
		}
		if renewed, _ := ca.leaf(host, now.Add(leafValidity)); renewed == leaf {
			t.Errorf("leaf for %s not renewed near its end", host)
		}
	}
}

func TestLeafCacheIsBounded(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range leafCacheSize + 10 {
		if _, err := ca.leaf(net.IPv4(10, 0, byte(i>>8), byte(i)).String(), now); err != nil {
			t.Fatal(err)
		}
	}
	ca.mu.Lock()
	n, l := len(ca.leaves), ca.lru.Len()
	ca.mu.Unlock()
	if n != leafCacheSize || l != leafCacheSize {
		t.Fatalf("cache holds %d (list %d), want %d", n, l, leafCacheSize)
	}
}
