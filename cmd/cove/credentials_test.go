package main

import (
	"bytes"
	"context"
	"io"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// onRead is a reader that calls hook once, at its first read, then reads
// r: a user typing a token while something else happens.
type onRead struct {
	r    io.Reader
	hook func()
}

func (o *onRead) Read(p []byte) (int, error) {
	if o.hook != nil {
		o.hook()
		o.hook = nil
	}
	return o.r.Read(p)
}

// credServers lists the servers in the credentials file at path.
func credServers(t *testing.T, path string) []string {
	t.Helper()
	creds, err := loadCredentials(path)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Sorted(maps.Keys(creds.Servers))
}

// A sign-in that another cove command saved while login waited for the
// user (a renewal of another server's, say) is kept: login writes into
// the file as it is then, not as it read it at the start.
func TestLoginKeepsWhatOthersSaved(t *testing.T) {
	addr, _ := loginServer(t)
	tm := newTerminal(t, addr)
	path := tm.credentialsPath()
	if err := saveCredentials(path, credentials{Servers: map[string]*credential{"old.example:7070": {Token: "cove_old"}}}); err != nil {
		t.Fatal(err)
	}
	stdin := &onRead{r: strings.NewReader(testToken + "\n"), hook: func() {
		// Meanwhile, another command saves a sign-in, under the lock.
		if err := updateCredentials(path, func(c *credentials) error {
			c.Servers["new.example:7070"] = &credential{Token: "cove_new"}
			return nil
		}); err != nil {
			t.Error(err)
		}
	}}
	var out, errOut bytes.Buffer
	c := &cli{stdin: stdin, stdout: &out, stderr: &errOut, getenv: func(k string) string { return tm.env[k] }, now: time.Now}
	if code := run(context.Background(), c, []string{"login", "--token"}); code != 0 {
		t.Fatalf("login --token: exit %d, %q", code, errOut.String())
	}
	if got, want := credServers(t, path), []string{addr, "new.example:7070", "old.example:7070"}; !slices.Equal(got, want) {
		t.Errorf("after login the file holds %q, want %q", got, want)
	}
}

// logout waits for the credentials lock (a renewal holds it) and then
// removes its server from the file as the renewal left it.
func TestLogoutTakesTheLock(t *testing.T) {
	addr, _ := loginServer(t)
	tm := newTerminal(t, addr)
	path := tm.credentialsPath()
	if err := saveCredentials(path, credentials{Servers: map[string]*credential{addr: {Token: testToken}, "b.example:7070": {Token: "cove_b"}}}); err != nil {
		t.Fatal(err)
	}
	unlock, err := lockCredentials(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan int)
	var out string
	go func() {
		code, o, _ := tm.run("", "logout")
		out = o
		done <- code
	}()
	// A logout that took the lock cannot finish while it is held, however
	// long this waits; one that did not would have by now.
	select {
	case <-done:
		t.Fatal("logout finished while the credentials lock was held")
	case <-time.After(200 * time.Millisecond):
	}
	// What the holder saves (blindly, as a renewal does) is what logout
	// then reads.
	if err := saveCredentials(path, credentials{Servers: map[string]*credential{addr: {Token: testToken},
		"b.example:7070": {Token: "cove_b"}, "c.example:7070": {Token: "cove_c"}}}); err != nil {
		t.Fatal(err)
	}
	unlock()
	if code := <-done; code != 0 || out != "Signed out of "+addr+".\n" {
		t.Fatalf("logout: exit %d, %q", code, out)
	}
	if got, want := credServers(t, path), []string{"b.example:7070", "c.example:7070"}; !slices.Equal(got, want) {
		t.Errorf("after logout the file holds %q, want %q", got, want)
	}
}
