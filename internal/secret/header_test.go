package secret

import (
	"slices"
	"strings"
	"testing"
)

func TestParseHeader(t *testing.T) {
	for _, tc := range []struct {
		in, name, tmpl string
	}{
		{"Authorization: Bearer {{value}}", "Authorization", "Bearer {{value}}"},
		{"authorization:Bearer {{value}}", "Authorization", "Bearer {{value}}"},
		{"PRIVATE-TOKEN: {{value}}", "Private-Token", "{{value}}"},
		{"X-Api-Key:   {{value}}  ", "X-Api-Key", "{{value}}"},
		{"Cookie: session={{value}}; theme=dark", "Cookie", "session={{value}}; theme=dark"},
		{"X-Weird!#$%&'*+-.^_`|~: a{{value}}b", "X-Weird!#$%&'*+-.^_`|~", "a{{value}}b"},
	} {
		h, err := ParseHeader(tc.in)
		if err != nil || h.Name != tc.name || h.Template != tc.tmpl {
			t.Errorf("ParseHeader(%q) = %+v, %v; want %q, %q", tc.in, h, err, tc.name, tc.tmpl)
			continue
		}
		if got := h.Render("V"); got != strings.Replace(tc.tmpl, Placeholder, "V", 1) {
			t.Errorf("Render: %q", got)
		}
	}
}

func TestParseHeaderRefuses(t *testing.T) {
	for _, tc := range []struct{ in, msg string }{
		{"Authorization Bearer {{value}}", `not "NAME: VALUE"`},
		{": Bearer {{value}}", "not a header name"},
		{"Auth orization: {{value}}", "not a header name"},
		{"Authörization: {{value}}", "not a header name"},
		{"Host: {{value}}", "Host is the proxy's or the connection's own"},
		{"host: {{value}}", "Host is"},
		{"Connection: {{value}}", "Connection is"},
		{"Keep-Alive: {{value}}", "Keep-Alive is"},
		{"Proxy-Authorization: Basic {{value}}", "Proxy-Authorization is"},
		{"proxy-connection: {{value}}", "Proxy-Connection is"},
		{"Content-Length: {{value}}", "Content-Length is"},
		{"Transfer-Encoding: {{value}}", "Transfer-Encoding is"},
		{"TE: {{value}}", "Te is"},
		{"Upgrade: {{value}}", "Upgrade is"},
		{"Trailer: {{value}}", "Trailer is"},
		{"Authorization: Bearer", "holds {{value}} 0 times"},
		{"Authorization: Bearer ghp_pastedTheToken", "holds {{value}} 0 times"},
		{"Authorization: {{value}} {{value}}", "holds {{value}} 2 times"},
		{"Authorization: Bearer {{value}}\r\nX-Evil: 1", "byte 0x0d"},
		{"Authorization: Bearer {{value}}\nX", "byte 0x0a"},
		{"Authorization: Bearer {{value}}\x00", "byte 0x00"},
		{"Authorization: Bearer\t{{value}}", "byte 0x09"},
		{"Authorization: Bearér {{value}}", "byte 0xc3"},
		{"Authorization: " + strings.Repeat("x", 1100) + "{{value}}", "the limit is 1024"},
	} {
		_, err := ParseHeader(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("ParseHeader(%q) = %v, want an error saying %q", tc.in, err, tc.msg)
		}
		// The header text is never quoted: a token pasted into it by
		// mistake stays out of errors.
		if err != nil && strings.Contains(err.Error(), "ghp_") {
			t.Errorf("ParseHeader(%q): error quotes the input: %v", tc.in, err)
		}
	}
}

