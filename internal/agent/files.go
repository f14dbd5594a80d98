package agent

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/agentproto"
)

func info(name string, fi fs.FileInfo) *agentproto.FileInfo {
	x := &agentproto.FileInfo{
		Name:    name,
		Size:    fi.Size(),
		Mode:    unixMode(fi.Mode()),
		IsDir:   fi.IsDir(),
		Symlink: fi.Mode()&fs.ModeSymlink != 0,
		ModTime: fi.ModTime().UTC(),
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok { // os's FileInfo has syscall's, not unix's
		x.UID, x.GID = int(st.Uid), int(st.Gid)
	}
	return x
}

// unixMode is m's permission and special bits as a Unix mode (0o4755).
func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= unix.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		u |= unix.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		u |= unix.S_ISVTX
	}
	return u
}

// fileMode is the Unix mode u's permission and special bits (setuid,
// setgid, sticky) as an fs.FileMode. The agent runs as root, so a file it
// writes keeps them: what a guest's files may be is the guest's business.
func fileMode(u uint32) fs.FileMode {
	m := fs.FileMode(u & 0o777)
	if u&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if u&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if u&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

func checkPath(p string) error {
	if !filepath.IsAbs(p) || strings.ContainsRune(p, 0) {
		return fmt.Errorf("path %q: %w", p, os.ErrInvalid)
	}
	return nil
}

// openRegular opens the regular file p for reading, without ever blocking
// on what is not one: opening a FIFO with no writer waits forever, and
// opening a device can have effects. It stats first (following links, as
// the open does) and refuses anything but a regular file; the open itself
// is non-blocking and its result is checked again, in case p was swapped
// for a FIFO in between.
func openRegular(p string) (*os.File, fs.FileInfo, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("read %s: %w", p, errNotRegular)
	}
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	if fi, err = f.Stat(); err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("read %s: %w", p, errNotRegular)
	}
	return f, fi, nil
}

// errNotRegular refuses to read a FIFO, socket, device or directory.
var errNotRegular = fmt.Errorf("not a regular file: %w", os.ErrInvalid)

func readFile(st io.ReadWriter, req agentproto.Request) {
	if err := checkPath(req.Path); err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	f, fi, err := openRegular(req.Path)
	if err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	defer f.Close()
	respond(st, agentproto.Response{Info: info(filepath.Base(req.Path), fi)})
	// To the end, not to the size said: /proc files say 0. A file that
	// keeps growing is bounded by the host (max_size, cove cp --max-size).
	if _, err := io.Copy(agentproto.DataWriter{W: st, Typ: agentproto.FrameData}, f); err != nil {
		return // the stream is cut; the host sees no FrameEOF
	}
	_ = agentproto.WriteFrame(st, agentproto.FrameEOF, nil)
}

func writeFile(st io.ReadWriter, req agentproto.Request) {
	// The data frames always follow; read them all even when failing, so
	// the host's writes never block.
	data := &agentproto.DataReader{R: st}
	err := checkPath(req.Path)
	if err == nil {
		err = putFile(req.Path, fileMode(req.Mode), data)
	}
	_, _ = io.Copy(io.Discard, data)
	if err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	respond(st, agentproto.Response{})
}

// The names of putFile's temporary files start with writeTemp, then
// says whether the file they replace existed.
const (
	writeTemp    = ".cove-write-"
	writeTempNew = writeTemp + "new-"
	writeTempOld = writeTemp + "old-"
)

