package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/s3test"
)

// --objects: the default is HOME/objects (file://); an S3 store that
// cannot be used stops the server with an error naming --objects and
// what failed: the endpoint that does not answer, the bucket that is
// missing, the credentials refused.
func TestOpenObjects(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	home := t.TempDir()
	if _, err := openObjects(t.Context(), "", home, log); err != nil {
		t.Fatalf("--objects \"\": %v", err)
	}
	if fi, err := os.Stat(filepath.Join(home, "objects")); err != nil || !fi.IsDir() {
		t.Fatalf("the default object store is not HOME/objects: %v", err)
	}

	srv := s3test.Shared(t)
	srv.Setenv(t)
	if _, err := openObjects(t.Context(), srv.URL("cmd-cove"), home, log); err != nil {
		t.Fatalf("--objects %s: %v", srv.URL("cmd-cove"), err)
	}
	for _, c := range []struct{ url, want string }{
		{"s3://" + s3test.Bucket + "/p?endpoint=127.0.0.1:1&region=us-east-1&insecure=1&timeout=2s", "127.0.0.1:1"},
		{"s3://no-such-bucket/p?endpoint=" + srv.Endpoint + "&region=us-east-1&insecure=1", "no-such-bucket"},
		{"ftp://x/y", "ftp"},
	} {
		_, err := openObjects(t.Context(), c.url, home, log)
		if err == nil || !strings.Contains(err.Error(), "--objects") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--objects %s: %v; want an error naming --objects and %q", c.url, err, c.want)
		}
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "Sekrit-Zq9-not-it")
	_, err := openObjects(t.Context(), srv.URL("cmd-cove"), home, log)
	if err == nil || !strings.Contains(err.Error(), "--objects") || strings.Contains(err.Error(), "Sekrit-Zq9") {
		t.Errorf("--objects with a wrong secret key: %v; want an error naming --objects, without the key", err)
	}
	t.Log(err)
}
