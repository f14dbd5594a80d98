package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/secret"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// secretServer is identityServer with secrets: the real API server over
// a real SQLite store, a secret.Keeper over a Box, the default policy. It
// returns the address and a Resolver of its secrets.
func secretServer(t *testing.T) (string, *secret.Resolver) {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key := make([]byte, secret.KeySize)
	rand.Read(key)
	box, err := secret.NewBox(key)
	if err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return testNow }
	srv := httptest.NewServer(apiserver.New(apiserver.Config{
		Sessions:      noSessions{},
		Token:         testToken,
		Identities:    &identity.Directory{Store: st, Now: now},
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{AdminToken: testToken, Store: st, Now: now}),
		Authorize:     (&apiserver.PolicyGate{Policy: policy.New(), Records: st}).Authorize,
		Secrets:       &secret.Keeper{Store: st, Box: box, Now: now},
	}).Handler())
	t.Cleanup(srv.Close)
	return srv.URL, &secret.Resolver{Store: st, Box: box}
}

// runIn runs one cove command line in-process against addr with token,
// stdin as its standard input.
func runIn(t *testing.T, addr, token, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	env := map[string]string{"COVE_HOME": t.TempDir(), "COVE_ADDR": addr, "COVE_TOKEN": token}
	var out, errOut bytes.Buffer
	c := &cli{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut,
		getenv: func(k string) string { return env[k] }, now: func() time.Time { return testNow }}
	code = run(context.Background(), c, args)
	return code, out.String(), errOut.String()
}

