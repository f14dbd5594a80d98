package egress

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Rule allows egress to one host (or a family of hosts).
//
// Host is an exact name ("github.com"), a wildcard "*.suffix" or an IP
// literal, in lower-case ASCII without a trailing dot. A wildcard matches
// every name strictly below suffix ("*.pypi.org" matches "files.pypi.org"
// and "a.b.pypi.org") but not suffix itself: an engineer who wants both
// writes two rules, so that allowing a vendor's subdomains never silently
// allows its apex (which is often a different service). An IP literal only
// matches itself, and no wildcard matches an IP literal.
//
// A wildcard also never reaches a private address: a name matched only by a
// wildcard must resolve to a public address (see Proxy), so that a guest
// cannot point an allowed wildcard at the host's own loopback services. An
// exact rule ("localhost", "127.0.0.1", "git.corp.example") reaches whatever
// its name resolves to.
type Rule struct {
	Host string `json:"host"`
	// Ports the rule allows; empty: 80 and 443.
	Ports []int `json:"ports,omitempty"`
	// Methods the rule allows, upper-case; empty: any.
	Methods []string `json:"methods,omitempty"`
	// Paths are path prefixes, compared as plain string prefixes of the
	// cleaned request path ("/packages" also matches "/packagesX"; end a
	// prefix with "/" to confine it to a directory); empty: any.
	Paths []string `json:"paths,omitempty"`
}

// Rules is a session's allowlist. It denies by default: an empty list allows
// nothing.
type Rules []Rule

// ParseRules parses rules in ParseRule's form (one per --allow flag).
func ParseRules(specs []string) (Rules, error) {
	rs := make(Rules, 0, len(specs))
	for _, s := range specs {
		r, err := ParseRule(s)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

// Validate reports the first rule that is not well formed, by its index.
func (rs Rules) Validate() error {
	for i, r := range rs {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("egress: rule %d (%q): %w", i, r.String(), err)
		}
	}
	return nil
}

// defaultPorts are the ports of a rule that names none.
var defaultPorts = []int{80, 443}

// ParseRule parses the command-line form of a rule:
//
//	[METHOD[,METHOD…] ]HOST[:PORT[,PORT…]][/PATH-PREFIX[,/PATH-PREFIX…]]
//
// for example "github.com", "*.pypi.org", "api.github.com:443",
// "GET,HEAD files.pythonhosted.org/packages/" or "[::1]:8080". An IPv6
// literal is written in brackets. The host and methods are normalized to
// their canonical case; String gives the form back.
func ParseRule(s string) (Rule, error) {
	fields := strings.Fields(s)
	var r Rule
	var target string
	switch len(fields) {
	case 1:
		target = fields[0]
	case 2:
		for m := range strings.SplitSeq(fields[0], ",") {
			r.Methods = append(r.Methods, strings.ToUpper(m))
		}
		target = fields[1]
	default:
		return Rule{}, fmt.Errorf("egress: parse rule %q: want [METHODS ]HOST[:PORTS][/PATH], e.g. \"GET,HEAD files.pythonhosted.org/packages/\"", s)
	}
	hostPorts, paths, err := splitPaths(target)
	if err != nil {
		return Rule{}, fmt.Errorf("egress: parse rule %q: %w", s, err)
	}
	if paths != "" {
		r.Paths = strings.Split(paths, ",")
	}
	host, ports, err := splitHostPorts(hostPorts)
	if err != nil {
		return Rule{}, fmt.Errorf("egress: parse rule %q: %w", s, err)
	}
	r.Host = canonicalRuleHost(host)
	for p := range strings.SplitSeq(ports, ",") {
		if ports == "" {
			break
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return Rule{}, fmt.Errorf("egress: parse rule %q: port %q is not a number", s, p)
		}
		r.Ports = append(r.Ports, n)
	}
	if err := r.Validate(); err != nil {
		return Rule{}, fmt.Errorf("egress: parse rule %q: %w", s, err)
	}
	return r, nil
}

// splitPaths splits "host:ports/a,/b" into "host:ports" and "/a,/b". The
// host may be a bracketed IPv6 literal.
func splitPaths(s string) (hostPorts, paths string, err error) {
	from := 0
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", errors.New("unclosed [ in IPv6 host")
		}
		from = end
	}
	i := strings.IndexByte(s[from:], '/')
	if i < 0 {
		return s, "", nil
	}
	return s[:from+i], s[from+i:], nil
}

