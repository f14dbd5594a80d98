package agent

import (
	"context"
	"io"
	"net"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
)

// ServeConn serves one synced host connection until it ends, as Serve does
// for each connection on the port; tests run it over a socket pair.
func (a *Agent) ServeConn(ctx context.Context, conn io.ReadWriteCloser) { a.serveConn(ctx, conn) }

// SayHello answers a hello, as the sync line's hello does.
func (a *Agent) SayHello(req agentproto.Request) agentproto.Hello { return a.sayHello(req) }

// ServeTool answers one guest tool's connection, as ServeTools does for
// each on SocketPath.
func (a *Agent) ServeTool(ctx context.Context, c net.Conn) { a.serveTool(ctx, c) }

// SetSync replaces the detach's write-back (unix.Sync) and its bound.
func (a *Agent) SetSync(sync func(), limit time.Duration) { a.syncFS, a.syncLimit = sync, limit }

// SetEgress makes egress setup write its files under root and listen on
// addr (127.0.0.1:0 for any port) instead of the guest's.
func (a *Agent) SetEgress(root, addr string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.egressRoot, a.egressAddr, a.dnsAddr = root, addr, "127.0.0.1:0"
}

// DNSAddr is where the agent answers DNS, once egress is set up.
func (a *Agent) DNSAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dnsAddr
}

// EgressAddr is where the egress listener listens, once set up.
func (a *Agent) EgressAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.egressAddr
}

// Listening reports whether a host's listen stream is open.
func (a *Agent) Listening() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.listener != nil
}

// SetEventsDir makes a park request look for its waking event in dir
// instead of EventsDir.
func (a *Agent) SetEventsDir(dir string) { a.eventsDir = dir }
