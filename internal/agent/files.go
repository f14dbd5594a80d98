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

	"github.com/cove-dev/cove/internal/agentproto"
)

func info(name string, fi fs.FileInfo) *agentproto.FileInfo {
	return &agentproto.FileInfo{
		Name:    name,
		Size:    fi.Size(),
		Mode:    uint32(fi.Mode().Perm()),
		IsDir:   fi.IsDir(),
		Symlink: fi.Mode()&fs.ModeSymlink != 0,
		ModTime: fi.ModTime().UTC(),
	}
}

func checkPath(p string) error {
	if !filepath.IsAbs(p) || strings.ContainsRune(p, 0) {
		return fmt.Errorf("path %q: %w", p, os.ErrInvalid)
	}
	return nil
}

func readFile(st io.ReadWriter, req agentproto.Request) {
	if err := checkPath(req.Path); err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	f, err := os.Open(req.Path)
	if err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	if !fi.Mode().IsRegular() {
		respondErr(st, agentproto.CodeInvalid, fmt.Errorf("read %s: not a regular file", req.Path))
		return
	}
	respond(st, agentproto.Response{Info: info(filepath.Base(req.Path), fi)})
	if _, err := io.Copy(agentproto.DataWriter{W: st, Typ: agentproto.FrameData}, f); err != nil {
		return // the stream is cut; the host sees no FrameEOF
	}
	_ = agentproto.WriteFrame(st, agentproto.FrameEOF, nil)
}

func writeFile(st io.ReadWriter, req agentproto.Request) {
	// The data frames always follow; read them all even when failing, so
	// the host's writes never block.
	data := &agentproto.DataReader{R: st}
	err := func() error {
		if err := checkPath(req.Path); err != nil {
			return err
		}
		mode := fs.FileMode(req.Mode).Perm()
		if mode == 0 {
			mode = 0o644
		}
		if err := os.MkdirAll(filepath.Dir(req.Path), 0o755); err != nil {
			return err
		}
		if fi, err := os.Stat(req.Path); err == nil && fi.IsDir() {
			return fmt.Errorf("write %s: is a directory: %w", req.Path, os.ErrInvalid)
		}
		tmp, err := os.CreateTemp(filepath.Dir(req.Path), ".cove-write-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		if _, err := io.Copy(tmp, data); err != nil {
			tmp.Close()
			return err
		}
		if err := tmp.Chmod(mode); err != nil {
			tmp.Close()
			return err
		}
		if err := tmp.Close(); err != nil {
			return err
		}
		return os.Rename(tmp.Name(), req.Path)
	}()
	_, _ = io.Copy(io.Discard, data)
	if err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	respond(st, agentproto.Response{})
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
			f, err := os.Open(p)
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
	err := func() error {
		if err := checkPath(req.Path); err != nil {
			return err
		}
		dir := filepath.Clean(req.Path)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		tr := tar.NewReader(data)
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("tar: %w", err)
			}
			name := filepath.Clean(filepath.FromSlash(hdr.Name))
			if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
				return fmt.Errorf("tar: entry %q escapes %s: %w", hdr.Name, dir, os.ErrInvalid)
			}
			target := filepath.Join(dir, name)
			mode := fs.FileMode(hdr.Mode).Perm()
			switch hdr.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(target, mode|0o700); err != nil {
					return err
				}
			case tar.TypeReg:
				if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
					return err
				}
				_ = os.Remove(target)
				f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
				if err != nil {
					return err
				}
				_, err = io.Copy(f, tr)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
			case tar.TypeSymlink:
				_ = os.Remove(target)
				if err := os.Symlink(hdr.Linkname, target); err != nil {
					return err
				}
			}
		}
	}()
	_, _ = io.Copy(io.Discard, data)
	if err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	respond(st, agentproto.Response{})
}
