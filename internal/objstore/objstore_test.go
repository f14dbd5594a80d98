package objstore_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/objstore/objstoretest"
	"github.com/cove-dev/cove/internal/s3test"
)

func TestMain(m *testing.M) { s3test.Main(m) }

func TestDirConformance(t *testing.T) {
	objstoretest.Run(t, func(t *testing.T) objstore.Store {
		s, err := objstore.Open(context.Background(), "file://"+t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestS3Conformance(t *testing.T) {
	srv := s3test.Shared(t)
	srv.Setenv(t)
	objstoretest.Run(t, func(t *testing.T) objstore.Store {
		// Each test its own prefix in the one bucket.
		prefix := strings.ReplaceAll(t.Name(), "/", "-")
		s, err := objstore.Open(context.Background(), srv.URL(prefix))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// openErr opens url and returns the error text, failing if Open succeeds
// or takes longer than a bound well under a test timeout.
func openErr(t *testing.T, url string) string {
	t.Helper()
	s, err := objstore.Open(context.Background(), url)
	if err == nil {
		t.Fatalf("open %s: succeeded (%s), want an error", url, s)
	}
	t.Logf("open error: %v", err)
	return err.Error()
}

func wantAll(t *testing.T, msg string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("error %q does not mention %q", msg, p)
		}
	}
}

func TestS3WrongSecretKey(t *testing.T) {
	srv := s3test.Shared(t)
	srv.Setenv(t)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key-0000")
	msg := openErr(t, srv.URL("x"))
	wantAll(t, msg, "secret key is wrong", srv.Endpoint, s3test.Bucket)
	if strings.Contains(msg, "not-the-secret-key") || strings.Contains(msg, s3test.SecretKey) {
		t.Errorf("error %q prints a secret", msg)
	}
}

func TestS3UnknownAccessKey(t *testing.T) {
	srv := s3test.Shared(t)
	srv.Setenv(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "nobody")
	msg := openErr(t, srv.URL("x"))
	wantAll(t, msg, "access key", srv.Endpoint, s3test.Bucket)
	if strings.Contains(msg, s3test.SecretKey) {
		t.Errorf("error %q prints the secret", msg)
	}
}

func TestS3NoCredentials(t *testing.T) {
	srv := s3test.Shared(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	wantAll(t, openErr(t, srv.URL("x")), "no S3 credentials", "AWS_ACCESS_KEY_ID")
}

func TestS3CredentialsFile(t *testing.T) {
	srv := s3test.Shared(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	file := filepath.Join(t.TempDir(), "credentials")
	body := "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[cove]\naws_access_key_id = " +
		s3test.AccessKey + "\naws_secret_access_key = " + s3test.SecretKey + "\n"
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", file)
	t.Setenv("AWS_PROFILE", "cove")
	if _, err := objstore.Open(context.Background(), srv.URL("x")); err != nil {
		t.Fatalf("open with profile cove of a credentials file: %v", err)
	}
}

func TestS3MissingBucket(t *testing.T) {
	srv := s3test.Shared(t)
	srv.Setenv(t)
	url := strings.Replace(srv.URL("x"), "s3://"+s3test.Bucket+"/", "s3://no-such-bucket/", 1)
	wantAll(t, openErr(t, url), `bucket "no-such-bucket" does not exist`, srv.Endpoint)
}

func TestS3CredentialsInURLRefused(t *testing.T) {
	wantAll(t, openErr(t, "s3://key:secret@bucket/p?endpoint=127.0.0.1:1"), "do not belong in the URL")
	msg := openErr(t, "s3://key:topsecret@bucket/p?endpoint=127.0.0.1:1")
	if strings.Contains(msg, "topsecret") {
		t.Errorf("error %q prints the secret from the URL", msg)
	}
}

// Nothing listens on the endpoint: Open fails naming it, within its
// timeout (plus slack), not after minutes of retries.
func TestS3Unreachable(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "k")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s")
	addr := closedPort(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := objstore.Open(ctx, "s3://bucket/p?endpoint="+addr+"&region=us-east-1&insecure=1&timeout=3s")
	if err == nil {
		t.Fatal("open of an endpoint where nothing listens succeeded")
	}
	if ctx.Err() != nil {
		t.Fatalf("open did not return within its timeout: %v", err)
	}
	wantAll(t, err.Error(), addr)
	t.Logf("open error: %v", err)
}

// An endpoint that accepts connections and never answers: Open gives up
// after its timeout, naming the endpoint.
func TestS3SilentEndpoint(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "k")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var held []net.Conn // kept open and unanswered until the test ends
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = objstore.Open(ctx, "s3://bucket/p?endpoint="+l.Addr().String()+"&region=us-east-1&insecure=1&timeout=2s")
	if err == nil {
		t.Fatal("open of a silent endpoint succeeded")
	}
	if ctx.Err() != nil {
		t.Fatalf("open did not return within its timeout: %v", err)
	}
	wantAll(t, err.Error(), l.Addr().String(), "bucket")
	t.Logf("open error: %v", err)
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// A Put killed mid-write leaves a temporary file: List skips it, and
// removes it once it is a day old.
func TestDirListRemovesStaleTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := objstore.Open(context.Background(), "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), "a/b", strings.NewReader("b"), 1); err != nil {
		t.Fatal(err)
	}
	stale, young := filepath.Join(dir, "a", ".tmp-stale"), filepath.Join(dir, "a", ".tmp-young")
	for _, p := range []string{stale, young} {
		if err := os.WriteFile(p, []byte("part"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	var keys []string
	if err := s.List(context.Background(), "", func(i objstore.Info) error { keys = append(keys, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "a/b" {
		t.Errorf("list = %q, want [a/b]", keys)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Error("a two-day-old temporary file survived List")
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("a young temporary file (a Put in flight) was removed: %v", err)
	}
}