// putFile writes r to a temporary file beside name and renames it over
// name: a failed write (the guest's disk full, the stream cut) leaves name
// as it was, and removes the parent directories it made.
func putFile(name string, mode fs.FileMode, r io.Reader) error {
	if mode == 0 {
		mode = 0o644
	}
	fi, err := os.Stat(name)
	if err == nil && fi.IsDir() {
		return fmt.Errorf("write %s: is a directory: %w", name, os.ErrInvalid)
	}
	// The temporary file's name says whether name existed: a watch
	// reports the rename as the write of name (and its create if new),
	// as a write in place would be (see dirWatch.event).
	pattern := writeTempNew
	if err == nil {
		pattern = writeTempOld
	}
	undo, err := mkdirAll(filepath.Dir(name))
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	err = func() error {
		tmp, err := os.CreateTemp(filepath.Dir(name), pattern+"*")
		if err != nil {
			return cause(err)
		}
		defer os.Remove(tmp.Name()) // after the rename, a no-op
		if _, err := io.Copy(tmp, r); err != nil {
			tmp.Close()
			return cause(err)
		}
		if err := tmp.Chmod(mode); err != nil {
			tmp.Close()
			return cause(err)
		}
		if err := tmp.Close(); err != nil {
			return cause(err)
		}
		return os.Rename(tmp.Name(), name)
	}()
	if err != nil {
		undo()
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// cause strips a *fs.PathError naming a temporary file, so that the
// message names the path the host asked for.
func cause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// mkdirAll makes dir and its missing parents; undo removes those it made,
// deepest first, as long as they are empty.
func mkdirAll(dir string) (undo func(), err error) {
	var made []string
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			break
		}
		made = append(made, p)
		if p == filepath.Dir(p) {
			break
		}
	}
	undo = func() {
		for _, p := range made {
			_ = os.Remove(p)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		undo()
		return nil, err
	}
	return undo, nil
}

func stat(st io.Writer, req agentproto.Request) {
	if err := checkPath(req.Path); err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	fi, err := os.Lstat(req.Path)
	if err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	respond(st, agentproto.Response{Info: info(filepath.Base(req.Path), fi)})
}

func list(st io.Writer, req agentproto.Request) {
	if err := checkPath(req.Path); err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	ents, err := os.ReadDir(req.Path)
	if err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	files := make([]agentproto.FileInfo, 0, len(ents))
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		files = append(files, *info(e.Name(), fi))
	}
	respond(st, agentproto.Response{Files: files})
}

func mkdir(st io.Writer, req agentproto.Request) {
	if err := checkPath(req.Path); err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	if err := os.MkdirAll(req.Path, 0o755); err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	respond(st, agentproto.Response{})
}

func remove(st io.Writer, req agentproto.Request) {
	if err := checkPath(req.Path); err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	if filepath.Clean(req.Path) == "/" { // "//" and "/tmp/.." too
		respondErr(st, agentproto.CodeInvalid, errors.New("remove /: refused"))
		return
	}
	if _, err := os.Lstat(req.Path); err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	if err := os.RemoveAll(req.Path); err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	respond(st, agentproto.Response{})
}

func tarGet(st io.ReadWriter, req agentproto.Request) {
	if err := checkPath(req.Path); err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	root := filepath.Clean(req.Path)
	if _, err := os.Lstat(root); err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	respond(st, agentproto.Response{})
	w := agentproto.DataWriter{W: st, Typ: agentproto.FrameData}
	tw := tar.NewWriter(w)
	parent := filepath.Dir(root)
	err := filepath.Walk(root, func(p string, fi fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		name, err := filepath.Rel(parent, p)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return nil // sockets and the like are skipped
		}
		hdr.Name = filepath.ToSlash(name)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, _, err := openRegular(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.CopyN(tw, f, fi.Size()); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return // the host sees the stream cut without FrameEOF
	}
	_ = agentproto.WriteFrame(st, agentproto.FrameEOF, nil)
}

func tarPut(st io.ReadWriter, req agentproto.Request) {
	data := &agentproto.DataReader{R: st}
	err := checkPath(req.Path)
	if err == nil {
		err = putTar(filepath.Clean(req.Path), data)
	}
	_, _ = io.Copy(io.Discard, data)
	if err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	respond(st, agentproto.Response{})
}

// putTar extracts the archive r into dir (made if missing), all or
// nothing: the archive is extracted whole into a staging directory inside
// dir (the same file system, so renames work), and only once every entry
// was valid and written are the staged entries renamed into place. A
// garbage or truncated archive, an entry that leaves dir, a full disk or
// a clash with what dir holds leaves dir as it was.
func putTar(dir string, r io.Reader) error {
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return fmt.Errorf("tar put into %s: not a directory: %w", dir, os.ErrInvalid)
	}
	undo, err := mkdirAll(dir)
	if err != nil {
		return fmt.Errorf("tar put into %s: %w", dir, err)
	}
	stage, err := os.MkdirTemp(dir, ".cove-put-*")
	if err != nil {
		undo()
		return fmt.Errorf("tar put into %s: %w", dir, cause(err))
	}
	err = func() error {
		if err := extractStaged(stage, r); err != nil {
			return err
		}
		moves, err := planMerge(stage, dir, stage, nil)
		if err != nil {
			return err
		}
		for _, m := range moves {
			if err := os.Rename(m.from, m.to); err != nil {
				return fmt.Errorf("move %s into place: %w", m.to, cause(err))
			}
		}
		return nil
	}()
	_ = os.RemoveAll(stage)
	if err != nil {
		undo()
		return fmt.Errorf("tar put into %s: %w", dir, err)
	}
	return nil
}

