package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3 is a Store in an S3-compatible bucket, under a key prefix. S3 makes a
// PUT atomic and durable on success, so Put needs no more than one.
type S3 struct {
	client *minio.Client
	bucket string
	prefix string // "" or ending in "/"
	name   string // the URL, for errors
}

// openS3 opens s3://bucket/prefix?endpoint=&region=&insecure=&timeout=.
func openS3(ctx context.Context, u *url.URL) (*S3, error) {
	q := u.Query()
	s := &S3{bucket: u.Host, prefix: strings.Trim(u.Path, "/")}
	if s.prefix != "" {
		s.prefix += "/"
	}
	s.name = redact(u)
	if u.User != nil {
		return nil, fmt.Errorf("objstore: %s: credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or use a credentials file", s.name)
	}
	if s.bucket == "" {
		return nil, fmt.Errorf("objstore: %s: no bucket (want s3://bucket/prefix?endpoint=host:port)", s.name)
	}
	if s.prefix != "" {
		if err := checkKey(strings.TrimSuffix(s.prefix, "/")); err != nil {
			return nil, fmt.Errorf("objstore: %s: prefix: %w", s.name, err)
		}
	}
	endpoint := q.Get("endpoint")
	if endpoint == "" {
		endpoint = "s3.amazonaws.com"
	}
	timeout := 10 * time.Second
	if t := q.Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil {
			return nil, fmt.Errorf("objstore: %s: timeout: %w", s.name, err)
		}
		timeout = d
	}
	insecure := q.Get("insecure") == "1" || q.Get("insecure") == "true"
	creds := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{Filename: os.Getenv("AWS_SHARED_CREDENTIALS_FILE"), Profile: os.Getenv("AWS_PROFILE")},
	})
	client, err := minio.New(endpoint, &minio.Options{
		Creds:        creds,
		Secure:       !insecure,
		Region:       q.Get("region"),
		BucketLookup: minio.BucketLookupPath,
		Transport:    transport(timeout),
	})
	if err != nil {
		return nil, fmt.Errorf("objstore: %s: %w", s.name, err)
	}
	s.client = client
	v, err := creds.GetWithContext(&credentials.CredContext{})
	if err == nil && v.AccessKeyID == "" {
		return nil, fmt.Errorf("objstore: %s: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_SHARED_CREDENTIALS_FILE (profile AWS_PROFILE)", s.name)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.check(cctx, endpoint); err != nil {
		return nil, err
	}
	return s, nil
}

// transport bounds the time to connect and to get response headers, so an
// endpoint that is down or silent fails instead of hanging.
func transport(timeout time.Duration) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext
	t.ResponseHeaderTimeout = timeout
	t.MaxIdleConnsPerHost = 64
	return t
}

// check lists one key of the bucket: it proves the endpoint answers, the
// bucket exists and the credentials are accepted, and says which failed.
func (s *S3) check(ctx context.Context, endpoint string) error {
	var err error
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, MaxKeys: 1}) {
		err = obj.Err
		break
	}
	if err == nil {
		return nil
	}
	where := fmt.Sprintf("endpoint %s, bucket %s", endpoint, s.bucket)
	switch code := minio.ToErrorResponse(err).Code; code {
	case minio.NoSuchBucket:
		return fmt.Errorf("objstore: open %s: bucket %q does not exist at %s", s.name, s.bucket, endpoint)
	case "InvalidAccessKeyId":
		return fmt.Errorf("objstore: open %s: %s: the access key is not known to the server (check AWS_ACCESS_KEY_ID or the credentials file): %w", s.name, where, err)
	case "SignatureDoesNotMatch":
		return fmt.Errorf("objstore: open %s: %s: the secret key is wrong (check AWS_SECRET_ACCESS_KEY or the credentials file): %w", s.name, where, err)
	case "AccessDenied":
		return fmt.Errorf("objstore: open %s: %s: access denied for these credentials: %w", s.name, where, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("objstore: open %s: %s: no answer in time: %w", s.name, where, err)
	}
	var nerr net.Error
	var operr *net.OpError
	if errors.As(err, &operr) || errors.As(err, &nerr) {
		return fmt.Errorf("objstore: open %s: %s unreachable: %w", s.name, endpoint, err)
	}
	return fmt.Errorf("objstore: open %s: %s: %w", s.name, where, err)
}

func (s *S3) String() string { return s.name }

func (s *S3) wrap(op, key string, err error) error {
	switch minio.ToErrorResponse(err).Code {
	case minio.NoSuchKey:
		return fmt.Errorf("objstore: %s %s in %s: %w", op, key, s.name, ErrNotFound)
	}
	return fmt.Errorf("objstore: %s %s in %s: %w", op, key, s.name, err)
}

// Put implements Store.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("objstore: put: %w", err)
	}
	_, err := s.client.PutObject(ctx, s.bucket, s.prefix+key, r, size, minio.PutObjectOptions{
		ContentType:      "application/octet-stream",
		DisableMultipart: size < 64<<20,
	})
	if err != nil {
		return s.wrap("put", key, err)
	}
	return nil
}

// Get implements Store.
func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, fmt.Errorf("objstore: get: %w", err)
	}
	obj, err := s.client.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, s.wrap("get", key, err)
	}
	// The first request goes out on Stat; a missing key shows here.
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		return nil, s.wrap("get", key, err)
	}
	return obj, nil
}

// Stat implements Store.
func (s *S3) Stat(ctx context.Context, key string) (Info, error) {
	if err := checkKey(key); err != nil {
		return Info{}, fmt.Errorf("objstore: stat: %w", err)
	}
	oi, err := s.client.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return Info{}, s.wrap("stat", key, err)
	}
	return Info{Key: key, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// Delete implements Store.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("objstore: delete: %w", err)
	}
	if err := s.client.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{}); err != nil {
		if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
			return nil
		}
		return s.wrap("delete", key, err)
	}
	return nil
}

// List implements Store.
func (s *S3) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := checkPrefix(prefix); err != nil {
		return fmt.Errorf("objstore: list: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the lister when fn fails
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if obj.Err != nil {
			return fmt.Errorf("objstore: list %q in %s: %w", prefix, s.name, obj.Err)
		}
		key := strings.TrimPrefix(obj.Key, s.prefix)
		if strings.HasSuffix(key, "/") {
			continue // a directory marker some servers list
		}
		if err := fn(Info{Key: key, Size: obj.Size, ModTime: obj.LastModified}); err != nil {
			return fmt.Errorf("objstore: list %q in %s: %w", prefix, s.name, err)
		}
	}
	return ctx.Err()
}
