package e2b

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cove-dev/cove/internal/audit"
)

// Signed file URLs: the SDK's uploadUrl() and downloadUrl() make
// <E2B_SANDBOX_URL>/files?path=P[&username=U]&signature=S[&signature_expiration=E],
// for a browser or any HTTP client to use without the access token. S is
// "v1_" and the unpadded standard base64 of SHA-256("P:OP:U:TOKEN[:E]"),
// OP being read (GET) or write (POST), TOKEN the sandbox's access token,
// E the Unix second after which the URL is refused (none: it never
// expires, as E2B's).
//
// With E2B_SANDBOX_URL set the URL names no sandbox (no E2b-Sandbox-Id
// header, no 49983-ID host): the signature is checked against each
// sandbox's token (one HMAC and one SHA-256 each), and the one it matches
// is the sandbox. A URL that names its sandbox is checked against that
// one only.

// signatureOf is the SDK's getSignature.
func signatureOf(path, op, user, token, expiration string) string {
	raw := path + ":" + op + ":" + user + ":" + token
	if expiration != "" {
		raw += ":" + expiration
	}
	sum := sha256.Sum256([]byte(raw))
	return "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
}

// errSignature is a signed URL refused: its answer is 401.
type errSignature struct{ msg string }

func (e *errSignature) Error() string { return e.msg }

// signedSandbox returns the sandbox whose access token signed r (among
// named, if not ""), or why none did.
func (s *Server) signedSandbox(r *http.Request, named string) (string, error) {
	q := r.URL.Query()
	op := "read"
	if r.Method == http.MethodPost {
		op = "write"
	}
	exp := q.Get("signature_expiration")
	var expAt int64
	if exp != "" {
		n, err := strconv.ParseInt(exp, 10, 64)
		if err != nil || n <= 0 {
			return "", &errSignature{fmt.Sprintf("signature_expiration %q: want Unix seconds", exp)}
		}
		expAt = n
	}
	sig, p, user := q.Get("signature"), q.Get("path"), q.Get("username")
	// "v1_" and 43 base64 characters: anything else matches no sandbox,
	// and costs no scan.
	if len(sig) != 46 || !strings.HasPrefix(sig, "v1_") {
		return "", &errSignature{"malformed signature: want v1_ and an unpadded base64 SHA-256"}
	}
	candidates := []string{named}
	if named == "" {
		ss, err := s.cfg.Sessions.List(r.Context())
		if err != nil {
			return "", fmt.Errorf("e2b: signed URL: list the sandboxes: %w", err)
		}
		candidates = candidates[:0]
		for _, x := range ss {
			candidates = append(candidates, x.ID)
		}
	}
	for _, id := range candidates {
		want := signatureOf(p, op, user, s.AccessToken(id), exp)
		if subtle.ConstantTimeCompare([]byte(want), []byte(sig)) != 1 {
			continue
		}
		if expAt != 0 && s.cfg.Now().Unix() > expAt {
			return "", &errSignature{fmt.Sprintf("the signed URL expired at %s", time.Unix(expAt, 0).UTC().Format(time.RFC3339))}
		}
		return id, nil
	}
	return "", &errSignature{fmt.Sprintf("wrong signature for a %s of %q", op, p)}
}

// serveSigned serves GET or POST /files with a signature in place of the
// access token.
func (s *Server) serveSigned(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		writeEnvdError(w, http.StatusMethodNotAllowed, "a signed URL is for GET or POST /files")
		return
	}
	named := sandboxOf(r)
	id, err := s.signedSandbox(r, named)
	var se *errSignature
	switch {
	case errors.As(err, &se):
		s.refused(r.Context(), audit.Actor{Kind: audit.ActorAnonymous, Issuer: accessTokenIssuer}, "auth.failed",
			audit.Target{Session: named, Path: r.URL.Query().Get("path")}, se.msg)
		writeEnvdError(w, http.StatusUnauthorized, "%s", se.msg)
		return
	case err != nil:
		s.log.ErrorContext(r.Context(), "e2b: signed URL", "err", err)
		writeEnvdError(w, http.StatusServiceUnavailable, "the signed URL cannot be checked now; try again")
		return
	}
	if named == "" && s.route(w, r, id, true) {
		return // found among all sandboxes, held by another server's node
	}
	s.serveSandbox(w, r, id)
}
