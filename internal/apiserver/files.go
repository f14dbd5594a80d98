package apiserver

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/cove-dev/cove/api"
)

const tarType = "application/x-tar"

// fileList is the answer of GET /v1/sessions/{id}/files/list.
type fileList struct {
	Files []api.FileInfo `json:"files"`
}

// getFile serves a regular file's bytes, or with format=tar an archive of
// a file or directory. With max_size, an answer is at most that many
// bytes: a file the guest says is larger is refused (413) before any byte,
// and a stream that runs past it (an archive, or a guest that said less
// than it sends) is cut, so that the client sees a broken answer.
func (s *Server) getFile(w http.ResponseWriter, r *http.Request) (err error) {
	p, err := guestPath(r)
	if err != nil {
		return err
	}
	maxSize, err := maxSizeParam(r)
	if err != nil {
		return err
	}
	liftDeadlines(w)
	ctx, id := r.Context(), r.PathValue("id")
	if maxSize > 0 && r.URL.Query().Get("format") != "tar" {
		fi, err := s.sessions.Stat(ctx, id, p)
		if err != nil {
			return err
		}
		if !fi.IsDir && fi.Size > maxSize {
			return api.Errorf(api.CodeTooLarge, "%s is %d bytes, over max_size %d", p, fi.Size, maxSize)
		}
	}
	var rc io.ReadCloser
	contentType := "application/octet-stream"
	switch f := r.URL.Query().Get("format"); f {
	case "", "raw":
		rc, err = s.sessions.Open(ctx, id, p)
	case "tar":
		rc, err = s.sessions.GetTar(ctx, id, p)
		contentType = tarType
	default:
		return api.Errorf(api.CodeInvalid, "format: %q is not raw or tar", f)
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	// What reaches the client, counted and hashed for the audit log.
	moved := newDigest()
	defer func() { s.outcome(ctx, Action{Verb: "file.read", SessionID: id, Path: p}, moved.outcome(err)) }()
	out := io.MultiWriter(w, moved)
	// A failure that shows on the first read is still a proper error answer.
	br := bufio.NewReaderSize(rc, 64<<10)
	if _, err := br.Peek(1); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(http.StatusOK)
	if maxSize == 0 {
		if _, err := io.Copy(out, br); err != nil {
			return fmt.Errorf("file.read: copy %s: %w", p, err)
		}
		return nil
	}
	if _, err := io.Copy(out, io.LimitReader(br, maxSize)); err != nil {
		return fmt.Errorf("file.read: copy %s: %w", p, err)
	}
	// One byte more, not sent, says whether the answer was whole.
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("file.read: %s: the answer runs past max_size %d, or failed; cut", p, maxSize)
	}
	return nil
}

// maxSizeParam reads the optional max_size query parameter: a byte count,
// 0 (or absent) for no limit.
func maxSizeParam(r *http.Request) (int64, error) {
	v := r.URL.Query().Get("max_size")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, api.Errorf(api.CodeInvalid, "max_size %q: want a byte count", v)
	}
	return n, nil
}

// putFile writes a file from the raw body, or with Content-Type
// application/x-tar extracts the body into the directory path.
func (s *Server) putFile(w http.ResponseWriter, r *http.Request) error {
	p, err := guestPath(r)
	if err != nil {
		return err
	}
	tooLarge := api.Errorf(api.CodeTooLarge, "file body is larger than the limit of %d bytes", s.maxFileBytes)
	if r.ContentLength > s.maxFileBytes {
		return tooLarge
	}
	liftDeadlines(w)
	// What the client sent, counted and hashed for the audit log.
	moved := newDigest()
	body := &limitReader{r: moved.reader(http.MaxBytesReader(unwrap(w), r.Body, s.maxFileBytes))}
	ctx, id := r.Context(), r.PathValue("id")
	if mediaType(r) == tarType {
		err = s.sessions.PutTar(ctx, id, p, body)
	} else {
		var mode uint32
		if mode, err = fileMode(r); err != nil {
			return err
		}
		err = s.sessions.WriteFile(ctx, id, p, mode, body)
	}
	s.outcome(ctx, Action{Verb: "file.write", SessionID: id, Path: p}, moved.outcome(err))
	if body.hit {
		return tooLarge
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// limitReader notes whether its http.MaxBytesReader hit the limit, whatever
// the reader's consumer does with the error.
type limitReader struct {
	r   io.Reader
	hit bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		l.hit = true
	}
	return n, err
}

func (s *Server) removeFile(w http.ResponseWriter, r *http.Request) error {
	p, err := guestPath(r)
	if err != nil {
		return err
	}
	if err := s.sessions.Remove(r.Context(), r.PathValue("id"), p); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) statFile(w http.ResponseWriter, r *http.Request) error {
	p, err := guestPath(r)
	if err != nil {
		return err
	}
	fi, err := s.sessions.Stat(r.Context(), r.PathValue("id"), p)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, fi)
}

func (s *Server) listDir(w http.ResponseWriter, r *http.Request) error {
	p, err := guestPath(r)
	if err != nil {
		return err
	}
	list, err := s.sessions.ListDir(r.Context(), r.PathValue("id"), p)
	if err != nil {
		return err
	}
	if list == nil {
		list = []api.FileInfo{}
	}
	return writeJSON(w, http.StatusOK, fileList{list})
}

func (s *Server) mkdir(w http.ResponseWriter, r *http.Request) error {
	p, err := guestPath(r)
	if err != nil {
		return err
	}
	if err := s.sessions.Mkdir(r.Context(), r.PathValue("id"), p); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
