// Package objstore keeps whole objects under keys, in a local directory
// (file://) or an S3-compatible bucket (s3://), behind one small interface.
// It is where snapshots, template versions and images go once they leave a
// host; content addressing and chunking are the business of its callers.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
)

// ErrNotFound is returned (wrapped) by Get and Stat for a key that holds no
// object.
var ErrNotFound = errors.New("object not found")

// Info describes one stored object.
type Info struct {
	Key     string
	Size    int64
	ModTime time.Time // when the object was last written (by Put)
}

// Store keeps objects under keys. Keys are slash-separated relative paths
// ("chunks/ab/ab12…"): no empty, "." or ".." element, no element starting
// with "." (the file store keeps its temporary files under such names), no
// leading or trailing slash.
//
// A Store is safe for concurrent use, also by several processes (or hosts,
// for S3) writing the same key at once.
type Store interface {
	// Put stores size bytes read from r under key, replacing any object
	// there. When Put returns nil the object is durable and whole; until
	// then readers see the old object or none, never a part. A Put that
	// fails leaves no object behind. r must yield exactly size bytes.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Get opens the object under key for reading; ErrNotFound if none.
	// The caller closes the reader; ctx bounds the whole read.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat describes the object under key; ErrNotFound if none.
	Stat(ctx context.Context, key string) (Info, error)
	// Delete removes the object under key. Deleting a key that holds no
	// object is not an error.
	Delete(ctx context.Context, key string) error
	// List calls fn for each object whose key starts with prefix, in no
	// particular order, and stops at fn's first error, which it returns.
	// Objects put or deleted during the walk may or may not be seen.
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// String names the store for logs and errors (its URL, never a secret).
	String() string
}

// Open opens the store a URL names:
//
//	file:///abs/dir                  a local directory (created if missing)
//	s3://bucket/prefix?endpoint=host:port&region=r&insecure=1&timeout=10s
//
// For s3, the credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
// (and AWS_SESSION_TOKEN) or else the shared credentials file
// (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials; profile AWS_PROFILE);
// never from the URL. Open checks that the bucket exists and that the
// credentials are accepted, within timeout (default 10s).
func Open(ctx context.Context, rawURL string) (Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("objstore: parse url: %w", err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("objstore: %s: a file URL has no host: write file:///abs/dir", redact(u))
		}
		return OpenDir(u.Path)
	case "s3":
		return openS3(ctx, u)
	default:
		return nil, fmt.Errorf("objstore: %s: unknown scheme %q (want file or s3)", redact(u), u.Scheme)
	}
}

// redact prints a URL without any user information it carries.
func redact(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

// checkKey enforces the key rules of Store.
func checkKey(key string) error {
	if key == "" {
		return errors.New("empty key")
	}
	for el := range strings.SplitSeq(key, "/") {
		if el == "" || el == "." || el == ".." || strings.HasPrefix(el, ".") {
			return fmt.Errorf("bad key %q: empty, dot or dot-prefixed element", key)
		}
	}
	return nil
}

// checkPrefix allows an empty prefix and a trailing slash; otherwise a
// prefix follows the key rules.
func checkPrefix(prefix string) error {
	p := strings.TrimSuffix(prefix, "/")
	if p == "" {
		if prefix != "" {
			return fmt.Errorf("bad prefix %q", prefix)
		}
		return nil
	}
	return checkKey(p)
}
