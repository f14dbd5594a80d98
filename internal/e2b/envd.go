package e2b

import (
	"compress/gzip"
	"context"
	"errors"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
	fspb "github.com/cove-dev/cove/internal/e2b/envdpb/filesystem"
)

// homeDir is where relative guest paths and commands without a working
// directory start: the home of root, whom sessions' commands run as.
const homeDir = "/root"

// guestPath makes p absolute and clean for root: relative to homeDir,
// "~" being homeDir.
func guestPath(p string) string { return guestPathIn(homeDir, p) }

// guestPathIn makes p absolute and clean: relative to home, "~" being
// home.
func guestPathIn(home, p string) string {
	switch {
	case p == "" || p == "~":
		return home
	case strings.HasPrefix(p, "~/"):
		p = home + p[1:]
	case !path.IsAbs(p):
		p = path.Join(home, p)
	}
	return path.Clean(p)
}

// isRPC says whether the request is a Connect call (answered with Connect
// errors) rather than one of envd's plain HTTP routes.
func isRPC(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/process.Process/") || strings.HasPrefix(r.URL.Path, "/filesystem.Filesystem/")
}

// serveEnvd checks the access token and that the sandbox runs, then
// serves envd's routes for it. A sandbox that is gone, paused or not
// running answers 502, as E2B's proxy does: the SDK's isRunning() reads
// that as false, and its RPCs as unavailable.
func (s *Server) serveEnvd(w http.ResponseWriter, r *http.Request, id string) {
	if !s.tokenOK(id, r.Header.Get("X-Access-Token")) {
		s.refused(r.Context(), audit.Actor{Kind: audit.ActorAnonymous, Issuer: accessTokenIssuer}, "auth.failed",
			audit.Target{Session: id}, "wrong or missing access token")
		if isRPC(r) {
			writeUnaryError(w, rpcErrorf(codeUnauthenticated, "wrong or missing access token for sandbox %q", id))
		} else {
			writeEnvdError(w, http.StatusUnauthorized, "wrong or missing access token for sandbox %q", id)
		}
		return
	}
	s.serveSandbox(w, r, id)
}

// serveSandbox serves an authorised envd request for sandbox id.
func (s *Server) serveSandbox(w http.ResponseWriter, r *http.Request, id string) {
	ss, err := s.cfg.Sessions.Get(r.Context(), id)
	switch {
	case api.IsCode(err, api.CodeNotFound):
		writeEnvdError(w, http.StatusBadGateway, "sandbox %q not found", id)
		return
	case err != nil:
		status, msg := s.statusOf(r, "envd", err)
		writeEnvdError(w, status, "%s", msg)
		return
	case ss.State != api.StateRunning:
		writeEnvdError(w, http.StatusBadGateway, "sandbox %q is %s, not running: connect to resume it", id, state(ss))
		return
	}
	name, err := requestedUser(r)
	if err != nil {
		// A malformed Authorization names nobody: as an unknown user.
		if isRPC(r) {
			writeUnaryError(w, rpcErrorf(codeUnauthenticated, "%v", err))
		} else {
			writeEnvdError(w, http.StatusUnauthorized, "%v", err)
		}
		return
	}
	u, err := s.resolveUser(r.Context(), id, name)
	var unknown *errUnknownUser
	switch {
	case err == nil:
	case isRPC(r) && errors.As(err, &unknown):
		writeUnaryError(w, rpcErrorf(codeUnauthenticated, "%v", err))
		return
	case isRPC(r):
		writeUnaryError(w, s.asRPC(r, "user "+name, err))
		return
	case errors.As(err, &unknown):
		writeEnvdError(w, http.StatusUnauthorized, "%v", err)
		return
	default:
		s.fileError(w, r, "user "+name, err)
		return
	}
	ctx := context.WithValue(context.WithValue(context.WithValue(r.Context(), sandboxKey{}, id), ownerKey{}, ss.Owner), userKey{}, u)
	s.envd.ServeHTTP(w, r.WithContext(ctx))
}

