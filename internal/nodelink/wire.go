package nodelink

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// The routes of the protocol.
const (
	// JoinPath is where a node joins, on the API server.
	JoinPath = "/v1/nodes/join"
	// ConnectPath is where a node opens its control connection.
	ConnectPath = "/v1/nodes/connect"
	// HeartbeatPath is the server's node-facing route that takes a
	// node's heartbeats, over the control connection.
	HeartbeatPath = "/link/v1/heartbeat"
	// InfoPath is the node's route that tells who it is (Info).
	InfoPath = "/node/v1/info"
	// HeaderNodeID is the header of the connect answer that names the
	// node the credential belongs to.
	HeaderNodeID = "Cove-Node-Id"
	// HeaderServes, on a connect, says what the node serves over its
	// connection beside the node routes: ServesSessions, a node that runs
	// sessions and serves cove's API (AgentConfig.Serves). The server
	// then records itself as where the node's sessions are reached
	// (store.Node.URL, Hub.SetURL) and relays calls about them over the
	// connection (Hub.Transport).
	HeaderServes = "Cove-Node-Serves"
	// ServesSessions is HeaderServes's value for a node serving sessions.
	ServesSessions = "sessions"
	// HeaderAPI, on a call a server relays to a node serving sessions,
	// says which of the node's APIs serves it: APIE2B for the
	// E2B-compatible API (the relaying server's E2B API sets it), none
	// for cove's (cove's API server removes it from what it relays).
	// The node's handler is Split's.
	HeaderAPI = "Cove-Node-Api"
	// APIE2B is HeaderAPI's value for the E2B-compatible API.
	APIE2B = "e2b"
)

// Split is the handler of a node serving sessions: a call relayed for
// its E2B-compatible API (HeaderAPI: APIE2B) goes to e2b, any other to
// cove's API, coveAPI. With e2b nil (the node serves no E2B API) such a
// call is a 503 saying so.
func Split(coveAPI, e2b http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(HeaderAPI) != APIE2B {
			coveAPI.ServeHTTP(w, r)
			return
		}
		if e2b == nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"code":503,"message":"this node serves no E2B API ('cove node' started without it): use cove's API"}`)
			return
		}
		e2b.ServeHTTP(w, r)
	})
}

// MaxJoinBytes bounds the body of a join request; a bigger one is
// answered 413.
const MaxJoinBytes = 64 << 10

// JoinRequest is the body of POST /v1/nodes/join.
type JoinRequest struct {
	// Name is the node's unique name (ValidName); a node that joins
	// again with a name gets that name's record back.
	Name     string             `json:"name"`
	Labels   map[string]string  `json:"labels,omitempty"`
	Capacity store.NodeCapacity `json:"capacity"`
}

// JoinResponse is the answer to a join.
type JoinResponse struct {
	NodeID     string     `json:"node_id"`
	Credential Credential `json:"credential"`
}

// Info is what GET /node/v1/info on a node answers.
type Info struct {
	ID       string             `json:"id"`
	Name     string             `json:"name"`
	Labels   map[string]string  `json:"labels,omitempty"`
	Capacity store.NodeCapacity `json:"capacity"`
	Version  string             `json:"version"`
}

// credentialPrefix starts every node credential, so that one found in a
// log or a file says what it is.
const credentialPrefix = "cnode_"

// Credential is a node's secret: "cnode_" and 32 random bytes in
// base64url. It redacts itself in logs.
type Credential string

// LogValue keeps the credential out of logs.
func (Credential) LogValue() slog.Value { return slog.StringValue(credentialPrefix + "…(redacted)") }

// NewCredential makes a random credential.
func NewCredential() (Credential, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("nodelink: credential: %w", err)
	}
	return Credential(credentialPrefix + base64.RawURLEncoding.EncodeToString(b)), nil
}

// Valid reports whether c has the form of a credential.
func (c Credential) Valid() bool {
	rest, ok := strings.CutPrefix(string(c), credentialPrefix)
	if !ok {
		return false
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	return err == nil && len(b) == 32
}

// Hash is what the store keeps of c (store.Node.CredentialHash): the hex
// SHA-256 of its text.
func (c Credential) Hash() string {
	sum := sha256.Sum256([]byte(c))
	return hex.EncodeToString(sum[:])
}

// tokenEqual compares a presented secret with the expected one in time
// that depends on neither (both are hashed first, so lengths do not leak).
func tokenEqual(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// bearer returns the bearer token of r, or "".
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

var (
	nameRE       = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$`)
	labelValueRE = regexp.MustCompile(`^[A-Za-z0-9._-]{0,63}$`)
)

// maxLabels bounds a node's labels.
const maxLabels = 64

// ValidName checks a node's name: 1 to 63 lowercase letters, digits,
// dots and dashes, starting and ending with a letter or digit (a host
// name's label, dots allowed), and not "join" or "connect", which
// /v1/nodes/{id} could not tell from the routes of those names.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return api.Errorf(api.CodeInvalid, "node name %q is not valid: 1 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit", name)
	}
	if name == "join" || name == "connect" {
		return api.Errorf(api.CodeInvalid, "node name %q is reserved: choose another", name)
	}
	return nil
}

// ValidLabels checks a node's labels: at most 64; keys of 1 to 63
// letters, digits, '.', '_', '/' and '-'; values of up to 63 letters,
// digits, '.', '_' and '-'.
func ValidLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return api.Errorf(api.CodeInvalid, "%d labels: at most %d", len(labels), maxLabels)
	}
	for k, v := range labels {
		if !labelKeyRE.MatchString(k) {
			return api.Errorf(api.CodeInvalid, "label key %q is not valid: 1 to 63 letters, digits, '.', '_', '/' and '-'", k)
		}
		if !labelValueRE.MatchString(v) {
			return api.Errorf(api.CodeInvalid, "label %s: value %q is not valid: up to 63 letters, digits, '.', '_' and '-'", k, v)
		}
	}
	return nil
}

// ParseLabels parses "k=v,k2=v2" (the --labels flag) and checks it.
func ParseLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		k, v, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("label %q: want KEY=VALUE", item)
		}
		labels[k] = v
	}
	if err := ValidLabels(labels); err != nil {
		return nil, err
	}
	return labels, nil
}
