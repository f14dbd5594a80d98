package egress

import (
	"bytes"
	"container/list"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// CA file names inside the directory given to LoadOrCreateCA.
const (
	caCertFile = "egress-ca.pem"
	caKeyFile  = "egress-ca.key"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 24 * time.Hour
	// leafBackdate covers a guest whose clock lags the host's (a woken
	// guest's clock is set again, but not before its first connection).
	leafBackdate = time.Hour
	// leafRenew: a cached leaf with less than this left is minted again.
	leafRenew     = time.Hour
	leafCacheSize = 1024
)

// CA is the per-installation certificate authority that signs the leaf
// certificates the proxy shows guests when it intercepts TLS. Its
// certificate goes into every guest's trust store; its key never leaves the
// host.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer

	mu sync.Mutex
	// leaves caches minted leaves by host, least recently used at the back.
	leaves map[string]*list.Element // guarded by mu
	lru    *list.List               // guarded by mu; of *leafEntry
}

type leafEntry struct {
	host string
	cert *tls.Certificate
}

// LoadOrCreateCA loads the CA from dir (egress-ca.pem and egress-ca.key),
// or creates one there if neither file exists: an ECDSA P-256 key (which
// curl, git, pip and Python's ssl all accept), valid ten years, named
// "cove egress CA (HOSTNAME)". The key file must be readable by its owner
// only (0600); a key file that its group or others may read is refused, as
// is a certificate without its key. A key without a certificate is what a
// server killed during the creation leaves (the key is written first): the
// certificate, which nothing can have used, is made for that key.
func LoadOrCreateCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("egress: create CA key: %w", err)
		}
		if err := createCA(certPath, keyPath, key, true); err != nil {
			return nil, err
		}
	case errors.Is(certErr, fs.ErrNotExist) && keyErr == nil:
		key, err := loadKey(keyPath)
		if err != nil {
			return nil, err
		}
		if err := createCA(certPath, keyPath, key, false); err != nil {
			return nil, err
		}
	case certErr != nil:
		return nil, fmt.Errorf("egress: load CA: %w", certErr)
	case keyErr != nil:
		return nil, fmt.Errorf("egress: load CA: %w (remove %s too to create a new CA)", keyErr, certPath)
	}
	return loadCA(certPath, keyPath)
}

// createCA writes a CA certificate for key to certPath, and the key to
// keyPath first if writeKey.
func createCA(certPath, keyPath string, key crypto.Signer, writeKey bool) error {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown host"
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: fmt.Sprintf("cove egress CA (%s)", host), Organization: []string{"cove"}},
		NotBefore:             now.Add(-leafBackdate),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("egress: create CA certificate: %w", err)
	}
	// The key first: a crash between the two leaves a key without a
	// certificate, which the next start completes.
	if writeKey {
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return fmt.Errorf("egress: marshal CA key: %w", err)
		}
		if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
			return fmt.Errorf("egress: write CA key: %w", err)
		}
	}
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("egress: write CA certificate: %w", err)
	}
	return nil
}

// writeFileAtomic writes data to a temporary file beside path with mode and
// renames it into place, so a reader never sees half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func loadCA(certPath, keyPath string) (*CA, error) {
	key, err := loadKey(keyPath)
	if err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("egress: load CA certificate: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("egress: load CA certificate: %s holds no PEM CERTIFICATE", certPath)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("egress: load CA certificate %s: %w", certPath, err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("egress: load CA key %s: %w", keyPath, err)
	}
	if !bytes.Equal(pub, cert.RawSubjectPublicKeyInfo) {
		return nil, fmt.Errorf("egress: load CA: the key in %s does not belong to the certificate in %s", keyPath, certPath)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("egress: load CA: %s is not a CA certificate", certPath)
	}
	if time.Now().After(cert.NotAfter) {
		return nil, fmt.Errorf("egress: load CA: %s expired on %s; remove both files to create a new CA (and reinstall it in templates)", certPath, cert.NotAfter.Format(time.DateOnly))
	}
	return &CA{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		key:     key,
		leaves:  make(map[string]*list.Element),
		lru:     list.New(),
	}, nil
}

// loadKey reads the CA's private key, refusing a file its group or
// others may read.
func loadKey(keyPath string) (crypto.Signer, error) {
	fi, err := os.Stat(keyPath)
	if err != nil {
		return nil, fmt.Errorf("egress: load CA key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("egress: load CA key: %s has mode %04o: its group or others may read it; chmod 600 it", keyPath, fi.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("egress: load CA key: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("egress: load CA key: %s holds no PEM PRIVATE KEY", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("egress: load CA key %s: %w", keyPath, err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("egress: load CA key %s: %T cannot sign", keyPath, k)
	}
	return key, nil
}

// CertPEM returns the CA certificate, PEM-encoded, for guests' trust stores.
func (c *CA) CertPEM() []byte { return bytes.Clone(c.certPEM) }

// Certificate returns the parsed CA certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// leaf returns a certificate for host (a normalized DNS name or IP literal),
// from the cache while it has over an hour to live, else minted anew.
func (c *CA) leaf(host string, now time.Time) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.leaves[host]; ok {
		le := e.Value.(*leafEntry)
		if now.Add(leafRenew).Before(le.cert.Leaf.NotAfter) {
			c.lru.MoveToFront(e)
			return le.cert, nil
		}
		c.lru.Remove(e)
		delete(c.leaves, host)
	}
	// Minting under the lock keeps two handshakes for one new host from
	// minting twice; a mint takes well under a millisecond.
	cert, err := c.mint(host, now)
	if err != nil {
		return nil, err
	}
	c.leaves[host] = c.lru.PushFront(&leafEntry{host: host, cert: cert})
	for c.lru.Len() > leafCacheSize {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.leaves, old.Value.(*leafEntry).host)
	}
	return cert, nil
}

func (c *CA) mint(host string, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("egress: leaf key for %s: %w", host, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    now.Add(-leafBackdate),
		NotAfter:     now.Add(leafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("egress: leaf certificate for %s: %w", host, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("egress: leaf certificate for %s: %w", host, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func randomSerial() *big.Int {
	// 128 random bits, as CAs use; rand.Int never fails on crypto/rand.
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	return n
}