type (
	sandboxKey struct{}
	ownerKey   struct{}
)

// sandboxID is the sandbox serveEnvd routed the request to.
func sandboxID(r *http.Request) string {
	id, _ := r.Context().Value(sandboxKey{}).(string)
	return id
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusNoContent)
}

// fileError answers a /files error with the status the SDK maps (404
// FileNotFoundError, 400 InvalidArgumentError, 507 NotEnoughSpaceError).
func (s *Server) fileError(w http.ResponseWriter, r *http.Request, what string, err error) {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		writeEnvdError(w, http.StatusRequestEntityTooLarge, "%s: the upload is over the limit of %d bytes", what, mbe.Limit)
		return
	}
	status, msg := s.statusOf(r, what, err)
	writeEnvdError(w, status, "%s", msg)
}

func (s *Server) readFile(w http.ResponseWriter, r *http.Request) {
	id, p := sandboxID(r), s.path(r, r.URL.Query().Get("path"))
	if err := s.announceEnvd(r, "file.read", audit.Target{Path: p}); err != nil {
		s.fileError(w, r, "read "+p, err)
		return
	}
	fi, err := s.cfg.Sessions.Stat(r.Context(), id, p)
	if err != nil {
		s.fileError(w, r, "read "+p, err)
		return
	}
	if fi.IsDir {
		writeEnvdError(w, http.StatusBadRequest, "read %s: is a directory", p)
		return
	}
	if u := userOf(r); u.UID != 0 {
		// The guest's permissions decide: head opens the file as
		// the user.
		if _, err := s.outputAs(r.Context(), id, u, []string{"head", "-c", "0", "--", p}, nil); err != nil {
			s.fileError(w, r, "read "+p, asUserFailed(err))
			return
		}
	}
	rc, err := s.cfg.Sessions.Open(r.Context(), id, p)
	if err != nil {
		s.fileError(w, r, "read "+p, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(p)}))
	if _, err := io.Copy(w, rc); err != nil {
		s.log.WarnContext(r.Context(), "e2b: read file", "session", id, "path", p, "err", err)
	}
}

// uploadLimit notes whether an upload's body passed the limit. The error
// a write fails with then, having come through the session manager and
// the guest agent, no longer carries the *http.MaxBytesError (the
// manager reports a stream the agent could not finish as the agent's
// failure), so the 413 is decided here.
type uploadLimit struct {
	mu  sync.Mutex
	hit *http.MaxBytesError
}

// reader notes in u when r's reads pass its limit.
func (u *uploadLimit) reader(r io.Reader) io.Reader { return &limitNoter{r: r, u: u} }

// or is the limit's error if a body passed it, else err.
func (u *uploadLimit) or(err error) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.hit != nil {
		return u.hit
	}
	return err
}

type limitNoter struct {
	r io.Reader
	u *uploadLimit
}

func (l *limitNoter) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		l.u.mu.Lock()
		l.u.hit = mbe
		l.u.mu.Unlock()
	}
	return n, err
}

// writtenFile is one entry of POST /files' answer.
type writtenFile struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Path string `json:"path"`
}