// TestSecretCommands protects secret set, ls and rm against the real
// server: set reads the value from stdin less one trailing newline, and
// refuses an empty one before the server; ls prints names, owners, hosts
// and headers, as a table and JSON, and never a value; a team's is an
// admin's to set; rm removes, per name; usage errors exit 2; and no
// output ever holds a value.
func TestSecretCommands(t *testing.T) {
	addr, res := secretServer(t)
	if code, _, errOut := runIn(t, addr, testToken, "", "user", "add", "alice", "--team", "platform"); code != 0 {
		t.Fatalf("user add: %s", errOut)
	}
	admin := adminUserToken(t, addr)
	aliceTok, err := api.NewClient(addr, testToken).CreateToken(t.Context(), api.CreateTokenRequest{Name: "laptop", User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	alice := aliceTok.Secret
	values := []string{"ghp_CLI-VALUE\n", "ghp_CLI-VALUE", "npm_TEAM-VALUE", "ghp_CLI-REPLACED"}

	for _, tc := range []struct {
		token, stdin string
		args         []string
		code         int
		stdout, errs string
	}{
		{alice, values[0], []string{"secret", "set", "github", "--host", "github.com", "--host", "*.githubusercontent.com",
			"--header", "Authorization: Bearer {{value}}"}, 0, "github\n", ""},
		{alice, "", []string{"secret", "set", "empty", "--host", "github.com", "--header", "A: {{value}}"}, 1, "", "cove: secret set: empty value on stdin"},
		{alice, "\n", []string{"secret", "set", "empty", "--host", "github.com", "--header", "A: {{value}}"}, 1, "", "cove: secret set: empty value on stdin"},
		{alice, "x\n\n", []string{"secret", "set", "twolines", "--host", "github.com", "--header", "A: {{value}}"}, 1, "", "value: a control character (byte 0x0a) at offset 1"},
		{alice, "x", []string{"secret", "set", "github", "--header", "A: {{value}}"}, 2, "", "--host is required"},
		{alice, "x", []string{"secret", "set", "github", "--host", "github.com"}, 2, "", "--header is required"},
		{alice, "x", []string{"secret", "set", "github", "--host", "a.com", "--header", "A: {{value}}", "--team", "t", "--template", "u"}, 2, "", "name at most one owner"},
		{alice, "x", []string{"secret", "set"}, 2, "", "Run 'cove secret set --help' for usage."},
		{alice, "x", []string{"secret", "set", "github", "--host", "github.com:443", "--header", "A: {{value}}"}, 1, "", `hosts: "github.com:443": not a host name`},
		{alice, values[2], []string{"secret", "set", "npm", "--team", "platform", "--host", "registry.npmjs.org", "--header", "Authorization: Bearer {{value}}"},
			1, "", "no policy permits secret.write on Team platform"},
		{admin, values[2], []string{"secret", "set", "npm", "--team", "platform", "--host", "registry.npmjs.org", "--header", "Authorization: Bearer {{value}}"}, 0, "npm\n", ""},
		{alice, "", []string{"secret", "ls"}, 0, "NAME     OWNER        HOSTS                                HEADER                            UPDATED\n" +
			"github   user alice   github.com,*.githubusercontent.com   Authorization: Bearer {{value}}   0s\n", ""},
		{alice, "", []string{"secret", "ls", "--team", "platform"}, 0, "NAME   OWNER           HOSTS                HEADER                            UPDATED\n" +
			"npm    team platform   registry.npmjs.org   Authorization: Bearer {{value}}   0s\n", ""},
		{alice, "", []string{"secret", "ls", "--all"}, 1, "", "no policy permits secret.list on Server cove"},
		{alice, "", []string{"secret", "ls", "x"}, 2, "", "unknown command"},
		{alice, "", []string{"secret", "rm", "github", "nope"}, 1, "github\n", `cove: secret rm nope: no secret "nope" of user alice`},
		{alice, "", []string{"secret", "ls"}, 0, "NAME   OWNER   HOSTS   HEADER   UPDATED\n", ""},
		{alice, values[3] + "\r\n", []string{"secrets", "set", "github", "--host", "github.com", "--header", "Authorization: token {{value}}"}, 0, "github\n", ""},
	} {
		code, out, errOut := runIn(t, addr, tc.token, tc.stdin, tc.args...)
		if code != tc.code || out != tc.stdout || !strings.Contains(errOut, tc.errs) || tc.errs == "" && errOut != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d, %q, %q", tc.args, code, out, errOut, tc.code, tc.stdout, tc.errs)
		}
		for _, v := range values {
			if strings.Contains(out+errOut, strings.TrimSpace(v)) {
				t.Errorf("%q: the output holds a value: %s%s", tc.args, out, errOut)
			}
		}
	}

	// The value reached the server whole, less the one line ending.
	aliceID := ""
	if u, err := api.NewClient(addr, testToken).ListUsers(t.Context()); err == nil {
		for _, x := range u {
			if x.Name == "alice" {
				aliceID = x.ID
			}
		}
	}
	plain, err := res.For(t.Context(), aliceID, "")
	if err != nil || len(plain) != 2 || plain[0].Value != "token ghp_CLI-REPLACED" || plain[1].Value != "Bearer npm_TEAM-VALUE" {
		t.Errorf("alice's secrets: %v, %v", plain, err)
	}

	code, out, errOut := runIn(t, addr, admin, "", "secret", "ls", "--all", "--json")
	var list []api.Secret
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 || list[0].Name != "npm" || list[1].Owner != "alice" {
		t.Errorf("secret ls --all --json: exit %d, %s %s", code, out, errOut)
	}
	for _, v := range values {
		if strings.Contains(out, strings.TrimSpace(v)) {
			t.Errorf("secret ls --json holds a value: %s", out)
		}
	}
	if code, out, errOut := runIn(t, addr, admin, "", "secret", "rm", "npm", "--team", "platform"); code != 0 || out != "npm\n" {
		t.Errorf("secret rm --team as admin: exit %d, %q %q", code, out, errOut)
	}
}

// TestServerSecretKey protects how cove server finds the key that seals
// secrets: made once (0600) under --home when nothing names one, the
// same key at the next start; a --secret-key file must exist and be
// readable by its owner alone; COVE_SECRET_KEY wins over both.
func TestServerSecretKey(t *testing.T) {
	t.Setenv(secret.EnvKey, "")
	os.Unsetenv(secret.EnvKey)
	home := t.TempDir()
	aad := secret.AAD("user", "u_a", "github")
	b1, err := secretBox(serverConfig{Home: home})
	if err != nil {
		t.Fatalf("first start: %v", err)
	}
	sealed, _ := b1.Seal([]byte("v"), aad)
	fi, err := os.Stat(filepath.Join(home, "secret.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret.key: %v, %v; want mode 0600", fi, err)
	}
	b2, err := secretBox(serverConfig{Home: home})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := b2.Open(sealed, aad); err != nil || string(v) != "v" {
		t.Errorf("the second start's key opens %q, %v", v, err)
	}

	missing := filepath.Join(t.TempDir(), "elsewhere.key")
	if _, err := secretBox(serverConfig{Home: home, SecretKey: missing}); err == nil {
		t.Error("a --secret-key that does not exist: no error")
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("a missing --secret-key file was made")
	}
	open := filepath.Join(t.TempDir(), "open.key")
	if err := os.WriteFile(open, []byte(strings.Repeat("A", 43)+"=\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o644)
	if _, err := secretBox(serverConfig{Home: home, SecretKey: open}); err == nil || !strings.Contains(err.Error(), "chmod 600 "+open) {
		t.Errorf("a world-readable --secret-key: %v", err)
	}
	os.Chmod(open, 0o600)
	if _, err := secretBox(serverConfig{Home: home, SecretKey: open}); err != nil {
		t.Errorf("the same file, 0600: %v", err)
	}

	key := make([]byte, secret.KeySize)
	rand.Read(key)
	t.Setenv(secret.EnvKey, base64.StdEncoding.EncodeToString(key))
	b3, err := secretBox(serverConfig{Home: home, SecretKey: missing})
	if err != nil {
		t.Fatalf("with %s: %v", secret.EnvKey, err)
	}
	if _, err := b3.Open(sealed, aad); err == nil || !strings.Contains(err.Error(), "wrong key?") {
		t.Errorf("the variable's key opens the file key's value: %v", err)
	}
}