// splitHostPorts splits "host:80,443" or "[::1]:80" into host and ports.
func splitHostPorts(s string) (host, ports string, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		host, rest := s[1:end], s[end+1:]
		if ip, err := netip.ParseAddr(host); err != nil || !ip.Is6() {
			return "", "", fmt.Errorf("[%s] is not an IPv6 address", host)
		}
		if rest == "" {
			return host, "", nil
		}
		if !strings.HasPrefix(rest, ":") || rest == ":" {
			return "", "", fmt.Errorf("want [IPv6]:PORTS, got %q", s)
		}
		return host, rest[1:], nil
	}
	if strings.Count(s, ":") > 1 {
		return "", "", fmt.Errorf("host %q: write an IPv6 address in brackets, e.g. [::1]:443", s)
	}
	host, ports, found := strings.Cut(s, ":")
	if found && ports == "" {
		return "", "", fmt.Errorf("host %q: empty port list after ':'", s)
	}
	return host, ports, nil
}

// canonicalRuleHost lower-cases a rule's host, drops one trailing dot and
// writes an IP literal in its canonical form, so that ParseRule accepts what
// an engineer types; Validate then insists on that form.
// MatchHost reports whether host (a request's, without port) is one that
// pattern names: the same name, or for "*.suffix" any name below suffix
// (never suffix itself, never an IP literal). Names compare without case;
// a trailing dot is ignored.
func MatchHost(pattern, host string) bool {
	ok, _ := matchHost(canonicalRuleHost(pattern), canonicalRuleHost(host))
	return ok
}

func canonicalRuleHost(h string) string {
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if ip, err := netip.ParseAddr(h); err == nil {
		return ip.Unmap().String()
	}
	return h
}

// String gives the rule in the form ParseRule reads.
func (r Rule) String() string {
	var b strings.Builder
	if len(r.Methods) > 0 {
		b.WriteString(strings.Join(r.Methods, ","))
		b.WriteByte(' ')
	}
	if ip, err := netip.ParseAddr(r.Host); err == nil && ip.Is6() {
		b.WriteString("[" + r.Host + "]")
	} else {
		b.WriteString(r.Host)
	}
	for i, p := range r.Ports {
		if i == 0 {
			b.WriteByte(':')
		} else {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(p))
	}
	b.WriteString(strings.Join(r.Paths, ","))
	return b.String()
}

// Validate reports whether the rule is well formed and in canonical form.
func (r Rule) Validate() error {
	if err := validateHostPattern(r.Host); err != nil {
		return err
	}
	for _, p := range r.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("port %d is out of range 1-65535", p)
		}
	}
	for _, m := range r.Methods {
		if m == "" {
			return errors.New("empty method")
		}
		for _, c := range m {
			if c < 'A' || c > 'Z' {
				return fmt.Errorf("method %q: want upper-case letters, e.g. GET", m)
			}
		}
	}
	for _, p := range r.Paths {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("path prefix %q must start with /", p)
		}
		if strings.ContainsAny(p, ", \t\r\n?#") {
			return fmt.Errorf("path prefix %q: no commas, spaces, '?' or '#'", p)
		}
	}
	return nil
}

// validateHostPattern checks a rule's host: an exact name, "*.suffix" or an
// IP literal, canonical.
func validateHostPattern(h string) error {
	if h == "" {
		return errors.New("empty host")
	}
	if h != canonicalRuleHost(h) {
		return fmt.Errorf("host %q: write it as %q (lower-case, no trailing dot)", h, canonicalRuleHost(h))
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return nil
	}
	name := h
	if suffix, ok := strings.CutPrefix(h, "*."); ok {
		name = suffix
	}
	if err := validateName(name); err != nil {
		return fmt.Errorf("host %q: %w", h, err)
	}
	return nil
}

// validateName checks a lower-case DNS name: labels of letters, digits, '-'
// and '_', none empty or longer than 63, and a last label that is not all
// digits (which some resolvers would read as an IPv4 address: "127.1",
// "2130706433").
func validateName(name string) error {
	if len(name) > 253 {
		return errors.New("name longer than 253 characters")
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return errors.New("empty or over-long label")
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("character %q is not allowed in a host name", c)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return errors.New("all-digit last label (an IP address must be written in dotted form)")
	}
	return nil
}

