package egress

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseRuleRoundTrips(t *testing.T) {
	cases := []struct {
		in   string
		want Rule
		str  string // String's form; empty: in
	}{
		{in: "github.com", want: Rule{Host: "github.com"}},
		{in: "*.pypi.org", want: Rule{Host: "*.pypi.org"}},
		{in: "api.github.com:443", want: Rule{Host: "api.github.com", Ports: []int{443}}},
		{in: "api.github.com:443,8443", want: Rule{Host: "api.github.com", Ports: []int{443, 8443}}},
		{in: "GET,HEAD files.pythonhosted.org/packages/", want: Rule{Host: "files.pythonhosted.org", Methods: []string{"GET", "HEAD"}, Paths: []string{"/packages/"}}},
		{in: "GET example.com:8080/a/,/b", want: Rule{Host: "example.com", Ports: []int{8080}, Methods: []string{"GET"}, Paths: []string{"/a/", "/b"}}},
		{in: "127.0.0.1:8080", want: Rule{Host: "127.0.0.1", Ports: []int{8080}}},
		{in: "[::1]:443/x", want: Rule{Host: "::1", Ports: []int{443}, Paths: []string{"/x"}}},
		{in: "[::1]", want: Rule{Host: "::1"}},
		{in: "localhost", want: Rule{Host: "localhost"}},
		// Normalized on the way in: case, trailing dot, method case.
		{in: "get GitHub.COM.", want: Rule{Host: "github.com", Methods: []string{"GET"}}, str: "GET github.com"},
		{in: "[0:0::1]", want: Rule{Host: "::1"}, str: "[::1]"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseRule(tc.in)
			if err != nil {
				t.Fatalf("ParseRule(%q): %v", tc.in, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParseRule(%q) = %#v, want %#v", tc.in, got, tc.want)
			}
			str := tc.str
			if str == "" {
				str = tc.in
			}
			if got.String() != str {
				t.Fatalf("String() = %q, want %q", got.String(), str)
			}
			again, err := ParseRule(got.String())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("ParseRule(String()) = %#v, %v; want %#v", again, err, got)
			}
		})
	}
}

func TestParseRuleRefusesBadInput(t *testing.T) {
	cases := map[string]string{
		"":                          "want [METHODS ]HOST",
		"GET github.com extra":      "want [METHODS ]HOST",
		"github.com:":               "empty port list",
		"github.com:http":           "not a number",
		"github.com:0":              "out of range",
		"github.com:70000":          "out of range",
		"g!thub.com":                "not allowed in a host name",
		"*":                         "host",
		"*.":                        "host",
		"a..b":                      "empty or over-long label",
		"::1":                       "in brackets",
		"[::1":                      "unclosed",
		"[github.com]":              "not an IPv6 address",
		"[::1]x":                    "want [IPv6]:PORTS",
		"G3T github.com":            "upper-case letters",
		"GET, github.com":           "empty method",
		"github.com/a b":            "method",
		"github.com/a,b":            "must start with /",
		"github.com/a?x":            "no commas",
		"2130706433":                "all-digit",
		"127.1":                     "all-digit",
		"bücher.example":            "not allowed in a host name",
		strings.Repeat("a", 64):     "over-long label",
		"*.*.example.com":           "not allowed in a host name",
		"example.com:443,,80":       "not a number",
		"POST,GET *.example.com:-1": "out of range",
	}
	for in, want := range cases {
		_, err := ParseRule(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseRule(%q) = %v, want an error saying %q", in, err, want)
		}
	}
}

func TestValidateInsistsOnCanonicalForm(t *testing.T) {
	for _, r := range []Rule{{Host: "GitHub.com"}, {Host: "github.com."}, {Host: "::ffff:127.0.0.1"}, {Host: "github.com", Methods: []string{"get"}}} {
		if err := r.Validate(); err == nil {
			t.Errorf("Validate(%#v) = nil, want an error", r)
		}
	}
	if err := (Rule{Host: "github.com", Methods: []string{"GET"}}).Validate(); err != nil {
		t.Errorf("a canonical rule: %v", err)
	}
}