// writeFiles takes multipart/form-data (each part named "file", its
// filename the destination unless ?path= names it) or an octet-stream
// body (to ?path=, gzip if Content-Encoding says so). Parents are
// created, files replaced.
func (s *Server) writeFiles(w http.ResponseWriter, r *http.Request) {
	id, ctx := sandboxID(r), r.Context()
	if r.ContentLength > s.cfg.MaxFileBytes {
		// Refused before a byte is written. A body of unknown length
		// is cut at the limit instead, also 413: the agent's write (as
		// root) leaves no file then, a user's (cat >) may leave it
		// short.
		writeEnvdError(w, http.StatusRequestEntityTooLarge, "upload of %d bytes: the limit is %d", r.ContentLength, s.cfg.MaxFileBytes)
		return
	}
	for k := range r.Header {
		if strings.HasPrefix(k, "X-Metadata-") {
			// envd 0.6.2's file metadata, which the SDK sends since
			// cove reports 0.6.3: refused rather than dropped.
			writeEnvdError(w, http.StatusBadRequest, "file metadata (%s): cove keeps no metadata of guest files", k)
			return
		}
	}
	lim := &uploadLimit{}
	r.Body = struct {
		io.Reader
		io.Closer
	}{lim.reader(http.MaxBytesReader(w, r.Body, s.cfg.MaxFileBytes)), r.Body}
	dest := r.URL.Query().Get("path")
	var out []writtenFile
	write := func(p string, body io.Reader) bool {
		p = s.path(r, p)
		if err := s.announceEnvd(r, "file.write", audit.Target{Path: p}); err != nil {
			s.fileError(w, r, "write "+p, err)
			return false
		}
		var err error
		if u := userOf(r); u.UID != 0 {
			err = s.writeAs(ctx, id, u, p, body)
		} else {
			err = s.cfg.Sessions.WriteFile(ctx, id, p, 0o644, body)
		}
		if err != nil {
			s.fileError(w, r, "write "+p, lim.or(err))
			return false
		}
		out = append(out, writtenFile{Name: path.Base(p), Type: "file", Path: p})
		return true
	}
	switch mt := mediaType(r); mt {
	case "multipart/form-data":
		mr, err := r.MultipartReader()
		if err != nil {
			writeEnvdError(w, http.StatusBadRequest, "multipart body: %v", err)
			return
		}
		for {
			part, err := mr.NextRawPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				s.fileError(w, r, "multipart body", lim.or(api.Errorf(api.CodeInvalid, "multipart body: %v", err)))
				return
			}
			if part.FormName() != "file" {
				continue
			}
			// The raw filename: Part.FileName keeps only its base.
			_, params, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
			p := dest
			if p == "" {
				p = params["filename"]
			}
			if p == "" {
				writeEnvdError(w, http.StatusBadRequest, "a file part names no destination: send ?path= or a filename")
				return
			}
			if !write(p, part) {
				return
			}
		}
	case "application/octet-stream":
		if dest == "" {
			writeEnvdError(w, http.StatusBadRequest, "an octet-stream upload needs ?path=")
			return
		}
		var body io.Reader = r.Body
		switch enc := r.Header.Get("Content-Encoding"); enc {
		case "", "identity":
		case "gzip":
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				s.fileError(w, r, "gzip body", lim.or(api.Errorf(api.CodeInvalid, "gzip body: %v", err)))
				return
			}
			// The limit holds for what the body inflates to too: a
			// small body must not write a file of any size.
			body = lim.reader(http.MaxBytesReader(w, io.NopCloser(zr), s.cfg.MaxFileBytes))
		default:
			writeEnvdError(w, http.StatusBadRequest, "Content-Encoding %q: want gzip or none", enc)
			return
		}
		if !write(dest, body) {
			return
		}
	default:
		writeEnvdError(w, http.StatusBadRequest, "content type %q: want multipart/form-data or application/octet-stream", mt)
		return
	}
	if len(out) == 0 {
		writeEnvdError(w, http.StatusBadRequest, "no file in the upload: send parts named \"file\"")
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// entryOf is the filesystem.EntryInfo of the guest file p, its owner and
// group named by n.
func entryOf(p string, fi api.FileInfo, n *owners) *fspb.EntryInfo {
	mode := fs.FileMode(fi.Mode & 0o777)
	typ := fspb.FileType_FILE_TYPE_FILE
	switch {
	case fi.Symlink:
		mode |= fs.ModeSymlink
		typ = fspb.FileType_FILE_TYPE_SYMLINK
	case fi.IsDir:
		mode |= fs.ModeDir
		typ = fspb.FileType_FILE_TYPE_DIRECTORY
	}
	return &fspb.EntryInfo{Name: path.Base(p), Type: typ, Path: p, Size: fi.Size, Mode: uint32(mode), Permissions: mode.String(),
		Owner: n.user(fi.UID), Group: n.group(fi.GID), ModifiedTime: timestamppb.New(fi.ModTime)}
}

// owners names the uids and gids of one sandbox's files from its
// /etc/passwd and /etc/group, read once, when a file not root's is
// first named. An id without a name is named by its number.
type owners struct {
	s   *Server
	ctx context.Context
	id  string

	loaded        bool
	users, groups map[int]string
}

func (s *Server) owners(ctx context.Context, id string) *owners {
	return &owners{s: s, ctx: ctx, id: id}
}

func (n *owners) load() {
	if n.loaded {
		return
	}
	n.loaded = true
	n.users, n.groups = idNames(n.s, n.ctx, n.id, "/etc/passwd"), idNames(n.s, n.ctx, n.id, "/etc/group")
}

// idNames reads NAME:x:ID:… lines of a guest file.
func idNames(s *Server, ctx context.Context, id, p string) map[int]string {
	out := map[int]string{}
	b, err := s.guestFile(ctx, id, p)
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(l, ":")
		if len(f) < 3 {
			continue
		}
		if n, err := strconv.Atoi(f[2]); err == nil {
			if _, dup := out[n]; !dup {
				out[n] = f[0]
			}
		}
	}
	return out
}

