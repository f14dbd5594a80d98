package main

import "testing"

// cove e2b env prints one export line: --url, else the server's host at
// the E2B port; the key given, quoted where the shell needs it.
func TestE2BEnvLine(t *testing.T) {
	for _, c := range []struct {
		addr string
		args []string
		want string
	}{
		{"http://10.1.2.3:7070", []string{"--key", "cove_abc"},
			"export E2B_API_URL=http://10.1.2.3:49983 E2B_SANDBOX_URL=http://10.1.2.3:49983 E2B_API_KEY=cove_abc\n"},
		{"http://10.1.2.3:7070", []string{"--key", "it's", "--url", "cove.example:8443/"},
			`export E2B_API_URL=http://cove.example:8443 E2B_SANDBOX_URL=http://cove.example:8443 E2B_API_KEY='it'\''s'` + "\n"},
	} {
		code, out, errOut := runCLI(t, c.addr, "", append([]string{"e2b", "env"}, c.args...)...)
		if code != 0 || out != c.want {
			t.Errorf("cove e2b env %q: exit %d, %q (stderr %q); want %q", c.args, code, out, errOut, c.want)
		}
	}
	if code, _, _ := runCLI(t, "", "", "e2b", "env", "--key", "k", "extra"); code == 0 {
		t.Error("cove e2b env with an argument: exit 0, want a usage error")
	}
}
