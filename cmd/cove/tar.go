package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// writeTar writes a tar archive of the local directory dir to w, entries
// named from dir's base name ("d/", "d/a", …). Symlinks are stored as links;
// sockets, devices and pipes are skipped. Owners are not stored, so the
// guest's extractor picks them.
func writeTar(w io.Writer, dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	base := filepath.Base(abs)
	if base == string(filepath.Separator) || base == "." {
		return fmt.Errorf("cannot copy %s: it has no base name", dir)
	}
	tw := tar.NewWriter(w)
	err = filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(abs, p)
		if err != nil {
			return err
		}
		name := path.Join(base, filepath.ToSlash(rel))
		link := ""
		switch mode := info.Mode(); {
		case mode.IsRegular(), mode.IsDir():
		case mode&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		default:
			return nil // sockets, devices, pipes: nothing to copy
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = name
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		// Copy exactly the size in the header, even if the file grew.
		if _, err := io.Copy(tw, io.LimitReader(f, hdr.Size)); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("archive %s: %w", dir, err)
	}
	return tw.Close()
}

// extractTar extracts the tar archive r under the existing directory dest.
// It refuses (and stops at) an entry with an absolute name, a name or
// hard-link target that leaves dest, or a symlink whose target is absolute
// or leaves dest; everything is written through an os.Root, so nothing is
// ever written through a symlink to outside dest either. Regular files,
// directories, symlinks and hard links are extracted with their permission
// bits and modification times; other entry types are skipped.
func extractTar(r io.Reader, dest string) error {
	root, err := os.OpenRoot(dest)
	if err != nil {
		return err
	}
	defer root.Close()

	type dirMeta struct {
		name  string
		perm  fs.FileMode
		mtime time.Time
	}
	var dirs []dirMeta
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		name, err := entryName(hdr.Name)
		if err != nil {
			return err
		}
		perm := hdr.FileInfo().Mode().Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return err
			}
			dirs = append(dirs, dirMeta{name, perm, hdr.ModTime})
		case tar.TypeReg:
			if err := prepareEntry(root, name); err != nil {
				return err
			}
			if err := extractFile(root, name, perm, tr); err != nil {
				return err
			}
			root.Chtimes(name, hdr.ModTime, hdr.ModTime)
		case tar.TypeSymlink:
			if err := checkSymlink(hdr.Name, hdr.Linkname); err != nil {
				return err
			}
			if err := prepareEntry(root, name); err != nil {
				return err
			}
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return err
			}
		case tar.TypeLink:
			target, err := entryName(hdr.Linkname)
			if err != nil {
				return fmt.Errorf("hard link %s: %w", hdr.Name, err)
			}
			if err := prepareEntry(root, name); err != nil {
				return err
			}
			if err := root.Link(target, name); err != nil {
				return err
			}
		default:
			// Devices, pipes and PAX global headers have nothing to extract.
		}
	}
	// Set directory modes last, deepest first, so that a read-only
	// directory did not stop its own entries from being written.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if err := root.Chmod(d.name, d.perm); err != nil {
			return err
		}
		root.Chtimes(d.name, d.mtime, d.mtime)
	}
	return nil
}

// entryName checks a tar entry's name and returns it as a local path
// relative to the extraction directory.
func entryName(n string) (string, error) {
	if n == "" {
		return "", errors.New("archive entry with an empty name")
	}
	if strings.HasPrefix(n, "/") || filepath.IsAbs(n) {
		return "", fmt.Errorf("archive entry %q has an absolute name", n)
	}
	local := filepath.FromSlash(path.Clean(n))
	if !filepath.IsLocal(local) {
		return "", fmt.Errorf("archive entry %q leaves the destination", n)
	}
	return local, nil
}

// checkSymlink refuses a symlink entry whose target is absolute or, taken
// from the link's directory, leaves the extraction directory.
func checkSymlink(name, target string) error {
	if target == "" {
		return fmt.Errorf("archive symlink %q has an empty target", name)
	}
	if strings.HasPrefix(target, "/") || filepath.IsAbs(target) {
		return fmt.Errorf("archive symlink %q points to an absolute path (%s)", name, target)
	}
	resolved := path.Join(path.Dir(path.Clean(name)), target)
	if !filepath.IsLocal(filepath.FromSlash(resolved)) {
		return fmt.Errorf("archive symlink %q points outside the destination (%s)", name, target)
	}
	return nil
}

// prepareEntry creates name's parent directories and removes a symlink or
// file already at name, as tar(1) does, so that the new entry replaces it
// rather than writing through it. A directory there is left, and creating
// the entry then fails.
func prepareEntry(root *os.Root, name string) error {
	if dir := filepath.Dir(name); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return nil
	}
	return root.Remove(name)
}

func extractFile(root *os.Root, name string, perm fs.FileMode, r io.Reader) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("extract %s: %w", name, err)
	}
	if err := f.Chmod(perm); err != nil { // OpenFile's perm is masked by the umask
		f.Close()
		return err
	}
	return f.Close()
}