func (n *owners) user(uid int) string {
	if uid == 0 {
		return "root"
	}
	n.load()
	if name, ok := n.users[uid]; ok {
		return name
	}
	return strconv.Itoa(uid)
}

func (n *owners) group(gid int) string {
	if gid == 0 {
		return "root"
	}
	n.load()
	if name, ok := n.groups[gid]; ok {
		return name
	}
	return strconv.Itoa(gid)
}

// fileVerbs are the audit log's actions of the filesystem calls (those
// of cove's own file routes; a move is a write).
var fileVerbs = map[string]string{"Stat": "file.stat", "ListDir": "file.list", "MakeDir": "file.mkdir", "Remove": "file.remove", "Move": "file.write"}

// fsRequest is the request of a unary filesystem call but the watchers':
// each names a path, a move two.
type fsRequest interface {
	proto.Message
	GetPath() string
}

// filesystemRPC serves the filesystem.Filesystem service (the watches
// in watch.go).
func (s *Server) filesystemRPC(w http.ResponseWriter, r *http.Request) {
	id, ctx, method := sandboxID(r), r.Context(), r.PathValue("method")
	var req proto.Message
	switch method {
	case "WatchDir":
		s.watchDir(w, r)
		return
	case "CreateWatcher", "GetWatcherEvents", "RemoveWatcher":
		s.watcherRPC(w, r, method)
		return
	case "Stat":
		req = &fspb.StatRequest{}
	case "MakeDir":
		req = &fspb.MakeDirRequest{}
	case "Move":
		req = &fspb.MoveRequest{}
	case "ListDir":
		req = &fspb.ListDirRequest{}
	case "Remove":
		req = &fspb.RemoveRequest{}
	default:
		writeUnaryError(w, rpcErrorf(codeUnimplemented, "filesystem.Filesystem/%s is not implemented by cove yet", method))
		return
	}
	c, e := readUnary(r, req)
	if e != nil {
		writeUnaryError(w, e)
		return
	}
	fail := func(what string, err error) { writeUnaryError(w, s.asRPC(r, what, err)) }
	names := s.owners(ctx, id)
	var p string
	if pr, ok := req.(fsRequest); ok {
		p = s.path(r, pr.GetPath())
	}
	verb, target := fileVerbs[method], audit.Target{Path: p}
	if mv, ok := req.(*fspb.MoveRequest); ok {
		target.Path = s.path(r, mv.Source) + " -> " + s.path(r, mv.Destination)
	}
	if err := s.announceEnvd(r, verb, target); err != nil {
		fail(verb, err)
		return
	}
	switch req := req.(type) {
	case *fspb.StatRequest:
		fi, err := s.cfg.Sessions.Stat(ctx, id, p)
		if err != nil {
			fail("stat "+p, err)
			return
		}
		writeUnary(w, c, &fspb.StatResponse{Entry: entryOf(p, fi, names)})
	case *fspb.ListDirRequest:
		out := &fspb.ListDirResponse{}
		if err := s.listDir(ctx, id, p, max(req.Depth, 1), names, &out.Entries); err != nil {
			fail("list "+p, err)
			return
		}
		writeUnary(w, c, out)
	case *fspb.MakeDirRequest:
		if _, err := s.cfg.Sessions.Stat(ctx, id, p); err == nil {
			writeUnaryError(w, rpcErrorf(codeAlreadyExists, "%s already exists", p))
			return
		} else if !api.IsCode(err, api.CodeNotFound) {
			fail("make directory "+p, err)
			return
		}
		if err := s.mkdirAs(ctx, id, userOf(r), p); err != nil {
			fail("make directory "+p, err)
			return
		}
		fi, err := s.cfg.Sessions.Stat(ctx, id, p)
		if err != nil {
			fail("make directory "+p, err)
			return
		}
		writeUnary(w, c, &fspb.MakeDirResponse{Entry: entryOf(p, fi, names)})
	case *fspb.RemoveRequest:
		if _, err := s.cfg.Sessions.Stat(ctx, id, p); err != nil {
			fail("remove "+p, err)
			return
		}
		if err := s.removeAs(ctx, id, userOf(r), p); err != nil {
			fail("remove "+p, err)
			return
		}
		writeUnary(w, c, &fspb.RemoveResponse{})
	case *fspb.MoveRequest:
		src, dst := s.path(r, req.Source), s.path(r, req.Destination)
		if err := s.move(ctx, id, userOf(r), src, dst); err != nil {
			fail("move "+src, err)
			return
		}
		fi, err := s.cfg.Sessions.Stat(ctx, id, dst)
		if err != nil {
			fail("move "+src, err)
			return
		}
		writeUnary(w, c, &fspb.MoveResponse{Entry: entryOf(dst, fi, names)})
	}
}

