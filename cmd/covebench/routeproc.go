package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// The route figures again with client and servers in separate processes
// (the in-process figures' Go runtime is shared by the client and every
// server): covebench runs itself once per server and node
// (-route-serve), over the fleet's SQLite file; each child prints
// "ready URL NODE" once it serves, and stops when its stdin closes.

// routeChild is a covebench process serving one server or node.
type routeChild struct {
	url, node string
	cmd       *exec.Cmd
	stdin     io.WriteCloser
}

// startRouteChild starts covebench -route-serve role for server name of
// the fleet in dir (via: the URL of the server a node connects to).
func startRouteChild(ctx context.Context, dir, role, name, via string) (*routeChild, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, "-route-serve", role, "-route-dir", dir, "-route-name", name, "-route-via", via)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("route: start %s: %w", name, err)
	}
	c := &routeChild{cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 3 || f[0] != "ready" {
		c.stop()
		return nil, fmt.Errorf("route: %s did not start: %q, %v", name, line, err)
	}
	c.url, c.node = f[1], f[2]
	return c, nil
}

// stop closes the child's stdin, which ends it, and waits for it.
func (c *routeChild) stop() {
	c.stdin.Close()
	_ = c.cmd.Wait()
}

// serveRouteRole is a child's main: it serves role (embedded: a server
// with its embedded node; link: a server with no node holding nodes'
// connections; node: a session-serving node connecting to via) as name
// until its stdin closes.
func serveRouteRole(role, dir, name, via string) error {
	ctx := context.Background()
	f := &fleet{dir: dir, db: filepath.Join(dir, "state.db"), imgDir: filepath.Join(dir, "image"), driver: fake.New(),
		log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), keep: true, memMiB: 64}
	f.images = benchImages{f.imgDir}
	var url, node string
	var stop func()
	switch role {
	case "embedded":
		s, err := f.server(ctx, name, 0, 0)
		if err != nil {
			return err
		}
		url, node, stop = s.url, s.node, s.stop
	case "link":
		s, err := f.linkServer(ctx, name)
		if err != nil {
			return err
		}
		url, node, stop = s.url, "-", s.stop
	case "node":
		id, stopNode, err := f.linkedNode(ctx, name, &linkServer{url: via})
		if err != nil {
			return err
		}
		url, node, stop = via, id, stopNode
	default:
		return fmt.Errorf("-route-serve %q: want embedded, link or node", role)
	}
	defer stop()
	fmt.Printf("ready %s %s\n", url, node)
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// routeProcRows are routeRows' and linkRouteRows' figures with each
// server and node in a process of its own: A and B with embedded nodes,
// S and S2 with none, S holding node N's connection.
func routeProcRows(n int) ([]row, error) {
	if n <= 0 {
		return nil, fmt.Errorf("route: %d samples", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f, err := newFleet(ctx)
	if err != nil {
		return nil, fmt.Errorf("route: %w", err)
	}
	defer f.close()
	var children []*routeChild
	defer func() {
		for i := len(children) - 1; i >= 0; i-- {
			children[i].stop()
		}
	}()
	start := func(role, name, via string) (*routeChild, error) {
		c, err := startRouteChild(ctx, f.dir, role, name, via)
		if err == nil {
			children = append(children, c)
		}
		return c, err
	}
	b, err := start("embedded", "bench-b", "")
	if err != nil {
		return nil, err
	}
	a, err := start("embedded", "bench-a", "")
	if err != nil {
		return nil, err
	}
	s, err := start("link", "bench-s", "")
	if err != nil {
		return nil, err
	}
	s2, err := start("link", "bench-s2", "")
	if err != nil {
		return nil, err
	}
	node, err := start("node", "bench-n", s.url)
	if err != nil {
		return nil, err
	}
	direct, viaA, viaS, viaS2 := f.clientAt(b.url), f.clientAt(a.url), f.clientAt(s.url), f.clientAt(s2.url)
	// Each session placed where it is measured: the other nodes
	// cordoned while it is made.
	cordon := func(on bool, ids ...string) error {
		for _, id := range ids {
			var err error
			if on {
				_, err = direct.CordonNode(ctx, id)
			} else {
				_, err = direct.UncordonNode(ctx, id)
			}
			if err != nil {
				return fmt.Errorf("route: cordon %s: %w", id, err)
			}
		}
		return nil
	}
	create := func(c *api.Client, want string) (string, error) {
		ss, err := c.CreateSession(ctx, api.CreateSessionRequest{})
		if err == nil && ss.Node != want {
			err = fmt.Errorf("placed on %s, not %s", ss.Node, want)
		}
		if err != nil {
			return "", fmt.Errorf("route: create: %w", err)
		}
		return ss.ID, nil
	}
	if err := cordon(true, a.node, node.node); err != nil {
		return nil, err
	}
	onB, err := create(direct, b.node)
	if err != nil {
		return nil, err
	}
	defer direct.DeleteSession(context.Background(), onB)
	if err := errors.Join(cordon(false, node.node), cordon(true, b.node)); err != nil {
		return nil, err
	}
	onN, err := create(viaS, node.node)
	if err != nil {
		return nil, err
	}
	defer viaS.DeleteSession(context.Background(), onN)

	const label = "[processes] "
	rows, err := routedRows(ctx, n, label, viaA, direct, onB)
	if err != nil {
		return nil, err
	}
	linked, err := linkedRows(ctx, n, label, direct, viaS, viaS2, onB, onN)
	return append(rows, linked...), err
}
