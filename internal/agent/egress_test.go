package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/cove-dev/cove/internal/agent"
	"github.com/cove-dev/cove/internal/agentproto"
)

const testCA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"

// Egress setup trusts the CA, sets every command's proxy environment and
// carries a program's connection to the host's handler, byte for byte and
// both ways; a second setup with another CA replaces the first's.
func TestEgressSetupAndForwarding(t *testing.T) {
	root := t.TempDir()
	bundle := filepath.Join(root, agent.EgressBundle)
	if err := os.MkdirAll(filepath.Dir(bundle), 0o755); err != nil {
		t.Fatal(err)
	}
	const system = "-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----\n"
	if err := os.WriteFile(bundle, []byte(system), 0o644); err != nil {
		t.Fatal(err)
	}
	sharedAgent().SetEgress(root, "127.0.0.1:0")
	c := connect(t)

	// A command before the setup has no proxy: the environment is the
	// setup's doing (positive control for the check below).
	if r := run(t, c, agentproto.Exec{Argv: []string{"sh", "-c", `echo "[$HTTPS_PROXY]"`}}); r.stdout != "[]\n" {
		t.Fatalf("before setup: HTTPS_PROXY %q, want none", r.stdout)
	}
	if err := c.SetupEgress(ctxT(t), agentproto.EgressSetup{CACert: []byte(testCA)}); err != nil {
		t.Fatal(err)
	}
	addr := sharedAgent().EgressAddr()
	r := run(t, c, agentproto.Exec{Argv: []string{"sh", "-c", `echo "$HTTPS_PROXY $http_proxy $SSL_CERT_FILE"`}})
	if want := "http://" + addr + " http://" + addr + " " + agent.EgressBundle + "\n"; r.stdout != want {
		t.Errorf("proxy environment %q, want %q", r.stdout, want)
	}
	// A command's own setting wins.
	r = run(t, c, agentproto.Exec{Argv: []string{"sh", "-c", `echo "$HTTPS_PROXY"`}, Env: []string{"HTTPS_PROXY=http://mine:1"}})
	if r.stdout != "http://mine:1\n" {
		t.Errorf("a command's own HTTPS_PROXY became %q", r.stdout)
	}
	b, _ := os.ReadFile(bundle)
	if !strings.HasPrefix(string(b), system) || strings.Count(string(b), testCA) != 1 {
		t.Errorf("bundle after setup:\n%s\nwant the system's roots, then the cove CA once", b)
	}
	for _, f := range []string{agent.EgressCAFile, "/etc/profile.d/cove-egress.sh", "/etc/gitconfig"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("setup left no %s: %v", f, err)
		}
	}
	git, _ := os.ReadFile(filepath.Join(root, "/etc/gitconfig"))
	if !strings.Contains(string(git), "proxy = http://"+addr) {
		t.Errorf("gitconfig:\n%s\nwant the proxy", git)
	}

	// A new CA replaces the old one's block; the system's roots stay.
	ca2 := strings.Replace(testCA, "fake", "other", 1)
	if err := c.SetupEgress(ctxT(t), agentproto.EgressSetup{CACert: []byte(ca2)}); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(bundle)
	if !strings.HasPrefix(string(b), system) || strings.Contains(string(b), testCA) || strings.Count(string(b), ca2) != 1 {
		t.Errorf("bundle after a second CA:\n%s", b)
	}
	if err := c.SetupEgress(ctxT(t), agentproto.EgressSetup{}); err == nil {
		t.Error("a setup without a CA was accepted")
	}

	// The host echoes each connection, upper-cased, with what it read
	// first: the bytes arrive unframed, and the program's half-close
	// reaches the host.
	resolved := make(chan string, 16)
	go c.ServeConnects(ctxT(t), func(conn net.Conn) {
		defer conn.Close()
		all, _ := io.ReadAll(conn)
		conn.Write(bytes.ToUpper(all))
	}, func(name string) { resolved <- name })
	for i := 0; i < 3; i++ {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		msg := strings.Repeat("hello egress ", 10000) // several stream windows
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		conn.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(bufio.NewReader(conn))
		conn.Close()
		if err != nil || string(got) != strings.ToUpper(msg) {
			t.Fatalf("connection %d: got %d bytes (%v), want %d upper-cased", i, len(got), err, len(msg))
		}
	}

	// The guest's resolver is the agent, which refuses at once and tells
	// the host the name.
	if b, _ := os.ReadFile(filepath.Join(root, "/etc/resolv.conf")); !strings.Contains(string(b), "nameserver 127.0.0.1") {
		t.Errorf("resolv.conf:\n%s", b)
	}
	r2 := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", sharedAgent().DNSAddr())
	}}
	_, err := r2.LookupHost(ctxT(t), "GitHub.com")
	var de *net.DNSError
	if !errors.As(err, &de) || de.IsNotFound || de.IsTimeout {
		t.Fatalf("lookup through the agent: %v, want a refusal (not a timeout, not NXDOMAIN)", err)
	}
	select {
	case name := <-resolved:
		if name != "github.com" {
			t.Errorf("the host was told %q, want github.com", name)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the host was not told of the refused lookup")
	}
}

// A stream the guest opens that does not start with a connect request is
// closed unserved, and does not stop the host from serving the next one.
func TestServeConnectsRefusesOtherStreams(t *testing.T) {
	host, guest := socketPair(t)
	c, err := agentproto.NewClient(host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	served := make(chan string, 4)
	go c.ServeConnects(ctxT(t), func(conn net.Conn) {
		defer conn.Close()
		b, _ := io.ReadAll(conn)
		served <- string(b)
	}, nil)
	gs, err := yamux.Server(guest, agentproto.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer gs.Close()
	open := func(first agentproto.Request, body string) *yamux.Stream {
		st, err := gs.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if err := agentproto.WriteJSON(st, agentproto.FrameRequest, first); err != nil {
			t.Fatal(err)
		}
		st.Write([]byte(body))
		st.Close()
		return st
	}
	bad := open(agentproto.Request{Op: agentproto.OpExec}, "not for you")
	// The host closes it: a served stream would be closed only after its
	// handler had sent what it read, so once the close arrives, served
	// says whether it was.
	io.ReadAll(bad)
	select {
	case got := <-served:
		t.Fatalf("a stream opened for exec was served to the proxy: %q", got)
	default:
	}
	open(agentproto.Request{Op: agentproto.OpConnect}, "for the proxy")
	if got := <-served; got != "for the proxy" {
		t.Fatalf("served %q, want the connect stream's bytes", got)
	}
}