// listDir appends the entries of dir, and of its subdirectories down to
// depth levels, to out.
func (s *Server) listDir(ctx context.Context, id, dir string, depth uint32, names *owners, out *[]*fspb.EntryInfo) error {
	fis, err := s.cfg.Sessions.ListDir(ctx, id, dir)
	if err != nil {
		return err
	}
	for _, fi := range fis {
		p := path.Join(dir, fi.Name)
		*out = append(*out, entryOf(p, fi, names))
		if fi.IsDir && !fi.Symlink && depth > 1 {
			if err := s.listDir(ctx, id, p, depth-1, names, out); err != nil {
				return err
			}
		}
	}
	return nil
}

// move renames src to dst in the guest with mv, as u: the agent has no
// rename of its own yet.
func (s *Server) move(ctx context.Context, id string, u guestUser, src, dst string) error {
	if _, err := s.cfg.Sessions.Stat(ctx, id, src); err != nil {
		return err
	}
	_, err := s.outputAs(ctx, id, u, []string{"mv", "-f", "--", src, dst}, nil)
	return asUserFailed(err)
}

// mkdirAs makes the directory p and its parents, as u.
func (s *Server) mkdirAs(ctx context.Context, id string, u guestUser, p string) error {
	if u.UID == 0 {
		return s.cfg.Sessions.Mkdir(ctx, id, p)
	}
	_, err := s.outputAs(ctx, id, u, []string{"mkdir", "-p", "--", p}, nil)
	return asUserFailed(err)
}

// removeAs removes p, a directory with what it holds, as u.
func (s *Server) removeAs(ctx context.Context, id string, u guestUser, p string) error {
	if u.UID == 0 {
		return s.cfg.Sessions.Remove(ctx, id, p)
	}
	_, err := s.outputAs(ctx, id, u, []string{"rm", "-rf", "--", p}, nil)
	return asUserFailed(err)
}