// archiveError is a failure the archive caused: data that is not a tar
// archive or ends early, an entry that leaves the directory or clashes
// with another. The host answers 400.
type archiveError struct{ err error }

func (e *archiveError) Error() string { return e.err.Error() }
func (e *archiveError) Unwrap() error { return e.err }

// entryErr blames the archive for a failure to create an entry, unless the
// guest's disk is full (or failing): that is not the request's fault.
func entryErr(name string, err error) error {
	err = fmt.Errorf("entry %q: %w", name, cause(err))
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.EIO) || errors.Is(err, unix.EROFS) {
		return err
	}
	return &archiveError{err}
}

// archiveReader blames the archive for a read that fails.
type archiveReader struct{ r io.Reader }

func (a archiveReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = &archiveError{fmt.Errorf("read archive: %w", err)}
	}
	return n, err
}

// extractStaged extracts r into the empty directory stage, through an
// os.Root: an entry that goes through one of the archive's own symlinks
// cannot leave stage either. Directories, regular files and symlinks are
// extracted; other entries are skipped.
func extractStaged(stage string, r io.Reader) error {
	root, err := os.OpenRoot(stage)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return &archiveError{fmt.Errorf("read archive: %w", err)}
		}
		name := filepath.Clean(filepath.FromSlash(hdr.Name))
		if name == "." {
			continue // "./": the directory itself
		}
		if !filepath.IsLocal(name) {
			return &archiveError{fmt.Errorf("entry %q escapes the directory: %w", hdr.Name, os.ErrInvalid)}
		}
		if err := extractEntry(root, name, hdr, tr); err != nil {
			return err
		}
	}
}

func extractEntry(root *os.Root, name string, hdr *tar.Header, tr *tar.Reader) error {
	mode := fs.FileMode(hdr.Mode).Perm()
	if hdr.Typeflag == tar.TypeDir {
		if err := root.MkdirAll(name, mode|0o700); err != nil {
			return entryErr(hdr.Name, err)
		}
		return nil
	}
	if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeSymlink {
		return nil
	}
	if dir := filepath.Dir(name); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return entryErr(hdr.Name, err)
		}
	}
	_ = root.Remove(name) // an earlier entry of the same name
	if hdr.Typeflag == tar.TypeSymlink {
		if err := root.Symlink(hdr.Linkname, name); err != nil {
			return entryErr(hdr.Name, err)
		}
		return nil
	}
	f, err := root.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return entryErr(hdr.Name, err)
	}
	_, err = io.Copy(f, archiveReader{tr})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		var ae *archiveError
		if errors.As(err, &ae) {
			return err
		}
		return entryErr(hdr.Name, err)
	}
	return nil
}

type move struct{ from, to string }

// planMerge lists the renames that put the staged tree src into dst,
// appended to moves. A staged entry whose name is free in dst moves
// whole; a staged directory whose name is a directory in dst (or a link to
// one) merges into it; a staged file or link replaces a file or link. A
// file where dst has a directory, or the reverse, refuses the archive
// before anything moved.
func planMerge(src, dst, stage string, moves []move) ([]move, error) {
	ents, err := os.ReadDir(src)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		from, to := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		if to == stage {
			return nil, &archiveError{fmt.Errorf("entry %s: clashes with the staging directory: %w", to, os.ErrInvalid)}
		}
		lfi, err := os.Lstat(to)
		if errors.Is(err, fs.ErrNotExist) {
			moves = append(moves, move{from, to})
			continue
		}
		if err != nil {
			return nil, err
		}
		dstDir := lfi.IsDir()
		if lfi.Mode()&fs.ModeSymlink != 0 && e.IsDir() {
			fi, err := os.Stat(to)
			dstDir = err == nil && fi.IsDir()
		}
		switch {
		case e.IsDir() && dstDir:
			if moves, err = planMerge(from, to, stage, moves); err != nil {
				return nil, err
			}
		case e.IsDir():
			return nil, &archiveError{fmt.Errorf("%s exists and is not a directory: %w", to, os.ErrInvalid)}
		case lfi.IsDir():
			return nil, &archiveError{fmt.Errorf("%s is a directory: %w", to, os.ErrInvalid)}
		default:
			moves = append(moves, move{from, to})
		}
	}
	return moves, nil
}