func TestValidValue(t *testing.T) {
	for _, v := range []string{"x", "ghp_abc123", "with space and\ttab", "ünï©ødé", strings.Repeat("a", MaxValueBytes)} {
		if err := ValidValue(v); err != nil {
			t.Errorf("ValidValue(%q…) = %v", v[:min(len(v), 12)], err)
		}
	}
	for _, tc := range []struct{ v, msg string }{
		{"", "empty"},
		{strings.Repeat("a", MaxValueBytes+1), "the limit is 16384"},
		{"TOPSECRET\n", "byte 0x0a"},
		{"TOPSECRET\r", "byte 0x0d"},
		{"TOP\x00SECRET", "byte 0x00"},
		{"TOP\x7fSECRET", "byte 0x7f"},
		{"TOP\x1bSECRET", "byte 0x1b"},
	} {
		err := ValidValue(tc.v)
		if err == nil || !strings.Contains(err.Error(), tc.msg) || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("ValidValue(%q) = %v, want an error saying %q, without the value", tc.v, err, tc.msg)
		}
	}
}

func TestParseHosts(t *testing.T) {
	got, err := ParseHosts([]string{"GitHub.com", "api.github.com", "*.githubusercontent.com", "github.com", "10.0.0.7", "gitlab"})
	want := []string{"github.com", "api.github.com", "*.githubusercontent.com", "10.0.0.7", "gitlab"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseHosts = %q, %v; want %q", got, err, want)
	}
	for _, tc := range []struct {
		hosts []string
		msg   string
	}{
		{nil, "none"},
		{[]string{}, "none"},
		{[]string{"https://github.com"}, "a URL"},
		{[]string{"github.com:443"}, "no port"},
		{[]string{"github.com/org"}, "no port, path"},
		{[]string{"user@github.com"}, "no port, path or user"},
		{[]string{"[::1]"}, "not a host name"},
		{[]string{"*"}, "a wildcard may only be a whole first label"},
		{[]string{"*.com"}, "a whole top-level domain"},
		{[]string{"*.*.example.com"}, "a wildcard may only"},
		{[]string{"api.*.example.com"}, "a wildcard may only"},
		{[]string{"git*.com"}, "a wildcard may only"},
		{[]string{"github.com."}, "no trailing dot"},
		{[]string{".github.com"}, `label ""`},
		{[]string{"-x.github.com"}, `label "-x"`},
		{[]string{"x-.github.com"}, `label "x-"`},
		{[]string{"git_hub.com"}, `byte '_'`},
		{[]string{"bücher.de"}, "xn-- form"},
		{[]string{""}, "empty"},
		{[]string{strings.Repeat("a", 64) + ".com"}, "1 to 63"},
		{[]string{"ok.com", "bad host"}, `"bad host"`},
		{slices.Repeat([]string{"a.com"}, 65), "the limit is 64"},
	} {
		_, err := ParseHosts(tc.hosts)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("ParseHosts(%q) = %v, want an error saying %q", tc.hosts, err, tc.msg)
		}
	}
}

func TestMatchHost(t *testing.T) {
	for _, tc := range []struct {
		pattern, host string
		want          bool
	}{
		{"github.com", "github.com", true},
		{"github.com", "GitHub.COM", true},
		{"github.com", "github.com.", true},
		{"github.com", "api.github.com", false},
		{"github.com", "evilgithub.com", false},
		{"github.com", "github.com.evil.net", false},
		{"*.github.com", "api.github.com", true},
		{"*.github.com", "a.b.github.com", true},
		{"*.github.com", "github.com", false},
		{"*.github.com", "evilgithub.com", false},
		{"*.github.com", ".github.com", false},
	} {
		if got := MatchHost(tc.pattern, tc.host); got != tc.want {
			t.Errorf("MatchHost(%q, %q) = %v, want %v", tc.pattern, tc.host, got, tc.want)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, n := range []string{"github", "GITHUB_TOKEN", "npm.registry", "a", "x-1"} {
		if err := ValidName(n); err != nil {
			t.Errorf("ValidName(%q) = %v", n, err)
		}
	}
	for _, n := range []string{"", "-x", "_x", "a b", "a/b", "ü", strings.Repeat("a", 65)} {
		if err := ValidName(n); err == nil {
			t.Errorf("ValidName(%q) = nil", n)
		}
	}
}
