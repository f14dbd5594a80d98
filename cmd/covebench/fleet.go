package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// fleet is several in-process cove servers over one SQLite file, one
// object store (a directory) and the fake VMM, each wired as cove server
// wires it: a session manager with its embedded node advertising its
// API server's loopback URL, routing on. What is timed is the servers'
// work, the store's and the hops between them, not a guest's.
type fleet struct {
	dir     string
	db      string
	imgDir  string
	driver  vmm.Driver
	images  session.Images
	objects session.SnapshotStore
	token   string
	log     *slog.Logger
	keep    bool // close leaves dir (not the fleet's own)
	memMiB  int  // each session's memory; 0: the manager's default
}

// fleetCapacity is what each node of a fleet offers.
var fleetCapacity = store.NodeCapacity{VCPUs: 64, MemoryMiB: 256 << 10, DiskBytes: 1 << 40, Accel: "tcg"}

// fleetServer is one server of a fleet.
type fleetServer struct {
	name   string
	url    string
	node   string
	st     *sqlite.Store
	mgr    *session.Manager
	ln     net.Listener
	closed bool
}

// newFleet makes the fleet's store, object store and an admin token;
// close removes it all.
func newFleet(ctx context.Context) (*fleet, error) {
	dir, err := os.MkdirTemp("", "covebench-fleet-")
	if err != nil {
		return nil, err
	}
	f := &fleet{dir: dir, db: filepath.Join(dir, "state.db"), imgDir: filepath.Join(dir, "image"), driver: fake.New(),
		log: slog.New(slog.DiscardHandler), memMiB: 64}
	f.images = benchImages{f.imgDir}
	if err := f.init(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return f, nil
}

func (f *fleet) init(ctx context.Context) error {
	if err := os.MkdirAll(f.imgDir, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"rootfs.raw", "vmlinux", "initrd"} {
		if err := os.WriteFile(filepath.Join(f.imgDir, name), nil, 0o644); err != nil {
			return err
		}
	}
	objs, err := objstore.OpenDir(filepath.Join(f.dir, "objects"))
	if err != nil {
		return err
	}
	if f.objects, err = cas.New(cas.Config{Objects: objs}); err != nil {
		return err
	}
	return f.admin(ctx)
}

// admin makes the fleet's admin user and its token.
func (f *fleet) admin(ctx context.Context) error {
	st, err := sqlite.Open(ctx, f.db)
	if err != nil {
		return err
	}
	defer st.Close()
	ids := &identity.Directory{Store: st}
	if _, err := ids.AddUser(ctx, api.CreateUserRequest{Name: "bench", Kind: api.UserAdmin}); err != nil {
		return err
	}
	tok, err := ids.CreateToken(ctx, api.CreateTokenRequest{Name: "bench", User: "bench"})
	if err != nil {
		return err
	}
	f.token = tok.Secret
	return nil
}

func (f *fleet) close() {
	if !f.keep {
		os.RemoveAll(f.dir)
	}
}

// server starts server name with its embedded node; heartbeat and grace,
// when not 0, start its heartbeats and its sweeper.
func (f *fleet) server(ctx context.Context, name string, heartbeat, grace time.Duration) (*fleetServer, error) {
	st, err := sqlite.Open(ctx, f.db)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		st.Close()
		return nil, err
	}
	s := &fleetServer{name: name, url: "http://" + ln.Addr().String(), st: st, ln: ln}
	n, err := session.RegisterEmbeddedNode(ctx, st, name, fleetCapacity)
	if err == nil {
		err = session.AdvertiseNode(ctx, st, n.ID, s.url)
	}
	if err != nil {
		s.close()
		return nil, err
	}
	s.node = n.ID
	cfg := session.Config{Store: st, Driver: f.driver, Images: f.images, Dir: filepath.Join(f.dir, name),
		TemplateDir: filepath.Join(f.dir, name, "templates"), DefaultMemoryMiB: f.memMiB, Objects: f.objects,
		Node: n.ID, Route: true, ServerID: name, Log: f.log, NodeHeartbeat: heartbeat, NodeGrace: grace,
		Admission: session.Admission{HostMemoryMiB: int(fleetCapacity.MemoryMiB), HostCPUs: fleetCapacity.VCPUs}}
	if heartbeat > 0 {
		cfg.NodeProbe = func(context.Context) (store.NodeCapacity, error) { return fleetCapacity, nil }
	}
	if s.mgr, err = session.New(cfg); err != nil {
		s.close()
		return nil, err
	}
	if err := s.mgr.Recover(ctx); err != nil {
		s.close()
		return nil, err
	}
	// crosswake backdates a node's heartbeat past the grace: this server
	// has seen the store all along.
	s.mgr.StoreSeenSince(time.Now().Add(-24 * time.Hour))
	srv := apiserver.New(apiserver.Config{Sessions: s.mgr, Log: f.log, Nodes: s.mgr, Router: routing.New(st, n.ID),
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{Store: st})})
	go func() { _ = http.Serve(ln, srv.Handler()) }()
	return s, nil
}

