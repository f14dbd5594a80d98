// Package s3test runs a real S3-compatible server, SeaweedFS's weed, on
// loopback for tests: built once from the Go module proxy at a pinned
// version and cached under /var/tmp/cove-test, started on free ports with
// a temporary data directory and known credentials, stopped at the end.
package s3test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Module and Version pin the SeaweedFS release the tests run.
const (
	Module  = "github.com/seaweedfs/seaweedfs"
	Version = "v0.0.0-20261109003541-7506e5f91cd6"
)

// CacheDir holds built binaries, one folder per version.
const CacheDir = "/var/tmp/cove-test"

// The credentials the server accepts: test values, not secrets.
const (
	AccessKey = "cove-test-access"
	SecretKey = "cove-test-secret-0123456789abcdef"
	Bucket    = "cove-test"
)

// Server is a running weed server with one bucket, Bucket.
type Server struct {
	Endpoint string // host:port of the S3 API
	dir      string // data directory, removed by Stop
	cmd      *exec.Cmd
	exited   chan struct{} // closed once the process has been waited for
	waitErr  error         // set before exited is closed
	log      string        // the server's output file
	sockets  []string      // files weed makes outside dir, removed by Stop
}

// Binary returns the path of the weed binary, building it first if the
// cache lacks it (minutes; progress goes to progress). Concurrent callers,
// in this process or others, build it once.
func Binary(ctx context.Context, progress io.Writer) (string, error) {
	dir := filepath.Join(CacheDir, "seaweedfs-"+Version)
	bin := filepath.Join(dir, "weed")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(CacheDir, 0o755); err != nil {
		return "", fmt.Errorf("s3test: %w", err)
	}
	lock, err := os.OpenFile(dir+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", fmt.Errorf("s3test: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("s3test: lock %s: %w", lock.Name(), err)
	}
	if _, err := os.Stat(bin); err == nil {
		return bin, nil // built by another process while this one waited
	}
	if err := build(ctx, dir, progress); err != nil {
		return "", fmt.Errorf("s3test: build weed %s: %w", Version, err)
	}
	return bin, nil
}

