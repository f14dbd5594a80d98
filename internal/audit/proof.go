package audit

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	f_log "github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

const bundleWidth = layout.EntryBundleWidth

// Checkpoint is a signed checkpoint of the log.
type Checkpoint struct {
	Note   []byte // the signed note, as published (C2SP tlog-checkpoint)
	Origin string
	Size   uint64
	Root   []byte
}

// Checkpoint returns the latest published checkpoint, its signature checked.
func (l *Log) Checkpoint(ctx context.Context) (Checkpoint, error) {
	raw, err := l.reader.ReadCheckpoint(ctx)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit: read checkpoint: %w", err)
	}
	return openCheckpoint(raw, l.verifier)
}

func openCheckpoint(raw []byte, v note.Verifier) (Checkpoint, error) {
	cp, _, _, err := f_log.ParseCheckpoint(raw, v.Name(), v)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit: checkpoint: %w", err)
	}
	return Checkpoint{Note: raw, Origin: cp.Origin, Size: cp.Size, Root: cp.Hash}, nil
}

// WaitCheckpoint returns the first published checkpoint whose size is at
// least size, or ctx's error. A checkpoint follows appends by at most the
// checkpoint interval.
func (l *Log) WaitCheckpoint(ctx context.Context, size uint64) (Checkpoint, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		cp, err := l.Checkpoint(ctx)
		if err == nil && cp.Size >= size {
			return cp, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("audit: checkpoint is at size %d, want %d: %w", cp.Size, size, ctx.Err())
			}
			return Checkpoint{}, err
		case <-t.C:
		}
	}
}

// Proof is an inclusion proof of one entry in a signed checkpoint.
type Proof struct {
	Index      uint64
	LeafHash   []byte
	Hashes     [][]byte // RFC 6962 audit path, leaf to root
	Checkpoint Checkpoint
}

// InclusionProof proves the entry at index is in the latest checkpoint. An
// index the checkpoint does not cover yet gives ErrNotCommitted.
func (l *Log) InclusionProof(ctx context.Context, index uint64) (Proof, error) {
	cp, err := l.Checkpoint(ctx)
	if err != nil {
		return Proof{}, err
	}
	if index >= cp.Size {
		return Proof{}, fmt.Errorf("audit: proof of %d in a checkpoint of size %d: %w", index, cp.Size, ErrNotCommitted)
	}
	bundle, err := readBundle(ctx, l.reader.ReadEntryBundle, index/bundleWidth, cp.Size)
	if err != nil {
		return Proof{}, fmt.Errorf("audit: proof of %d: %w", index, err)
	}
	if index%bundleWidth >= uint64(len(bundle)) {
		return Proof{}, fmt.Errorf("audit: proof of %d: bundle holds %d entries", index, len(bundle))
	}
	pb, err := client.NewProofBuilder(ctx, cp.Size, l.reader.ReadTile)
	if err != nil {
		return Proof{}, fmt.Errorf("audit: proof of %d: %w", index, err)
	}
	hashes, err := pb.InclusionProof(ctx, index)
	if err != nil {
		return Proof{}, fmt.Errorf("audit: proof of %d: %w", index, err)
	}
	return Proof{
		Index:      index,
		LeafHash:   rfc6962.DefaultHasher.HashLeaf(bundle[index%bundleWidth]),
		Hashes:     hashes,
		Checkpoint: cp,
	}, nil
}

// Verify checks p with the log's verifier key: the checkpoint's signature,
// and that the audit path leads from the leaf to the checkpoint's root.
// When data is given, it must be the entry's canonical JSON.
func (p Proof) Verify(verifierKey string, data []byte) error {
	v, err := note.NewVerifier(verifierKey)
	if err != nil {
		return fmt.Errorf("audit: verifier key: %w", err)
	}
	cp, err := openCheckpoint(p.Checkpoint.Note, v)
	if err != nil {
		return err
	}
	leaf := p.LeafHash
	if data != nil {
		leaf = rfc6962.DefaultHasher.HashLeaf(data)
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, p.Index, cp.Size, leaf, p.Hashes, cp.Root); err != nil {
		return fmt.Errorf("audit: inclusion of %d in size %d: %w", p.Index, cp.Size, err)
	}
	return nil
}

// readBundle returns the entries of bundle idx in a log of size, trimmed to
// those the size covers.
func readBundle(ctx context.Context, fetch client.EntryBundleFetcherFunc, idx, size uint64) ([][]byte, error) {
	p := layout.PartialTileSize(0, idx, size)
	raw, err := fetch(ctx, idx, p)
	if err != nil {
		return nil, fmt.Errorf("read entry bundle %d: %w", idx, err)
	}
	entries, _, err := parseBundle(raw)
	if err != nil {
		return nil, fmt.Errorf("entry bundle %d: %w", idx, err)
	}
	want := int(p)
	if p == 0 {
		want = bundleWidth
	}
	if len(entries) < want {
		return nil, fmt.Errorf("entry bundle %d holds %d entries, want %d", idx, len(entries), want)
	}
	return entries[:want], nil
}

var errDangling = errors.New("truncated entry")

// parseBundle splits a tlog-tiles entry bundle (each entry a big-endian
// uint16 length and its bytes). On a truncated bundle it returns the
// entries before the break, the offset of the break, and errDangling.
func parseBundle(raw []byte) ([][]byte, int, error) {
	var out [][]byte
	for off := 0; off < len(raw); {
		if off+2 > len(raw) {
			return out, off, fmt.Errorf("%w at byte %d of %d", errDangling, off, len(raw))
		}
		n := int(binary.BigEndian.Uint16(raw[off:]))
		if off+2+n > len(raw) {
			return out, off, fmt.Errorf("%w at byte %d of %d: needs %d bytes", errDangling, off, len(raw), n)
		}
		out = append(out, raw[off+2:off+2+n])
		off += 2 + n
	}
	return out, len(raw), nil
}