func TestRulesCheck(t *testing.T) {
	rules := Rules{
		{Host: "github.com"},
		{Host: "*.pypi.org"},
		{Host: "api.example.com", Ports: []int{8443}},
		{Host: "files.example.com", Methods: []string{"GET", "HEAD"}, Paths: []string{"/packages/"}},
		{Host: "10.1.2.3"},
		{Host: "::1", Ports: []int{8080}},
	}
	cases := []struct {
		name   string
		t      Target
		allow  bool
		exact  bool
		reason string
	}{
		{"exact host, default port", Target{Method: "GET", Host: "github.com", Port: 443, Path: "/"}, true, true, `rule "github.com"`},
		{"exact host, port 80", Target{Method: "GET", Host: "github.com", Port: 80, Path: "/"}, true, true, ""},
		{"exact host, other port", Target{Host: "github.com", Port: 22, Connect: true}, false, false, "port 22 is not allowed for github.com"},
		{"subdomain of an exact rule", Target{Host: "api.github.com", Port: 443, Connect: true}, false, false, "host api.github.com is not allowed"},
		{"wildcard below suffix", Target{Host: "files.pypi.org", Port: 443, Connect: true}, true, false, `rule "*.pypi.org"`},
		{"wildcard two below", Target{Host: "a.b.pypi.org", Port: 443, Connect: true}, true, false, ""},
		{"wildcard not the suffix itself", Target{Host: "pypi.org", Port: 443, Connect: true}, false, false, "host pypi.org is not allowed"},
		{"wildcard not a look-alike", Target{Host: "evilpypi.org", Port: 443, Connect: true}, false, false, "not allowed"},
		{"named port", Target{Host: "api.example.com", Port: 8443, Connect: true}, true, true, ""},
		{"named port replaces defaults", Target{Host: "api.example.com", Port: 443, Connect: true}, false, false, "port 443"},
		{"method and path allowed", Target{Method: "GET", Host: "files.example.com", Port: 443, Path: "/packages/x.whl"}, true, true, ""},
		{"method denied", Target{Method: "POST", Host: "files.example.com", Port: 443, Path: "/packages/x.whl"}, false, false, "method POST is not allowed"},
		{"path denied", Target{Method: "GET", Host: "files.example.com", Port: 443, Path: "/admin"}, false, false, "path /admin is not allowed"},
		{"dot-dot cleaned before the prefix check", Target{Method: "GET", Host: "files.example.com", Port: 443, Path: "/packages/../admin"}, false, false, "path /admin"},
		{"CONNECT ignores method and path", Target{Method: "CONNECT", Host: "files.example.com", Port: 443, Connect: true}, true, true, ""},
		{"IP named by a rule", Target{Host: "10.1.2.3", Port: 443, Connect: true}, true, true, ""},
		{"direct IP", Target{Host: "10.1.2.4", Port: 443, Connect: true}, false, false, "direct IP 10.1.2.4"},
		{"IPv6 named by a rule", Target{Host: "::1", Port: 8080, Connect: true}, true, true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := rules.check(tc.t)
			if v.allowed != tc.allow || v.exact != tc.exact || !strings.Contains(v.reason, tc.reason) {
				t.Fatalf("check(%+v) = %+v, want allowed=%v exact=%v reason containing %q", tc.t, v, tc.allow, tc.exact, tc.reason)
			}
		})
	}
	if v := (Rules{}).check(Target{Host: "github.com", Port: 443, Connect: true}); v.allowed {
		t.Fatalf("empty rules allowed %+v", v)
	}
}

func TestRulesPreferAnExactMatch(t *testing.T) {
	// A wildcard listed first must not hide an exact rule for the same
	// host: the exact rule is what lets it reach a private address.
	rules := Rules{{Host: "*.corp.example"}, {Host: "git.corp.example"}}
	if v := rules.check(Target{Host: "git.corp.example", Port: 443, Connect: true}); !v.allowed || !v.exact {
		t.Fatalf("check = %+v, want an exact allow", v)
	}
}

func TestNormalizeHost(t *testing.T) {
	good := map[string]string{
		"GitHub.COM":         "github.com",
		"github.com.":        "github.com",
		"[::1]":              "::1",
		"::ffff:127.0.0.1":   "127.0.0.1",
		"127.0.0.1":          "127.0.0.1",
		"under_score.test":   "under_score.test",
		"xn--bcher-kva.test": "xn--bcher-kva.test",
	}
	for in, want := range good {
		if got, err := NormalizeHost(in); err != nil || got != want {
			t.Errorf("NormalizeHost(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", ".", "a..b", "github.com..", "*.github.com", "a b", "a%b", "2130706433", "0x7f.1", "fe80::1%eth0", "bücher.test"} {
		if got, err := NormalizeHost(in); err == nil {
			t.Errorf("NormalizeHost(%q) = %q, want an error", in, got)
		}
	}
}

func TestMatchHost(t *testing.T) {
	cases := []struct {
		pattern, host string
		ok, exact     bool
	}{
		{"github.com", "github.com", true, true},
		{"github.com", "api.github.com", false, false},
		{"*.github.com", "api.github.com", true, false},
		{"*.github.com", "github.com", false, false},
		{"*.github.com", "xgithub.com", false, false},
		{"*.0.1", "127.0.0.1", false, false},
		{"127.0.0.1", "127.0.0.1", true, true},
	}
	for _, tc := range cases {
		ok, exact := matchHost(tc.pattern, tc.host)
		if ok != tc.ok || exact != tc.exact {
			t.Errorf("matchHost(%q, %q) = %v, %v; want %v, %v", tc.pattern, tc.host, ok, exact, tc.ok, tc.exact)
		}
	}
}

func TestParseRulesAndValidate(t *testing.T) {
	rs, err := ParseRules([]string{"github.com", "*.pypi.org"})
	if err != nil || len(rs) != 2 || rs.Validate() != nil {
		t.Fatalf("ParseRules = %v, %v", rs, err)
	}
	if _, err := ParseRules([]string{"github.com", "bad!host"}); err == nil {
		t.Fatal("ParseRules accepted a bad rule")
	}
	bad := append(rs, Rule{Host: "Evil.example"})
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "rule 2") {
		t.Fatalf("Validate = %v, want an error naming rule 2", err)
	}
}
