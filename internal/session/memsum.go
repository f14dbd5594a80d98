package session

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// The RAM file's checksum, kept in a parked session's manifest and
// checked before its guest runs again: a RAM file that was truncated,
// overwritten or lost pages is refused rather than woken into a guest with
// memory it never had.
//
// It covers the file's non-zero pages with their offsets (CRC-32C, which
// the CPU computes), so it does not depend on how the file system lays
// out holes and zero pages; only the data extents are read (SEEK_DATA),
// so it costs the pages the guest touched, not its memory size.

// memSumPrefix names the checksum's kind in the manifest.
const memSumPrefix = "crc32c-pages:"

const sumPage = 4096

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// memChecksum computes the checksum of the RAM file at path.
func memChecksum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	size := fi.Size()
	h := crc32.New(castagnoli)
	var zero [sumPage]byte
	buf := make([]byte, 1<<20)
	var offBytes [8]byte
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			return "", fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return "", fmt.Errorf("seek hole: %w", err)
		}
		// Extents start on page boundaries on the file systems cove runs
		// on; round down in case one does not.
		for pos := data &^ (sumPage - 1); pos < hole; {
			n := min(int64(len(buf)), hole-pos)
			got, err := f.ReadAt(buf[:n], pos)
			if err != nil && !(errors.Is(err, io.EOF) && got > 0) {
				return "", fmt.Errorf("read at %d: %w", pos, err)
			}
			for p := 0; p < got; p += sumPage {
				page := buf[p:min(p+sumPage, got)]
				if bytes.Equal(page, zero[:len(page)]) {
					continue
				}
				binary.LittleEndian.PutUint64(offBytes[:], uint64(pos)+uint64(p))
				h.Write(offBytes[:])
				h.Write(page)
			}
			pos += int64(got)
		}
		off = hole
	}
	var sizeBytes [8]byte
	binary.LittleEndian.PutUint64(sizeBytes[:], uint64(size))
	h.Write(sizeBytes[:])
	return memSumPrefix + hex.EncodeToString(h.Sum(nil)), nil
}
