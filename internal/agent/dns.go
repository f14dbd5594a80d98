package agent

import (
	"context"
	"net"
	"strings"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
)

// The guest has no DNS of its own: names are resolved by the egress proxy,
// on the host, for the programs that use it. A program that resolves a
// name itself (ssh, nc, a client that ignores HTTP_PROXY) asks the agent,
// which /etc/resolv.conf names: it answers REFUSED at once, so the program
// fails fast instead of timing out, and tells the host, which records the
// refusal with the session (see agentproto.OpResolve).
const (
	resolvConf = "/etc/resolv.conf"
	// dnsAddr is where the agent answers DNS in a guest.
	dnsAddr = "127.0.0.1:53"
	// resolveQuiet is how long the agent keeps from reporting the same
	// name again (resolvers ask several times per lookup).
	resolveQuiet = 5 * time.Second
)

// resolvConfText points the guest's resolver at the agent, asking once.
const resolvConfText = `# Written by cove: the guest has no DNS. Names are resolved by the egress
# proxy for programs that use it (HTTP_PROXY, HTTPS_PROXY); the agent
# refuses every query here, and the host records it.
nameserver 127.0.0.1
options attempts:1 timeout:1
`

// serveDNS answers every DNS query on pc with REFUSED and reports its
// name to the host.
func (a *Agent) serveDNS(pc net.PacketConn) {
	buf := make([]byte, 1500)
	reported := map[string]time.Time{}
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			a.Log.Warn("dns listener", "err", err)
			return
		}
		name, resp, ok := refuseQuery(buf[:n])
		if !ok {
			continue
		}
		_, _ = pc.WriteTo(resp, from)
		if at, seen := reported[name]; seen && time.Since(at) < resolveQuiet {
			continue
		}
		if len(reported) > 1024 {
			clear(reported)
		}
		reported[name] = time.Now()
		go a.reportResolve(name)
	}
}

// reportResolve tells the host that name was refused, if a host is there.
func (a *Agent) reportResolve(name string) {
	sess, err := a.currentSession(context.Background(), 0)
	if err != nil {
		return
	}
	st, err := sess.OpenStream()
	if err != nil {
		return
	}
	defer st.Close()
	_ = agentproto.WriteJSON(st, agentproto.FrameRequest, agentproto.Request{Op: agentproto.OpResolve, Name: name})
}

// refuseQuery parses a DNS query and returns the name of its first
// question (lower-case, without the final dot) and the REFUSED answer to
// it: the query's header and question, QR set, RCODE 5, no records. ok is
// false for what is not a well-formed query.
func refuseQuery(q []byte) (name string, resp []byte, ok bool) {
	if len(q) < 12 || q[2]&0x80 != 0 || q[4] != 0 || q[5] == 0 {
		return "", nil, false // short, an answer, or no question
	}
	var labels []string
	i := 12
	for {
		if i >= len(q) {
			return "", nil, false
		}
		l := int(q[i])
		i++
		if l == 0 {
			break
		}
		if l > 63 || i+l > len(q) {
			return "", nil, false // too long, or compressed (no pointers in a question)
		}
		labels = append(labels, strings.ToLower(string(q[i:i+l])))
		i += l
	}
	if i+4 > len(q) {
		return "", nil, false
	}
	end := i + 4 // QTYPE, QCLASS
	resp = append([]byte(nil), q[:end]...)
	resp[2] = 0x80 | q[2]&0x79 // QR, the query's opcode and RD
	resp[3] = 0x05             // REFUSED
	resp[4], resp[5] = 0, 1    // one question
	for j := 6; j < 12; j++ {
		resp[j] = 0 // no answer, authority or additional records
	}
	name = strings.Join(labels, ".")
	if name == "" {
		name = "."
	}
	return name, resp, true
}
