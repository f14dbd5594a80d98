package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/cove-dev/cove/internal/agentproto"
)

// Where the guest keeps what egress setup writes. Bundle is the system's
// trust store on Debian-like guests (curl, git, Python's ssl and
// OpenSSL read it); the setup adds the cove CA to it, or creates it.
const (
	EgressCAFile  = "/usr/local/share/ca-certificates/cove-egress.crt"
	EgressBundle  = "/etc/ssl/certs/ca-certificates.crt"
	egressProfile = "/etc/profile.d/cove-egress.sh"
	gitConfig     = "/etc/gitconfig"
	// caMarker starts the cove CA's block in the bundle, so that a new
	// CA replaces the old one instead of piling up.
	caMarker = "# cove egress CA\n"
	// gitBegin and gitEnd bound cove's section of the system git config.
	gitBegin = "# cove egress: begin\n"
	gitEnd   = "# cove egress: end\n"
)

// egressEnv is the environment every command gets once egress is set up,
// where the command does not set the variable itself: programs reach
// allowed hosts through the proxy with no setup of their own, and trust
// the certificates it presents.
func egressEnv(addr string) []string {
	proxy := "http://" + addr
	noProxy := "localhost,127.0.0.1,::1"
	return []string{
		"http_proxy=" + proxy, "https_proxy=" + proxy,
		"HTTP_PROXY=" + proxy, "HTTPS_PROXY=" + proxy,
		"no_proxy=" + noProxy, "NO_PROXY=" + noProxy,
		// Python (requests, pip) and Node ship their own roots and
		// curl or git may be built against another store: each is told.
		"SSL_CERT_FILE=" + EgressBundle,
		"REQUESTS_CA_BUNDLE=" + EgressBundle,
		"PIP_CERT=" + EgressBundle,
		"CURL_CA_BUNDLE=" + EgressBundle,
		"GIT_SSL_CAINFO=" + EgressBundle,
		"NODE_EXTRA_CA_CERTS=" + EgressCAFile,
	}
}

// setupEgress installs the host's CA in the guest's trust store, the proxy
// environment for login shells and git, and starts the listener at
// EgressAddr. Done again with the same CA it changes nothing.
func (a *Agent) setupEgress(s *agentproto.EgressSetup) error {
	if s == nil || !bytes.Contains(s.CACert, []byte("-----BEGIN CERTIFICATE-----")) {
		return errors.New("egress setup: no CA certificate")
	}
	a.egressMu.Lock() // one setup at a time; a.mu is not held over file writes
	defer a.egressMu.Unlock()
	a.mu.Lock()
	if a.egressLn == nil {
		ln, err := net.Listen("tcp", a.egressAddr)
		if err != nil {
			a.mu.Unlock()
			return fmt.Errorf("egress setup: listen: %w", err)
		}
		pc, err := net.ListenPacket("udp", a.dnsAddr)
		if err != nil {
			ln.Close()
			a.mu.Unlock()
			return fmt.Errorf("egress setup: dns: %w", err)
		}
		a.egressLn = ln
		a.egressAddr, a.dnsAddr = ln.Addr().String(), pc.LocalAddr().String()
		go a.serveEgress(ln)
		go a.serveDNS(pc)
	}
	same := bytes.Equal(a.egressCA, s.CACert)
	root, addr := a.egressRoot, a.egressAddr
	a.mu.Unlock()
	if same {
		return nil
	}
	if err := installEgress(root, s.CACert, addr); err != nil {
		return err
	}
	a.mu.Lock()
	a.egressCA = append([]byte(nil), s.CACert...)
	a.mu.Unlock()
	return nil
}

// installEgress writes the CA and the proxy configuration for addr into
// the guest's root file system, under root ("" in a guest; tests give a
// directory).
func installEgress(root string, ca []byte, addr string) error {
	if err := writeFileAtomic(root+EgressCAFile, ca, 0o644); err != nil {
		return err
	}
	old, err := os.ReadFile(root + EgressBundle)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("egress setup: %w", err)
	}
	if err := writeFileAtomic(root+EgressBundle, withBlock(old, caMarker, "-----END CERTIFICATE-----\n", ca), 0o644); err != nil {
		return err
	}
	var profile strings.Builder
	profile.WriteString("# Written by cove: programs reach the network through the host's egress proxy.\n")
	for _, kv := range egressEnv(addr) {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&profile, "export %s=%q\n", k, v)
	}
	if err := writeFileAtomic(root+resolvConf, []byte(resolvConfText), 0o644); err != nil {
		return err
	}
	if err := writeFileAtomic(root+egressProfile, []byte(profile.String()), 0o644); err != nil {
		return err
	}
	old, err = os.ReadFile(root + gitConfig)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("egress setup: %w", err)
	}
	section := fmt.Sprintf("[http]\n\tproxy = http://%s\n\tsslCAInfo = %s\n", addr, EgressBundle)
	return writeFileAtomic(root+gitConfig, withBlock(old, gitBegin, gitEnd, []byte(section)), 0o644)
}

// withBlock returns text with the block that starts with begin and ends
// with the first end after it replaced by begin+body (+end, when body
// does not end with it), or that block appended.
func withBlock(text []byte, begin, end string, body []byte) []byte {
	var out []byte
	if i := bytes.Index(text, []byte(begin)); i >= 0 {
		rest := text[i+len(begin):]
		j := bytes.Index(rest, []byte(end))
		if j < 0 {
			j = len(rest)
		} else {
			j += len(end)
		}
		out = append(append(out, text[:i]...), rest[j:]...)
	} else {
		out = append(out, text...)
	}
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	out = append(append(out, begin...), body...)
	if !bytes.HasSuffix(body, []byte(end)) {
		out = append(out, end...)
	}
	return out
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("egress setup: %w", err)
	}
	tmp := path + ".cove-tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("egress setup: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("egress setup: %w", err)
	}
	return nil
}

// serveEgress carries each connection made to EgressAddr to the host, on a
// stream of its own, until the listener fails.
func (a *Agent) serveEgress(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			a.Log.Warn("egress listener", "err", err)
			return
		}
		go a.forwardEgress(c)
	}
}

// hostWait bounds how long a connection waits for a host to be connected
// (the host reconnects after a wake or a restart of its server).
const hostWait = 10 * time.Second

// forwardEgress splices one program's connection with a stream to the
// host's proxy. A connection made while no host answers is closed: the
// program sees its connection end and may try again.
func (a *Agent) forwardEgress(c net.Conn) {
	defer c.Close()
	sess, err := a.currentSession(context.Background(), hostWait)
	if err != nil {
		return
	}
	st, err := sess.OpenStream()
	if err != nil {
		return
	}
	defer st.Close()
	if err := agentproto.WriteJSON(st, agentproto.FrameRequest, agentproto.Request{Op: agentproto.OpConnect}); err != nil {
		return
	}
	up := make(chan struct{})
	go func() {
		defer close(up)
		// The program's end of its writing is passed on as the stream's
		// (yamux's Close only ends this side's writes).
		_, _ = io.Copy(st, c)
		st.Close()
	}()
	_, err = io.Copy(c, st)
	if tc, ok := c.(*net.TCPConn); ok && err == nil {
		_ = tc.CloseWrite()
		<-up
		return
	}
	// The host reset the stream (a cut, a park): end the program's
	// connection now, whatever it is doing.
	c.Close()
	<-up
}

// currentSession returns the host's current yamux session, waiting up to
// limit for one.
func (a *Agent) currentSession(ctx context.Context, limit time.Duration) (*yamux.Session, error) {
	var s *yamux.Session
	err := a.waitHost(ctx, limit, func() bool { s = a.sess; return s != nil && !s.IsClosed() })
	return s, err
}