// client is a client of s with a connection pool of its own, as a
// separate client process would have.
func (f *fleet) client(s *fleetServer) *api.Client { return f.clientAt(s.url) }

// clientAt is a client of the server at url with a connection pool of
// its own.
func (f *fleet) clientAt(url string) *api.Client {
	c := api.NewClient(url, f.token)
	c.HTTP = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	return c
}

// close stops s as a process that dies would: its listener, its loops
// (heartbeats included), its hold on its VMs, which keep running.
func (s *fleetServer) close() {
	if s.closed {
		return
	}
	s.closed = true
	s.ln.Close()
	if s.mgr != nil {
		s.mgr.Close()
	}
	s.st.Close()
}

// stop stops s's VMs too.
func (s *fleetServer) stop() {
	if s.mgr != nil && !s.closed {
		s.mgr.StopAll(context.Background())
	}
	s.close()
}

// nodeLossRows measures how soon a dead node's parked sessions can be
// woken elsewhere, n times: node B (a server that heartbeats every
// heartbeat) holds a parked session, stored; B's server stops (its
// heartbeats with it); server A sweeps every third of grace. From B's
// last heartbeat (as recorded): until the sweeper marks B dead, and
// until a wake through A, tried every 10 ms, brings the session back on
// A (from the object store).
func nodeLossRows(n int, heartbeat, grace time.Duration) ([]row, error) {
	if n <= 0 {
		return nil, fmt.Errorf("nodeloss: %d samples", n)
	}
	ctx := context.Background()
	f, err := newFleet(ctx)
	if err != nil {
		return nil, fmt.Errorf("nodeloss: %w", err)
	}
	defer f.close()
	a, err := f.server(ctx, "bench-a", heartbeat, grace)
	if err != nil {
		return nil, fmt.Errorf("nodeloss: %w", err)
	}
	defer a.stop()
	ca := f.client(a)
	dead := row{name: fmt.Sprintf("last heartbeat → node marked dead (grace %v, sweep every %v)", grace, (grace / 3).Round(time.Millisecond)), unit: "ms"}
	woken := row{name: "last heartbeat → its parked session running on another node (wake retried every 10 ms)", unit: "ms"}
	wake := row{name: "that wake alone: moved, fetched from the object store, restored (fake VMM)", unit: "ms"}
	for i := range n {
		b, err := f.server(ctx, fmt.Sprintf("bench-b%d", i), heartbeat, grace)
		if err != nil {
			return nil, fmt.Errorf("nodeloss: %w", err)
		}
		if _, err := ca.CordonNode(ctx, a.node); err != nil {
			b.stop()
			return nil, fmt.Errorf("nodeloss: %w", err)
		}
		cb := f.client(b)
		s, err := cb.CreateSession(ctx, api.CreateSessionRequest{})
		if err == nil && s.Node != b.node {
			err = fmt.Errorf("placed on %s, not B", s.Node)
		}
		if err == nil {
			_, err = ca.UncordonNode(ctx, a.node)
		}
		if err == nil {
			_, err = cb.ParkSession(ctx, s.ID)
		}
		for err == nil {
			var got api.Session
			if got, err = cb.GetSession(ctx, s.ID); err == nil && got.Stored {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err != nil {
			b.stop()
			return nil, fmt.Errorf("nodeloss: sample %d: %w", i, err)
		}
		// B stops at a random point of A's sweep period, as a real
		// node would (each sample would otherwise start just after the
		// sweep that ended the last one, in the same phase).
		time.Sleep(rand.N(grace / 3))
		b.close()
		nb, err := a.st.GetNode(ctx, b.node)
		if err != nil {
			return nil, fmt.Errorf("nodeloss: %w", err)
		}
		last := nb.HeartbeatAt
		var markedAt time.Time
		for {
			now := time.Now()
			if markedAt.IsZero() {
				if nb, err := a.st.GetNode(ctx, b.node); err == nil && nb.Dead {
					markedAt = now
				}
			}
			if !markedAt.IsZero() {
				t := time.Now()
				w, err := ca.WakeSession(ctx, s.ID)
				if err == nil && w.Node == a.node && w.State == api.StateRunning {
					wake.samples = append(wake.samples, ms(time.Since(t)))
					woken.samples = append(woken.samples, ms(time.Since(last)))
					dead.samples = append(dead.samples, ms(markedAt.Sub(last)))
					break
				}
			}
			if time.Since(last) > 10*grace+time.Minute {
				return nil, fmt.Errorf("nodeloss: sample %d: the session did not wake on A within %v of B's last heartbeat", i, 10*grace+time.Minute)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := ca.DeleteSession(ctx, s.ID); err != nil {
			return nil, fmt.Errorf("nodeloss: %w", err)
		}
	}
	return []row{dead, woken, wake}, nil
}

// listPage is the page size of apiload's lists (GET /v1/sessions?limit).
const listPage = 50

// pageStart is where apiload's list page starts: 0 for the first,
// listPage for the second.
func pageStart(second bool) int {
	if second {
		return listPage
	}
	return 0
}

// apiLoadRows measures inspect, list and an exec round trip under
// clients concurrent clients, half through each of two servers, each
// with a connection pool of its own, over sessions sessions spread over
// both nodes: each client runs rounds of one inspect and one exec of a
// random session (so half of them are routed to the other server) and
// one page of the list (listPage sessions). The fake VMM: the exec's guest answers at once.
func apiLoadRows(clients, rounds, sessions int) ([]row, error) {
	if clients <= 0 || rounds <= 0 || sessions <= 0 {
		return nil, fmt.Errorf("apiload: %d clients, %d rounds, %d sessions", clients, rounds, sessions)
	}
	ctx := context.Background()
	f, err := newFleet(ctx)
	if err != nil {
		return nil, fmt.Errorf("apiload: %w", err)
	}
	defer f.close()
	var servers []*fleetServer
	for _, name := range []string{"bench-a", "bench-b"} {
		s, err := f.server(ctx, name, 0, 0)
		if err != nil {
			return nil, fmt.Errorf("apiload: %w", err)
		}
		defer s.stop()
		servers = append(servers, s)
	}
	var ids []string
	for i := range sessions {
		s, err := f.client(servers[i%2]).CreateSession(ctx, api.CreateSessionRequest{})
		if err != nil {
			return nil, fmt.Errorf("apiload: create: %w", err)
		}
		ids = append(ids, s.ID)
		defer f.client(servers[0]).DeleteSession(context.Background(), s.ID)
	}
	var (
		mu                  sync.Mutex
		inspect, list, exec []float64
		firstErr            error
		wg                  sync.WaitGroup
	)
	start := make(chan struct{})
	began := time.Now()
	for i := range clients {
		c := f.client(servers[i%2])
		wg.Go(func() {
			<-start
			var in, li, ex []float64
			after := "" // the list page asked for: the first, then the second, in turn
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			var err error
			for range rounds {
				id := ids[rng.IntN(len(ids))]
				t := time.Now()
				if _, err = c.GetSession(ctx, id); err != nil {
					break
				}
				in = append(in, ms(time.Since(t)))
				// A page of the list: the first, or the one after it
				// (the first's next token, from this client's first).
				t = time.Now()
				var page []api.Session
				var next string
				if page, next, err = c.ListSessionsPage(ctx, after, listPage); err != nil {
					break
				}
				if want := min(listPage, len(ids)-pageStart(after != "")); len(page) != want {
					err = fmt.Errorf("list: a page of %d sessions, want %d", len(page), want)
					break
				}
				li = append(li, ms(time.Since(t)))
				if after == "" {
					after = next
				} else {
					after = ""
				}
				t = time.Now()
				var res *api.ExecResult
				if res, err = c.Exec(ctx, id, api.ExecRequest{Argv: []string{"echo", "load"}}); err == nil && string(res.Stdout) != "load\n" {
					err = fmt.Errorf("exec: %q", res.Stdout)
				}
				if err != nil {
					break
				}
				ex = append(ex, ms(time.Since(t)))
			}
			mu.Lock()
			defer mu.Unlock()
			inspect, list, exec = append(inspect, in...), append(list, li...), append(exec, ex...)
			if err != nil && firstErr == nil {
				firstErr = err
			}
		})
	}
	close(start)
	wg.Wait()
	took := time.Since(began)
	if firstErr != nil {
		return nil, fmt.Errorf("apiload: %w", firstErr)
	}
	cells := func(s []float64) []string {
		return []string{fmt.Sprint(len(s)), fmt.Sprintf("%.1f ms", pct(s, 0.5)), fmt.Sprintf("p99 %.1f ms", pct(s, 0.99)), "–", "–"}
	}
	tag := fmt.Sprintf(" (%d clients across 2 servers)", clients)
	return []row{
		{name: "inspect, half routed" + tag, cells: cells(inspect)},
		{name: fmt.Sprintf("list, a page of %d of %d sessions (first and second in turn)", listPage, sessions) + tag, cells: cells(list)},
		{name: "exec round trip (echo), half routed" + tag, cells: cells(exec)},
		{name: "calls per second, all three" + tag, cells: []string{fmt.Sprint(len(inspect) + len(list) + len(exec)),
			fmt.Sprintf("%.0f/s", float64(len(inspect)+len(list)+len(exec))/took.Seconds()), "–", "–", "–"}},
	}, nil
}

// crossWakeRows measures a cross-host wake with real VMs: n times, a
// session (tiny) made on node B and parked there, its snapshot stored in
// objects (S3); B marked dead; then a wake through server A, whose node
// has none of the session's files (its own sessions dir): the session
// moves to A, its snapshot is fetched from the object store and
// restored; timed until its first exec (through A) answers. Two
// in-process servers over one SQLite file in home, driver and images as
// the rest of the bench's.
func crossWakeRows(ctx context.Context, home string, driver vmm.Driver, images session.Images, objects session.SnapshotStore, log *slog.Logger, n int) ([]row, error) {
	if n <= 0 {
		return nil, fmt.Errorf("crosswake: %d samples", n)
	}
	dir := filepath.Join(home, "crosswake")
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, err
	}
	f := &fleet{dir: dir, db: filepath.Join(dir, "state.db"), driver: driver, images: images, objects: objects, log: log}
	defer f.close()
	if err := f.admin(ctx); err != nil {
		return nil, fmt.Errorf("crosswake: %w", err)
	}
	a, err := f.server(ctx, "bench-a", 0, time.Hour)
	if err != nil {
		return nil, fmt.Errorf("crosswake: %w", err)
	}
	defer a.stop()
	b, err := f.server(ctx, "bench-b", 0, 0)
	if err != nil {
		return nil, fmt.Errorf("crosswake: %w", err)
	}
	defer b.stop()
	ca, cb := f.client(a), f.client(b)
	wake := row{name: "cross-host wake (snapshot not on the node: fetched from S3) → first exec, tiny", unit: "ms"}
	only := row{name: "that wake's call alone (move, fetch, restore)", unit: "ms"}
	for i := range n {
		if _, err := ca.CordonNode(ctx, a.node); err != nil {
			return nil, fmt.Errorf("crosswake: %w", err)
		}
		s, err := cb.CreateSession(ctx, api.CreateSessionRequest{})
		if err == nil && s.Node != b.node {
			err = fmt.Errorf("placed on %s, not B", s.Node)
		}
		if err == nil {
			_, err = ca.UncordonNode(ctx, a.node)
		}
		if err == nil {
			_, err = cb.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("echo %d > /root/marker", i)}})
		}
		if err == nil {
			_, err = cb.ParkSession(ctx, s.ID)
		}
		for err == nil {
			var got api.Session
			if got, err = cb.GetSession(ctx, s.ID); err == nil && got.Stored {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err == nil {
			err = a.st.HeartbeatNode(ctx, b.node, time.Now().UTC().Add(-2*time.Hour), fleetCapacity)
		}
		if err == nil && len(a.mgr.SweepNodes(ctx)) != 1 {
			err = errors.New("node B was not marked dead")
		}
		if err != nil {
			return nil, fmt.Errorf("crosswake: sample %d: %w", i, err)
		}
		t := time.Now()
		w, err := ca.WakeSession(ctx, s.ID)
		if err == nil && w.Node != a.node {
			err = fmt.Errorf("woke on %s, not A", w.Node)
		}
		woke := time.Since(t)
		var res *api.ExecResult
		if err == nil {
			res, err = ca.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"cat", "/root/marker"}})
		}
		if err == nil && string(res.Stdout) != fmt.Sprintf("%d\n", i) {
			err = fmt.Errorf("marker %q after the wake", res.Stdout)
		}
		if err != nil {
			return nil, fmt.Errorf("crosswake: sample %d: %w", i, err)
		}
		wake.samples = append(wake.samples, ms(time.Since(t)))
		only.samples = append(only.samples, ms(woke))
		if err := ca.DeleteSession(ctx, s.ID); err != nil {
			return nil, fmt.Errorf("crosswake: %w", err)
		}
		os.RemoveAll(filepath.Join(dir, "bench-b", s.ID)) // B's copy: no one's now
		if err := a.st.HeartbeatNode(ctx, b.node, time.Now().UTC(), fleetCapacity); err != nil {
			return nil, fmt.Errorf("crosswake: %w", err)
		}
	}
	return []row{wake, only}, nil
}
