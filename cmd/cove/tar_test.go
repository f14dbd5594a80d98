package main

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// entry is one tar entry for a test archive.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func archive(t *testing.T, entries ...entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, ModTime: time.Unix(1700000000, 0)}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

// TestExtractTarRefusesEscapes protects the local machine from archives
// that name paths outside the destination, directly or through links.
func TestExtractTarRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []entry
		wantErr string
	}{
		{"absolute name", []entry{{name: "/tmp/evil"}}, "absolute name"},
		{"dot-dot name", []entry{{name: "../evil"}}, "leaves the destination"},
		{"dot-dot inside name", []entry{{name: "d/../../evil"}}, "leaves the destination"},
		{"absolute symlink", []entry{{name: "l", typ: tar.TypeSymlink, link: "/etc"}}, "absolute path"},
		{"escaping symlink", []entry{{name: "d/l", typ: tar.TypeSymlink, link: "../../evil"}}, "points outside"},
		{"escaping hard link", []entry{{name: "h", typ: tar.TypeLink, link: "../evil"}}, "leaves the destination"},
		{
			// Each link is inside taken alone; together m resolves above
			// the destination. os.Root must refuse to write through it.
			"symlink chain",
			[]entry{
				{name: "a/b/", typ: tar.TypeDir, mode: 0o755},
				{name: "a/b/l", typ: tar.TypeSymlink, link: "../.."},
				{name: "m", typ: tar.TypeSymlink, link: "a/b/l/.."},
				{name: "m/evil", body: "x"},
			},
			"",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dest := filepath.Join(parent, "dest")
			if err := os.Mkdir(dest, 0o755); err != nil {
				t.Fatal(err)
			}
			err := extractTar(archive(t, tt.entries...), dest)
			if err == nil {
				t.Fatal("extractTar accepted an escaping archive")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want it to contain %q", err, tt.wantErr)
			}
			if testing.Verbose() {
				t.Log(err)
			}
			filepath.WalkDir(parent, func(p string, d fs.DirEntry, err error) error {
				if strings.Contains(p, "evil") {
					t.Errorf("%s was written", p)
				}
				return nil
			})
		})
	}
}

// TestExtractTar protects what a good archive becomes: files with their
// modes, directories (read-only ones too), inside symlinks, hard links, and
// a symlink already on disk replaced rather than written through.
func TestExtractTar(t *testing.T) {
	dest := t.TempDir()
	t.Cleanup(func() { os.Chmod(filepath.Join(dest, "d", "ro"), 0o755) })
	if err := os.WriteFile(filepath.Join(dest, "target"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("target", filepath.Join(dest, "was-link")); err != nil {
		t.Fatal(err)
	}
	err := extractTar(archive(t,
		entry{name: "d/", typ: tar.TypeDir, mode: 0o750},
		entry{name: "d/run.sh", body: "#!/bin/sh\n", mode: 0o755},
		entry{name: "d/ro/", typ: tar.TypeDir, mode: 0o555},
		entry{name: "d/ro/f", body: "ro"},
		entry{name: "d/deep/er/f", body: "parents made"},
		entry{name: "d/l", typ: tar.TypeSymlink, link: "run.sh"},
		entry{name: "d/up", typ: tar.TypeSymlink, link: "../target"},
		entry{name: "d/h", typ: tar.TypeLink, link: "d/run.sh"},
		entry{name: "was-link", body: "new"},
		entry{name: "fifo", typ: tar.TypeFifo},
	), dest)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		path string
		mode fs.FileMode
		body string
	}{
		{"d", fs.ModeDir | 0o750, ""},
		{"d/run.sh", 0o755, "#!/bin/sh\n"},
		{"d/ro", fs.ModeDir | 0o555, ""},
		{"d/ro/f", 0o644, "ro"},
		{"d/deep/er/f", 0o644, "parents made"},
		{"d/l", fs.ModeSymlink, ""},
		{"d/up", fs.ModeSymlink, ""},
		{"d/h", 0o755, "#!/bin/sh\n"},
		{"was-link", 0o644, "new"},
		{"target", 0o644, "keep"},
	}
	for _, c := range checks {
		p := filepath.Join(dest, filepath.FromSlash(c.path))
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", c.path, err)
			continue
		}
		mode := fi.Mode()
		if mode&fs.ModeSymlink != 0 {
			mode = fs.ModeSymlink
		}
		if mode != c.mode {
			t.Errorf("%s: mode %v, want %v", c.path, mode, c.mode)
		}
		if c.body != "" {
			if b, _ := os.ReadFile(p); string(b) != c.body {
				t.Errorf("%s: content %q, want %q", c.path, b, c.body)
			}
		}
	}
	if fi, err := os.Stat(filepath.Join(dest, "d", "run.sh")); err != nil || !fi.ModTime().Equal(time.Unix(1700000000, 0)) {
		t.Errorf("run.sh mtime not kept: %v %v", fi.ModTime(), err)
	}
	if _, err := os.Lstat(filepath.Join(dest, "fifo")); err == nil {
		t.Error("fifo was extracted")
	}
}

// TestWriteTarRoundTrip protects directory uploads: names from the base
// name, modes and symlinks kept, extractable by extractTar.
func TestWriteTarRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "proj")
	os.MkdirAll(filepath.Join(src, "sub", "empty"), 0o755)
	os.WriteFile(filepath.Join(src, "a.txt"), []byte("a"), 0o600)
	os.WriteFile(filepath.Join(src, "sub", "run"), []byte("run"), 0o755)
	os.Symlink("../a.txt", filepath.Join(src, "sub", "link"))

	var buf bytes.Buffer
	if err := writeTar(&buf, src); err != nil {
		t.Fatal(err)
	}
	var names []string
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		if hdr.Uid != 0 || hdr.Uname != "" {
			t.Errorf("%s: owner %d/%q stored", hdr.Name, hdr.Uid, hdr.Uname)
		}
		names = append(names, hdr.Name)
	}
	want := "proj/ proj/a.txt proj/sub/ proj/sub/empty/ proj/sub/link proj/sub/run"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("entries %q, want %q", got, want)
	}

	dest := t.TempDir()
	if err := extractTar(&buf, dest); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dest, "proj", "a.txt")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("a.txt: %v %v", fi, err)
	}
	if b, err := os.ReadFile(filepath.Join(dest, "proj", "sub", "link")); err != nil || string(b) != "a" {
		t.Errorf("link reads %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dest, "proj", "sub", "empty")); err != nil || !fi.IsDir() {
		t.Errorf("empty dir: %v", err)
	}
}
