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
