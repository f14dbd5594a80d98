package agent

import (
	"context"
	"io"
)

// ServeConn serves one synced host connection until it ends, as Serve does
// for each connection on the port; tests run it over a socket pair.
func (a *Agent) ServeConn(ctx context.Context, conn io.ReadWriteCloser) { a.serveConn(ctx, conn) }
