package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"
)

// Secret owner kinds (Secret.OwnerKind).
const (
	SecretOwnerUser     = "user"
	SecretOwnerTeam     = "team"
	SecretOwnerTemplate = "template"
)

// Secret is a secret as listed: a credential that the egress proxy adds,
// as a header, to the requests its owner's sessions make to its hosts.
// Never its value.
type Secret struct {
	Name string `json:"name"`
	// OwnerKind is SecretOwnerUser, SecretOwnerTeam or
	// SecretOwnerTemplate; Owner the user's name, the team's or the
	// template's, and OwnerID, for a user, its id.
	OwnerKind string `json:"owner_kind"`
	Owner     string `json:"owner"`
	OwnerID   string `json:"owner_id,omitempty"`
	// Hosts are the hosts the secret goes to: exact names, or "*.suffix"
	// for any name below suffix.
	Hosts []string `json:"hosts"`
	// Header is the header template, "Authorization: Bearer {{value}}",
	// and HeaderName its name alone.
	Header     string    `json:"header"`
	HeaderName string    `json:"header_name"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// PutSecretRequest is the body of PUT /v1/secrets/{name}. It names at
// most one owner: Team, Template, or User (an admin setting another
// user's); none is the caller's own.
type PutSecretRequest struct {
	// Value is the secret itself: it is sealed at once and no answer
	// ever shows it.
	Value string `json:"value"`
	// Hosts are where it may go: "github.com", "*.pypi.org".
	Hosts []string `json:"hosts"`
	// Header is where it goes: "Authorization: Bearer {{value}}".
	Header   string `json:"header"`
	Team     string `json:"team,omitempty"`
	Template string `json:"template,omitempty"`
	User     string `json:"user,omitempty"`
}

// LogValue keeps the value out of logs.
func (r PutSecretRequest) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Any("hosts", r.Hosts),
		slog.String("header", r.Header),
		slog.String("team", r.Team),
		slog.String("template", r.Template),
		slog.String("user", r.User),
	)
}

// String keeps the value out of fmt's %v and %+v.
func (r PutSecretRequest) String() string {
	return fmt.Sprintf("{value:[%d bytes] hosts:%q header:%q team:%q template:%q user:%q}",
		len(r.Value), r.Hosts, r.Header, r.Team, r.Template, r.User)
}

// GoString keeps the value out of fmt's %#v.
func (r PutSecretRequest) GoString() string { return "api.PutSecretRequest" + r.String() }

// SecretOwner says whose secrets a call is about: at most one of Team,
// Template and User (by name); none is the caller's own. All, for a list,
// is every owner's (admins).
type SecretOwner struct {
	User     string
	Team     string
	Template string
	All      bool
}

// query is o as the query of the secret routes.
func (o SecretOwner) query() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"user": o.User, "team": o.Team, "template": o.Template} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if o.All {
		q.Set("all", "true")
	}
	return q
}

// PutSecret sets (creates or replaces) the named secret and returns it,
// without its value.
func (c *Client) PutSecret(ctx context.Context, name string, req PutSecretRequest) (Secret, error) {
	var s Secret
	err := c.doJSON(ctx, http.MethodPut, "/v1/secrets/"+url.PathEscape(name), nil, req, &s)
	return s, err
}

// ListSecrets returns the secrets of owner, by owner and name, without
// their values.
func (c *Client) ListSecrets(ctx context.Context, owner SecretOwner) ([]Secret, error) {
	var out struct {
		Secrets []Secret `json:"secrets"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/v1/secrets", owner.query(), nil, &out)
	return out.Secrets, err
}

// DeleteSecret removes owner's named secret. An unknown one is an *Error
// with CodeNotFound.
func (c *Client) DeleteSecret(ctx context.Context, name string, owner SecretOwner) error {
	return c.doJSON(ctx, http.MethodDelete, "/v1/secrets/"+url.PathEscape(name), owner.query(), nil, nil)
}
