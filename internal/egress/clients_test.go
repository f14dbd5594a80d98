package egress

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/testenv"
)

// TestRealClientsThroughTheProxy runs the programs a guest runs (curl, GNU
// wget, Python's urllib with the strict X.509 checks Python 3.13 turns on)
// with nothing but the proxy environment and the CA file cove installs:
// they trust the intercepting certificates and get the injected credential.
func TestRealClientsThroughTheProxy(t *testing.T) {
	e := newEnv(t, nil)
	var api, plain headerSeen
	e.tlsUpstream("api.example.test", api.handler("api", "Authorization"), true)
	e.httpUpstream("plain.example.test", plain.handler("plain", "Authorization"))
	cred := Credential{Name: "tok", Hosts: []string{"api.example.test"}, Header: "Authorization", Value: secret}
	s := &Session{ID: "s1", Owner: "alice", Rules: mustRules(t, "api.example.test", "plain.example.test"), Credentials: staticCreds(cred)}
	proxy := e.serve(s).String()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, e.ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
		"http_proxy=" + proxy, "https_proxy=" + proxy, "HTTP_PROXY=" + proxy, "HTTPS_PROXY=" + proxy,
	}
	const py = `import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.verify_flags |= getattr(ssl, "VERIFY_X509_STRICT", 0)
print(urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx)).open(sys.argv[1]).read().decode(), end="")`
	run := func(t *testing.T, name string, args ...string) (string, error) {
		if _, err := exec.LookPath(name); err != nil {
			testenv.Skipf(t, "%s is not installed", name)
		}
		cmd := exec.Command(name, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	clients := []struct {
		name string
		prog string
		args func(url string) []string
	}{
		{"curl", "curl", func(u string) []string { return []string{"-fsS", "--cacert", caFile, u} }},
		{"wget", "wget", func(u string) []string { return []string{"-q", "-O", "-", "--ca-certificate=" + caFile, u} }},
		{"python", "python3", func(u string) []string { return []string{"-c", py, u, caFile} }},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			out, err := run(t, c.prog, c.args("https://api.example.test/"+c.name)...)
			if err != nil || out != "hello from api GET /"+c.name {
				t.Fatalf("https: %v\n%s", err, out)
			}
			if api.last() != secret {
				t.Fatalf("upstream saw Authorization %q", api.last())
			}
			out, err = run(t, c.prog, c.args("http://plain.example.test/"+c.name)...)
			if err != nil || out != "hello from plain GET /"+c.name || plain.last() != "" {
				t.Fatalf("http: %v\n%s (upstream saw Authorization %q)", err, out, plain.last())
			}
		})
	}
	t.Run("curl is told why", func(t *testing.T) {
		out, err := run(t, "curl", "-sS", "-v", "--cacert", caFile, "https://evil.example.test/")
		if err == nil || !strings.Contains(out, "403 cove egress: evil.example.test:443 not allowed") {
			t.Fatalf("denied CONNECT: %v\n%s", err, out)
		}
	})
	e.assertNoSecret()
}