// NormalizeHost returns the canonical form of a host a guest asked for:
// lower-case, one trailing dot dropped, brackets and zone-free IP literals in
// canonical form. Empty and odd names (spaces, '%', wildcards, all-digit
// last labels) are refused.
func NormalizeHost(h string) (string, error) {
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if h == "" {
		return "", errors.New("empty host")
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		if ip.Zone() != "" {
			return "", fmt.Errorf("host %q: an IP address with a zone", h)
		}
		return ip.Unmap().String(), nil
	}
	c := strings.TrimSuffix(strings.ToLower(h), ".")
	if err := validateName(c); err != nil {
		return "", fmt.Errorf("host %q: %w", h, err)
	}
	return c, nil
}

// matchHost reports whether pattern (a rule's or a credential's host)
// matches host (normalized), and whether it matched exactly.
func matchHost(pattern, host string) (ok, exact bool) {
	if pattern == host {
		return true, true
	}
	suffix, wild := strings.CutPrefix(pattern, "*.")
	if !wild || net.ParseIP(host) != nil {
		return false, false
	}
	// A name below suffix: at least one character before its dot.
	return strings.HasSuffix(host, "."+suffix) && len(host) > len(suffix)+1, false
}

func (r Rule) ports() []int {
	if len(r.Ports) == 0 {
		return defaultPorts
	}
	return r.Ports
}

// Target is what a guest asked to reach: a CONNECT (host and port only) or
// one request.
type Target struct {
	Method string
	Host   string
	Port   int
	Path   string
	// Connect: the target is a CONNECT; each request inside the tunnel is
	// decided again as a Target of its own.
	Connect bool
}

// verdict is the rules' answer for a target.
type verdict struct {
	allowed bool
	// exact: an allowing rule names the host exactly (so it may reach a
	// private address).
	exact  bool
	reason string
}

// check decides a target against the rules. For a CONNECT (method and path
// unknown yet) only host and port count; each request inside the tunnel is
// checked again with its method and path.
func (rs Rules) check(t Target) verdict {
	var v verdict
	hostSeen, portSeen := false, false
	var why string
	for _, r := range rs {
		ok, exact := matchHost(r.Host, t.Host)
		if !ok {
			continue
		}
		hostSeen = true
		if !slices.Contains(r.ports(), t.Port) {
			continue
		}
		portSeen = true
		if !t.Connect {
			if len(r.Methods) > 0 && !slices.Contains(r.Methods, t.Method) {
				why = fmt.Sprintf("method %s is not allowed for %s (rule %q)", t.Method, t.Host, r.String())
				continue
			}
			if len(r.Paths) > 0 && !hasAnyPrefix(cleanPath(t.Path), r.Paths) {
				why = fmt.Sprintf("path %s is not allowed for %s (rule %q)", cleanPath(t.Path), t.Host, r.String())
				continue
			}
		}
		if v.allowed && v.exact {
			continue
		}
		v = verdict{allowed: true, exact: exact, reason: fmt.Sprintf("allowed by rule %q", r.String())}
	}
	switch {
	case v.allowed:
		return v
	case why != "":
		return verdict{reason: why}
	case portSeen:
		return verdict{reason: fmt.Sprintf("no rule allows %s:%d", t.Host, t.Port)}
	case hostSeen:
		return verdict{reason: fmt.Sprintf("port %d is not allowed for %s", t.Port, t.Host)}
	case net.ParseIP(t.Host) != nil:
		return verdict{reason: fmt.Sprintf("direct IP %s is not allowed (no rule names it)", t.Host)}
	}
	return verdict{reason: fmt.Sprintf("host %s is not allowed", t.Host)}
}

// cleanPath cleans a request path for prefix checks, so that "/a/../b" is
// checked as "/b", keeping a trailing slash ("/packages/" stays so).
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	c := path.Clean("/" + p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// Summary lists the rules briefly, for a denial's message (at most about 200
// bytes: a long allowlist is cut with "…").
func (rs Rules) Summary() string {
	if len(rs) == 0 {
		return "nothing"
	}
	var b strings.Builder
	for i, r := range rs {
		s := r.String()
		if b.Len()+len(s) > 200 {
			b.WriteString(", …")
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(s)
	}
	return b.String()
}
