package qemu_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmm/qemu/qemutest"
	"github.com/cove-dev/cove/internal/vmtest"
)

// guestSh runs script with sh in the guest and returns its output (stdout
// and stderr together) and exit code; a guest that does not answer within
// two minutes fails the test.
func guestSh(t *testing.T, c *agentproto.Client, script string, env ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := c.Exec(ctx, agentproto.Exec{Argv: []string{"sh", "-c", script}, Env: env})
	if err != nil {
		t.Fatalf("exec %q: %v", script, err)
	}
	var stdout, stderr bytes.Buffer
	done := make(chan struct{})
	go func() { _, _ = io.Copy(&stderr, p.Stderr()); close(done) }()
	_, _ = io.Copy(&stdout, p.Stdout())
	<-done
	exit, err := p.Wait()
	if err != nil {
		t.Fatalf("exec %q: %v", script, err)
	}
	return strings.TrimSpace(stdout.String() + stderr.String()), exit.Code
}

// token is a random string that a probe's answer carries, so that no
// other text can pass for it.
func token(t *testing.T) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "cove-probe-" + hex.EncodeToString(b)
}

// TestJailOfARunningVM boots one guest and checks, on its real QEMU process
// and from inside it, the jail the driver promises every VM: QEMU runs as
// the unprivileged user with no capability, in cgroups of its own that
// hold the VM's limits (read back through the kernel, on cgroup v1 or v2,
// whichever the host has), and the guest has no network egress. The
// cgroups go when the VM stops.
func TestJailOfARunningVM(t *testing.T) {
	d := newDriver(t)
	vm, c, spec := bootTiny(t, d)
	defer c.Close()
	// The QEMU process as the host sees it: found by its command line,
	// not by the PID the driver hands out.
	pid := qemu.PIDOf(filepath.Dir(spec.Dir), spec.ID)
	if pid == 0 || pid != vm.PID() {
		t.Fatalf("QEMU process of %s by its command line: %d, the driver says %d", spec.ID, pid, vm.PID())
	}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || !strings.Contains(filepath.Base(exe), "qemu-system") {
		t.Fatalf("process %d runs %q (%v), want QEMU itself, not a wrapper", pid, exe, err)
	}

	t.Run("QEMU runs as the unprivileged user", func(t *testing.T) {
		u, err := user.Lookup("cove-vm")
		if err != nil {
			t.Fatalf("user cove-vm: %v (make deps creates it)", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cr, err := qemutest.ReadCreds(pid)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("QEMU %d: uids %v gids %v groups %v CapEff %s", pid, cr.UIDs, cr.GIDs, cr.Groups, cr.CapEff)
		if cr.UIDs != [4]int{uid, uid, uid, uid} || cr.GIDs != [4]int{gid, gid, gid, gid} {
			t.Errorf("QEMU runs with uids %v and gids %v, want cove-vm's %d and %d in every slot (real, effective, saved, fs)", cr.UIDs, cr.GIDs, uid, gid)
		}
		if len(cr.Groups) != 0 {
			t.Errorf("QEMU keeps supplementary groups %v (root's, say), want none", cr.Groups)
		}
		if cr.CapEff != "0000000000000000" {
			t.Errorf("QEMU has effective capabilities %s, want none", cr.CapEff)
		}
	})

	var dirs map[string]string
	t.Run("cgroup limits", func(t *testing.T) {
		l, err := qemutest.ReadLimits(pid)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("QEMU %d: %+v", pid, l)
		dirs = l.Dirs
		// 256 MiB of RAM + 256 MiB of TCG translation cache + 256 MiB for
		// QEMU itself; one CPU's quota; 512 tasks.
		want := qemutest.Limits{Memory: strconv.Itoa((256 + 256 + 256) << 20), CPU: "100000 100000", Pids: "512"}
		if l.Memory != want.Memory || l.CPU != want.CPU || l.Pids != want.Pids {
			t.Errorf("limits in force on QEMU: memory %s, cpu %s, pids %s; want %s, %s, %s",
				l.Memory, l.CPU, l.Pids, want.Memory, want.CPU, want.Pids)
		}
		for _, ctrl := range []string{"memory", "cpu", "pids"} {
			dir := l.Dirs[ctrl]
			if filepath.Base(dir) != spec.ID || filepath.Base(filepath.Dir(dir)) != "cove" {
				t.Errorf("QEMU's %s cgroup is %q, want cove/%s: one of its own", ctrl, dir, spec.ID)
			}
		}
	})

	t.Run("no egress", func(t *testing.T) { noEgress(t, c) })

	if err := vm.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	for ctrl, dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s cgroup %s of the stopped VM: %v, want it removed", ctrl, dir, err)
		}
	}
}

