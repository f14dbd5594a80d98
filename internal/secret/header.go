package secret

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/cove-dev/cove/internal/egress"
)

// Placeholder is where a header template takes the secret's value.
const Placeholder = "{{value}}"

// MaxValueBytes bounds a secret's value.
const MaxValueBytes = 16 << 10

// maxTemplateBytes bounds a header template's text, the value aside.
const maxTemplateBytes = 1 << 10

// maxHosts bounds the hosts of one secret.
const maxHosts = 64

// nameRE is what a secret's name may be.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidName checks a secret's name: a letter or digit, then up to 63
// letters, digits, '.', '_' or '-'.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("name: %q is not a secret name (%s)", name, nameRE)
	}
	return nil
}

// Header is a parsed header template: "Authorization: Bearer {{value}}"
// is Name "Authorization" and Template "Bearer {{value}}".
type Header struct {
	// Name is the header's name, in canonical form (Authorization,
	// Private-Token, X-Api-Key).
	Name string
	// Template is the header's value with Placeholder, once, where the
	// secret goes.
	Template string
}

// String is the header template as it is written: "NAME: TEMPLATE".
func (h Header) String() string { return h.Name + ": " + h.Template }

// Render is the header's value with the secret's value in place of the
// placeholder.
func (h Header) Render(value string) string {
	return strings.Replace(h.Template, Placeholder, value, 1)
}

// refusedHeaders are the headers a secret may not set: those that frame
// the message or the connection, which the proxy and the HTTP library
// own, and those addressed to a proxy, which the upstream never sees.
var refusedHeaders = []string{
	"Connection", "Content-Length", "Expect", "Host", "Keep-Alive", "Te",
	"Trailer", "Transfer-Encoding", "Upgrade",
}

// ParseHeader parses a header template, "NAME: TEMPLATE". NAME must be an
// HTTP token and no hop-by-hop, framing or proxy header (Host,
// Connection, Content-Length, Transfer-Encoding, Proxy-*, …); TEMPLATE
// must hold Placeholder exactly once, in printable ASCII (spaces, no
// control characters such as CR or LF), and is trimmed of the spaces
// around it. Its errors never quote s: a value pasted there by mistake
// stays out of them.
func ParseHeader(s string) (Header, error) {
	name, tmpl, ok := strings.Cut(s, ":")
	if !ok {
		return Header{}, fmt.Errorf(`header: not "NAME: VALUE" (as in "Authorization: Bearer %s")`, Placeholder)
	}
	if !isToken(name) {
		return Header{}, fmt.Errorf("header: the name before ':' is not a header name (letters, digits and !#$%%&'*+-.^_`|~, no spaces)")
	}
	canon := http.CanonicalHeaderKey(name)
	if slices.Contains(refusedHeaders, canon) || strings.HasPrefix(canon, "Proxy-") {
		return Header{}, fmt.Errorf("header: %s is the proxy's or the connection's own; a secret may not set it", canon)
	}
	tmpl = strings.Trim(tmpl, " \t")
	if len(tmpl) > maxTemplateBytes {
		return Header{}, fmt.Errorf("header: the value template is %d bytes; the limit is %d", len(tmpl), maxTemplateBytes)
	}
	for i := 0; i < len(tmpl); i++ {
		if c := tmpl[i]; c < ' ' || c > '~' {
			return Header{}, fmt.Errorf("header: the value template has byte %#02x at %d: only printable ASCII and spaces", c, i)
		}
	}
	if n := strings.Count(tmpl, Placeholder); n != 1 {
		return Header{}, fmt.Errorf("header: the value template holds %s %d times, want once (as in \"Bearer %s\"); the value itself comes from stdin or the request's value", Placeholder, n, Placeholder)
	}
	return Header{Name: canon, Template: tmpl}, nil
}

// isToken reports whether s is an RFC 9110 token, the syntax of a header
// name.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// ValidValue checks a secret's value: not empty, at most MaxValueBytes,
// and no control characters (CR, LF, NUL, …; a tab is allowed), which
// would end or corrupt the header it goes in. Its error never quotes the
// value.
func ValidValue(v string) error {
	switch {
	case v == "":
		return fmt.Errorf("value: empty")
	case len(v) > MaxValueBytes:
		return fmt.Errorf("value: %d bytes; the limit is %d", len(v), MaxValueBytes)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return fmt.Errorf("value: a control character (byte %#02x) at offset %d: a header value may hold none (a trailing newline?)", c, i)
		}
	}
	return nil
}

// ParseHosts checks and normalises a secret's hosts: at least one, each an
// exact host name ("github.com") or "*.suffix" ("*.githubusercontent.com":
// any name below the suffix, not the suffix itself) of at least two
// labels. Names are lower-cased; duplicates are dropped, the order kept.
// Schemes, ports, paths, IP literals in brackets and trailing dots are
// refused.
func ParseHosts(hosts []string) ([]string, error) {
	if len(hosts) == 0 {
		return nil, fmt.Errorf("hosts: none; name at least one host the secret may go to")
	}
	if len(hosts) > maxHosts {
		return nil, fmt.Errorf("hosts: %d; the limit is %d", len(hosts), maxHosts)
	}
	var out []string
	for _, h := range hosts {
		norm := strings.ToLower(h)
		if err := validHost(norm); err != nil {
			return nil, fmt.Errorf("hosts: %q: %w", h, err)
		}
		if !slices.Contains(out, norm) {
			out = append(out, norm)
		}
	}
	return out, nil
}

// validHost checks one lower-cased host pattern.
func validHost(h string) error {
	name, wild := strings.CutPrefix(h, "*.")
	switch {
	case strings.Contains(h, "://"):
		return fmt.Errorf("a URL, not a host name: give the name alone, as github.com")
	case strings.ContainsAny(h, ":/[]@"):
		return fmt.Errorf("not a host name: no port, path or user; give the name alone, as github.com")
	case strings.Contains(name, "*"):
		return fmt.Errorf(`a wildcard may only be a whole first label, "*.example.com"`)
	case name == "":
		return fmt.Errorf("empty")
	case len(name) > 253:
		return fmt.Errorf("longer than 253 bytes")
	}
	labels := strings.Split(name, ".")
	if wild && len(labels) < 2 {
		return fmt.Errorf(`"*.%s" would match a whole top-level domain; name a domain, "*.example.com"`, name)
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q: each label is 1 to 63 letters, digits or '-', not at either end (no trailing dot)", l)
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Errorf("label %q: byte %q: only ASCII letters, digits and '-' (an international name in its xn-- form)", l, c)
			}
		}
	}
	return nil
}

// MatchHost reports whether host (a request's, without port) is one that
// pattern names, as the egress proxy matches a credential's hosts
// (egress.MatchHost): the same name, or for "*.suffix" any name below
// suffix. Names compare without case; a trailing dot on host is ignored.
func MatchHost(pattern, host string) bool { return egress.MatchHost(pattern, host) }
