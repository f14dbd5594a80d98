package agent

import (
	"context"
	"io"

	"github.com/cove-dev/cove/internal/agentproto"
)

// ServeConn serves one synced host connection until it ends, as Serve does
// for each connection on the port; tests run it over a socket pair.
func (a *Agent) ServeConn(ctx context.Context, conn io.ReadWriteCloser) { a.serveConn(ctx, conn) }

// SayHello answers a hello, as the sync line's hello does.
func (a *Agent) SayHello(req agentproto.Request) agentproto.Hello { return a.sayHello(req) }