// build downloads the SeaweedFS module and builds weed inside it, as its
// own main module: 'go install mod@version' refuses a module whose go.mod
// has replace directives, and SeaweedFS's has one.
func build(ctx context.Context, dir string, progress io.Writer) error {
	start := time.Now()
	fmt.Fprintf(progress, "s3test: building SeaweedFS weed %s into %s (once per machine; takes minutes)\n", Version, dir)
	dl := exec.CommandContext(ctx, "go", "mod", "download", "-json", Module+"@"+Version)
	dl.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := dl.Output()
	if err != nil {
		return fmt.Errorf("go mod download: %w: %s", err, stderrOf(err))
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return fmt.Errorf("go mod download: no module directory (%v %s)", err, mod.Error)
	}
	tmp, err := os.MkdirTemp(CacheDir, ".build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	argv := []string{"go", "build", "-v", "-o", filepath.Join(tmp, "weed"), "./weed"}
	if _, err := exec.LookPath("nice"); err == nil {
		// Tests that boot VMs may run beside this build: it yields.
		argv = append([]string{"nice", "-n", "10"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = mod.Dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod -buildvcs=false")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	// go build -v names each package it compiles: count them as progress,
	// and keep the last lines for an error.
	var tail []string
	n := 0
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		n++
		if tail = append(tail, sc.Text()); len(tail) > 20 {
			tail = tail[1:]
		}
		if n%250 == 0 {
			fmt.Fprintf(progress, "s3test: weed build: %d packages, %s\n", n, time.Since(start).Round(time.Second))
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, strings.Join(tail, "\n"))
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	fmt.Fprintf(progress, "s3test: built weed in %s\n", time.Since(start).Round(time.Second))
	return nil
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(bytes.TrimSpace(ee.Stderr))
	}
	return ""
}

// freePorts reserves n distinct loopback ports and releases them for the
// server to take.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Start builds weed if needed and starts 'weed mini' on loopback: master,
// volume, filer and S3 gateway in one process, with no WebDAV, admin UI,
// Iceberg or telemetry. It returns once Bucket exists and answers.
func Start(ctx context.Context, progress io.Writer) (*Server, error) {
	bin, err := Binary(ctx, progress)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cove-s3test-")
	if err != nil {
		return nil, fmt.Errorf("s3test: %w", err)
	}
	s, err := start(ctx, bin, dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func start(ctx context.Context, bin, dir string) (*Server, error) {
	conf := map[string]any{"identities": []any{map[string]any{
		"name":        "cove",
		"credentials": []any{map[string]string{"accessKey": AccessKey, "secretKey": SecretKey}},
		"actions":     []string{"Admin", "Read", "List", "Tagging", "Write"},
	}}}
	b, _ := json.Marshal(conf)
	if err := os.WriteFile(filepath.Join(dir, "s3.json"), b, 0o600); err != nil {
		return nil, fmt.Errorf("s3test: %w", err)
	}
	p, err := freePorts(10)
	if err != nil {
		return nil, fmt.Errorf("s3test: free ports: %w", err)
	}
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		return nil, fmt.Errorf("s3test: %w", err)
	}
	args := []string{"mini",
		"-dir=" + data, "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		"-master.port=" + strconv.Itoa(p[0]), "-master.port.grpc=" + strconv.Itoa(p[1]),
		"-volume.port=" + strconv.Itoa(p[2]), "-volume.port.grpc=" + strconv.Itoa(p[3]),
		"-filer.port=" + strconv.Itoa(p[4]), "-filer.port.grpc=" + strconv.Itoa(p[5]),
		"-s3.port=" + strconv.Itoa(p[6]), "-s3.port.grpc=" + strconv.Itoa(p[7]),
		"-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.config=" + filepath.Join(dir, "s3.json"),
		"-admin.port=" + strconv.Itoa(p[8]), "-admin.port.grpc=" + strconv.Itoa(p[9]), "-admin.port.legacy=0",
		"-webdav=false", "-admin.ui=false", "-master.telemetry=false",
		"-filer.localSocket=" + filepath.Join(dir, "filer.sock"),
		"-s3.localSocket=" + filepath.Join(dir, "s3.sock"),
	}
	logPath := filepath.Join(dir, "weed.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("s3test: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// The server dies with the test binary, even if that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("s3test: start weed: %w", err)
	}
	s := &Server{Endpoint: "127.0.0.1:" + strconv.Itoa(p[6]), dir: dir, cmd: cmd, exited: make(chan struct{}), log: logPath}
	// weed mini puts a gRPC socket per service in /tmp, named by port.
	for _, svc := range []struct {
		name string
		port int
	}{{"master", p[1]}, {"volume", p[3]}, {"filer", p[5]}, {"s3", p[7]}, {"admin", p[9]}} {
		s.sockets = append(s.sockets, fmt.Sprintf("/tmp/seaweedfs-%s-grpc-%d.sock", svc.name, svc.port))
	}
	go func() { s.waitErr = cmd.Wait(); close(s.exited) }()
	if err := s.ready(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// ready waits until the S3 gateway creates Bucket, within a minute: a
// readiness probe, retried while the server starts.
func (s *Server) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c, err := s.Client()
	if err != nil {
		return err
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := c.MakeBucket(ctx, Bucket, minio.MakeBucketOptions{})
		code := minio.ToErrorResponse(err).Code
		if err == nil || code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("s3test: weed exited while starting (%v); its log:\n%s", s.waitErr, s.Log())
		case <-ctx.Done():
			return fmt.Errorf("s3test: weed not ready on %s: %v; its log:\n%s", s.Endpoint, err, s.Log())
		case <-tick.C:
		}
	}
}

// Client returns a minio client with the server's credentials.
func (s *Server) Client() (*minio.Client, error) {
	return minio.New(s.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(AccessKey, SecretKey, ""),
		Region: "us-east-1",
	})
}

// URL is the objstore URL of prefix in Bucket.
func (s *Server) URL(prefix string) string {
	return "s3://" + Bucket + "/" + prefix + "?endpoint=" + s.Endpoint + "&region=us-east-1&insecure=1"
}

// Env is the environment that gives objstore.Open the server's
// credentials.
func (s *Server) Env() map[string]string {
	return map[string]string{"AWS_ACCESS_KEY_ID": AccessKey, "AWS_SECRET_ACCESS_KEY": SecretKey}
}

// Log returns the server's output so far (its last 8 KiB).
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.log)
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	return string(b)
}

// Stop kills the server, waits for it to exit and removes its data and
// sockets.
func (s *Server) Stop() {
	_ = s.cmd.Process.Kill()
	<-s.exited
	os.RemoveAll(s.dir)
	for _, p := range s.sockets {
		os.Remove(p)
	}
}

// CPUTime is the user and system time the server has used so far, read
// from /proc: benchmarks add it to their own to count the whole cost.
func (s *Server) CPUTime() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("s3test: %w", err)
	}
	// Fields after the command name, which ends at the last ')':
	// state is field 3; utime and stime are fields 14 and 15.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("s3test: short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("s3test: /proc stat: %w", err)
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}