// noEgress checks from inside a guest that nothing it sends leaves it. The
// guest gets the address and route QEMU's user network would give it, and
// asks a server on the host for a token over HTTP, through QEMU's
// gateway (10.0.2.2, which is the host's loopback) and at the host's own
// address: both fail, and the server is never asked. The same probe is
// first shown to work: it fetches a token from a server in the guest, and
// the guest's packets reach QEMU's network (its gateway answers a ping,
// which QEMU answers itself even when restricted).
func noEgress(t *testing.T, c *agentproto.Client) {
	hostToken, guestToken := token(t), token(t)
	var asked atomic.Int64
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		fmt.Fprintln(w, hostToken)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	// The host's server answers a fetch that does reach it.
	resp, err := http.Get("http://127.0.0.1:" + port + "/probe")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.TrimSpace(string(body)) != hostToken || asked.Load() != 1 {
		t.Fatalf("the host's probe server answered %q (asked %d times), want its token once", body, asked.Load())
	}

	out, code := guestSh(t, c, `set -e
dev=$(ls /sys/class/net | grep -vx lo | head -n 1)
[ -n "$dev" ] || { echo "no network device"; exit 1; }
ip link set "$dev" up
ip addr add 10.0.2.15/24 dev "$dev"
ip route add default via 10.0.2.2
mkdir -p /tmp/www
echo "$TOKEN" > /tmp/www/probe
httpd -p 8080 -h /tmp/www </dev/null >/dev/null 2>&1
echo "$dev up"`, "TOKEN="+guestToken)
	if code != 0 {
		t.Fatalf("guest network setup: exit %d: %s", code, out)
	}
	t.Logf("guest: %s", out)

	// The probe: an HTTP request through busybox nc (the tiny image's
	// static wget crashes resolving), 5 s to connect.
	probe := func(host, port string) (string, int) {
		return guestSh(t, c, `printf 'GET /probe HTTP/1.0\r\n\r\n' | nc -w 5 `+host+" "+port)
	}
	// Positive controls: the probe fetches a token where a path exists (the
	// guest's own server on loopback and on its network address; it may
	// take a moment to listen), and the network device reaches QEMU.
	for _, host := range []string{"127.0.0.1", "10.0.2.15"} {
		var out string
		deadline := time.Now().Add(time.Minute)
		for {
			var code int
			if out, code = probe(host, "8080"); code == 0 && strings.Contains(out, guestToken) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the probe of the guest's server at %s:8080: %q, want its token: the probe cannot tell a working connection", host, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if out, code := guestSh(t, c, "ping -c 1 -W 10 10.0.2.2"); code != 0 {
		t.Fatalf("the guest's ping of QEMU's gateway: exit %d: %s; want an answer: the guest's network is not up, so a failed connection out proves nothing", code, out)
	}

	hosts := []string{"10.0.2.2"}
	if ip := hostAddr(); ip != "" {
		hosts = append(hosts, ip)
	} else {
		t.Logf("the host has no non-loopback IPv4 address: only the gateway is probed")
	}
	for _, host := range hosts {
		out, code := probe(host, port)
		t.Logf("guest → %s:%s: exit %d: %s", host, port, code, out)
		if code == 0 || strings.Contains(out, hostToken) {
			t.Errorf("the guest reached the host's server at %s:%s (exit %d: %q): it has network egress", host, port, code, out)
		}
	}
	// A connection that got through would have been answered before the
	// guest's wget returned: the count is final.
	if n := asked.Load(); n != 1 {
		t.Errorf("the host's server was asked %d times from the guest", n-1)
	}
}

// hostAddr is an IPv4 address of the host's that is not loopback, or "".
func hostAddr() string {
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 || i.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLinkLocalUnicast() {
				return n.IP.String()
			}
		}
	}
	return ""
}

// TestRefusesRootVMs: a root server with no unprivileged user to run QEMU
// as (none named, one that does not exist, root itself) refuses to start,
// naming the flag that allows it and how to create the user; with the flag
// it starts, and its QEMU runs as root. TestJailOfARunningVM checks the
// user QEMU runs as when the user exists.
func TestRefusesRootVMs(t *testing.T) {
	vmtest.Require(t)
	if os.Geteuid() != 0 {
		testenv.Skipf(t, "QEMU's user changes only under a root server: run the tests as root")
	}
	if _, err := qemu.New(qemu.Config{Accel: "tcg", User: "cove-vm"}); err != nil {
		t.Fatalf("with the user present: %v", err)
	}
	for _, tc := range []struct{ user, why string }{
		{"cove-no-such-user", "user cove-no-such-user does not exist"},
		{"", "no unprivileged user is named for it"},
		{"root", "user root is root (uid 0)"},
	} {
		_, err := qemu.New(qemu.Config{Accel: "tcg", User: tc.user})
		if err == nil {
			t.Errorf("user %q: the driver starts, and would run QEMU as root", tc.user)
			continue
		}
		msg := err.Error()
		for _, want := range []string{"refusing to run VMs as root", tc.why, "--allow-root-vms", "useradd --system", "--qemu-user"} {
			if !strings.Contains(msg, want) {
				t.Errorf("user %q: the refusal %q does not say %q", tc.user, msg, want)
			}
		}
	}

	// With the flag, QEMU runs as root: a spare (a QEMU process without a
	// guest) shows it.
	spares := filepath.Join(vmtest.Dir(t), "spares")
	d, err := qemu.New(qemu.Config{Accel: os.Getenv("COVE_ACCEL"), User: "cove-no-such-user", AllowRootVMs: true, SpareDir: spares})
	if err != nil {
		t.Fatalf("with --allow-root-vms: %v", err)
	}
	t.Cleanup(d.Close)
	d.Prewarm(256, 1)
	waitSpare(t, d, vmm.Spec{MemoryMiB: 256, CPUs: 1})
	procs := vmtest.QEMUProcs(spares)
	if len(procs) != 1 {
		t.Fatalf("QEMU processes under %s: %v, want the one spare", spares, procs)
	}
	for p := range procs {
		cr, err := qemutest.ReadCreds(p)
		if err != nil {
			t.Fatal(err)
		}
		if cr.UIDs != [4]int{} {
			t.Errorf("with --allow-root-vms QEMU runs with uids %v, want root", cr.UIDs)
		}
	}
}
