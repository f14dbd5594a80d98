package main

import (
	"archive/tar"
	"bytes"
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
// Everything is written through an os.Root, so no write lands outside
// dest, whatever links are on the way. It refuses (and stops at):
//   - an entry with an absolute name, or a name or hard-link target that
//     leaves dest;
//   - a symlink that leads, or could later lead, outside dest (see
//     checkSymlink), or a symlink placed under another symlink;
//   - a hard link to anything but a regular file (a hard link to a
//     symlink would move the link's relative target);
//   - regular files whose sizes add up to more than maxBytes, when
//     maxBytes > 0.
//
// Regular files, directories, symlinks and hard links are extracted with
// their permission bits and modification times; runs of zeros in a file
// become holes, so a sparse file stays sparse; other entry types are
// skipped. Links are made last, once every file and directory is in
// place: an entry is never written through a link of the same archive.
func extractTar(r io.Reader, dest string, maxBytes int64) error {
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
	var links []*tar.Header
	var total int64
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
			if total += hdr.Size; maxBytes > 0 && total > maxBytes {
				return fmt.Errorf("archive entry %q: %w: the files add up to more than %d bytes", hdr.Name, errTooLarge, maxBytes)
			}
			if err := prepareEntry(root, name); err != nil {
				return err
			}
			if err := extractFile(root, name, perm, tr); err != nil {
				return err
			}
			root.Chtimes(name, hdr.ModTime, hdr.ModTime)
		case tar.TypeSymlink, tar.TypeLink:
			links = append(links, hdr)
		default:
			// Devices, pipes and PAX global headers have nothing to extract.
		}
	}
	for _, hdr := range links {
		if err := extractLink(root, hdr); err != nil {
			return err
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

// errTooLarge marks a download over its size limit.
var errTooLarge = errors.New("over the size limit")

// extractLink makes a symlink or hard link entry.
func extractLink(root *os.Root, hdr *tar.Header) error {
	name, err := entryName(hdr.Name)
	if err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeLink {
		target, err := entryName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link %s: %w", hdr.Name, err)
		}
		fi, err := root.Lstat(target)
		if err != nil {
			return fmt.Errorf("hard link %s: %w", hdr.Name, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("archive hard link %q: its target %s is not a regular file", hdr.Name, hdr.Linkname)
		}
		if err := prepareEntry(root, name); err != nil {
			return err
		}
		return root.Link(target, name)
	}
	if err := prepareEntry(root, name); err != nil {
		return err
	}
	if err := checkSymlink(root, hdr.Name, hdr.Linkname); err != nil {
		return err
	}
	return root.Symlink(hdr.Linkname, name)
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

// checkSymlink refuses a symlink that leads outside the extraction
// directory, or could once the tree around it changes. Judging the
// target's text alone is not enough: with "b -> .." in place, "b/.." is
// above the directory, though the text "a -> b/../../x" reads as "x".
// So the target is walked against the tree as extracted:
//   - it must be relative, and the link must sit in real directories
//     (none of its parents a symlink), so that its ".." steps are known;
//   - ".." may step out of a real directory only, and never out of the
//     extraction directory itself;
//   - once a component is a symlink or does not exist (yet), only names
//     may follow it, no "..": where that component leads is up to the
//     link that is or will be there, which is held to the same rule
//     (extracted by a copy) or was put there by the user.
//
// Later copies into the same directory do not change this: extraction
// never turns a directory into a link, so the real directories the walk
// relied on stay directories.
func checkSymlink(root *os.Root, name, target string) error {
	if target == "" {
		return fmt.Errorf("archive symlink %q has an empty target", name)
	}
	if strings.HasPrefix(target, "/") || filepath.IsAbs(target) {
		return fmt.Errorf("archive symlink %q points to an absolute path (%s)", name, target)
	}
	var cur []string // where the walk is, as components below root
	for _, c := range strings.Split(path.Dir(path.Clean(name)), "/") {
		if c == "." {
			continue
		}
		cur = append(cur, c)
		if !isRealDir(root, cur) {
			return fmt.Errorf("archive symlink %q is under %s, which is not a real directory", name, path.Join(cur...))
		}
	}
	real := true
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			if !real {
				return fmt.Errorf("archive symlink %q steps back out of a symlink or a missing path (%s)", name, target)
			}
			if len(cur) == 0 {
				return fmt.Errorf("archive symlink %q points outside the destination (%s)", name, target)
			}
			cur = cur[:len(cur)-1]
		default:
			cur = append(cur, c)
			real = real && isRealDir(root, cur)
		}
	}
	return nil
}

// isRealDir reports whether the path made of elems, under root, is a
// directory and not a symlink to one.
func isRealDir(root *os.Root, elems []string) bool {
	fi, err := root.Lstat(filepath.Join(elems...))
	return err == nil && fi.IsDir()
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
	if _, err := writeSparse(f, r); err != nil {
		f.Close()
		return fmt.Errorf("extract %s: %w", name, err)
	}
	if err := f.Chmod(perm); err != nil { // OpenFile's perm is masked by the umask
		f.Close()
		return err
	}
	return f.Close()
}

// holeBlock is the size of the zero runs writeSparse leaves as holes: a
// file system block.
const holeBlock = 4 << 10

// writeSparse copies r into the empty file f, leaving every block of zeros
// as a hole: a sparse file in the guest (a truncated 1 GB file holds no
// data) stays sparse on the local disk. It returns the bytes copied.
func writeSparse(f *os.File, r io.Reader) (int64, error) {
	buf := make([]byte, 32*holeBlock)
	var off int64
	for {
		n, rerr := readFull(r, buf)
		b := buf[:n]
		for len(b) > 0 {
			// A run of blocks that are all zeros, or all not.
			zero := isZero(b[:min(len(b), holeBlock)])
			k := 0
			for k < len(b) && isZero(b[k:min(len(b), k+holeBlock)]) == zero {
				k = min(len(b), k+holeBlock)
			}
			if !zero {
				if _, err := f.WriteAt(b[:k], off); err != nil {
					return off, err
				}
			}
			off += int64(k)
			b = b[k:]
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return off, rerr
		}
	}
	// A trailing hole is made by the size alone.
	return off, f.Truncate(off)
}

// readFull reads into buf until it is full or r fails; io.EOF is returned
// as is (io.ReadFull would turn a short end into io.ErrUnexpectedEOF, which
// a truncated stream also reports).
func readFull(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

var zeroBlock [holeBlock]byte

func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }
