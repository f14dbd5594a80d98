package main

import (
	"net"
	"strings"
	"testing"
)

// The URL a server advertises to the others: the flag's, checked, else
// http:// and --listen when that names a host (its port as bound), else
// none.
func TestAdvertiseURL(t *testing.T) {
	bound := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 41234}
	cases := []struct{ flag, listen, want, err string }{
		{"", "127.0.0.1:7070", "http://127.0.0.1:41234", ""},
		{"", "10.1.2.3:0", "http://10.1.2.3:41234", ""},
		{"", "cove-a.internal:7070", "http://cove-a.internal:41234", ""},
		{"", "[::1]:7070", "http://[::1]:41234", ""},
		{"", "0.0.0.0:7070", "", ""},
		{"", "[::]:7070", "", ""},
		{"", ":7070", "", ""},
		{"https://cove-a.example:8443", "0.0.0.0:7070", "https://cove-a.example:8443", ""},
		{"cove-a:7070", "0.0.0.0:7070", "", "--advertise-url"},
	}
	for _, c := range cases {
		got, err := advertiseURL(c.flag, c.listen, bound)
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("advertiseURL(%q, %q) = %q, %v; want an error naming %s", c.flag, c.listen, got, err, c.err)
			}
		case err != nil || got != c.want:
			t.Errorf("advertiseURL(%q, %q) = %q, %v; want %q", c.flag, c.listen, got, err, c.want)
		}
	}
}
