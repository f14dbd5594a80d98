package e2b_test

import (
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sign is the SDK's getSignature (src/sandbox/signature.ts), written out
// again: the test checks cove against the SDK's definition, not its own.
func sign(path, op, user, token string, exp int64) string {
	raw := path + ":" + op + ":" + user + ":" + token
	if exp != 0 {
		raw += ":" + strconv.FormatInt(exp, 10)
	}
	sum := sha256.Sum256([]byte(raw))
	return "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
}

// signedURL is what uploadUrl (op write) and downloadUrl (op read) make
// with E2B_SANDBOX_URL set: no sandbox named.
func (e *fakeEnv) signedURL(path, op, token string, exp int64) string {
	q := url.Values{"path": {path}, "signature": {sign(path, op, "", token, exp)}}
	if exp != 0 {
		q.Set("signature_expiration", strconv.FormatInt(exp, 10))
	}
	return e.url + "/files?" + q.Encode()
}

// plain makes a request with no credential but the URL's.
func plain(t *testing.T, method, u, contentType, body string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestFakeSignedFileURLs uploads and downloads through signed URLs as the
// SDK makes them, and refuses a signature for another path, operation,
// sandbox or user, a tampered or past expiration, and none at all.
func TestFakeSignedFileURLs(t *testing.T) {
	e := newFakeEnv(t)
	var a, b sandboxAnswer
	e.ok(&a, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	e.ok(&b, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	const p = "/tmp/signed.txt"
	later := time.Now().Add(time.Hour).Unix()

	if st, body := plain(t, "POST", e.signedURL(p, "write", a.EnvdAccessToken, 0), "application/octet-stream", "signed data"); st != http.StatusOK {
		t.Fatalf("signed upload: %d %s", st, body)
	}
	if st, body := plain(t, "GET", e.signedURL(p, "read", a.EnvdAccessToken, later), "", ""); st != http.StatusOK || body != "signed data" {
		t.Fatalf("signed download: %d %q", st, body)
	}
	// The file is a's: b's session has none.
	if st, body := plain(t, "GET", e.signedURL(p, "read", b.EnvdAccessToken, 0), "", ""); st != http.StatusNotFound {
		t.Fatalf("b's signed download of a path only a has: %d %s, want 404", st, body)
	}
	// A URL that names its sandbox is checked against that one.
	if st, body := plain(t, "GET", e.signedURL(p, "read", a.EnvdAccessToken, 0), "", "", "E2b-Sandbox-Id", a.SandboxID); st != http.StatusOK || body != "signed data" {
		t.Fatalf("signed download naming its sandbox: %d %q", st, body)
	}

	refused := func(what, method, u string, hdr ...string) {
		t.Helper()
		st, body := plain(t, method, u, "application/octet-stream", "overwritten", hdr...)
		if st != http.StatusUnauthorized || !strings.Contains(body, `"code":401`) {
			t.Errorf("%s: %d %s, want 401", what, st, body)
		}
	}
	read := e.signedURL(p, "read", a.EnvdAccessToken, 0)
	refused("a read signature used to write", "POST", read)
	other, _ := url.Parse(read)
	q := other.Query()
	q.Set("path", "/etc/shadow")
	other.RawQuery = q.Encode()
	refused("a signature for another path", "GET", other.String())
	refused("another user's signature", "GET", read+"&username=someone")
	refused("a signature naming another sandbox", "GET", read, "E2b-Sandbox-Id", b.SandboxID)
	refused("a wrong token", "GET", e.signedURL(p, "read", strings.Repeat("0", 64), 0))
	refused("an expired signature", "GET", e.signedURL(p, "read", a.EnvdAccessToken, time.Now().Add(-time.Minute).Unix()))
	ext, _ := url.Parse(e.signedURL(p, "read", a.EnvdAccessToken, time.Now().Add(-time.Minute).Unix()))
	q = ext.Query()
	q.Set("signature_expiration", strconv.FormatInt(later, 10))
	ext.RawQuery = q.Encode()
	refused("an expiration moved later", "GET", ext.String())
	refused("an empty signature", "GET", e.url+"/files?path="+url.QueryEscape(p)+"&signature=")
	// Nothing was written by the refused upload.
	if st, body := plain(t, "GET", e.signedURL(p, "read", a.EnvdAccessToken, 0), "", ""); st != http.StatusOK || body != "signed data" {
		t.Fatalf("after the refusals: %d %q, want the file unchanged", st, body)
	}
	// A paused sandbox answers 502, as for the access token.
	e.ok(nil, http.StatusNoContent, e.alice, "POST", "/sandboxes/"+a.SandboxID+"/pause", "")
	if st, body := plain(t, "GET", read, "", ""); st != http.StatusBadGateway {
		t.Fatalf("signed download from a paused sandbox: %d %s, want 502", st, body)
	}
}
