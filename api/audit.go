package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// AuditRecord is one entry of the audit log: its index, its RFC 6962 leaf
// hash (hex) and the entry's canonical JSON as logged (time, actor,
// action, target, decision, outcome, ref).
type AuditRecord struct {
	Index    uint64          `json:"index"`
	LeafHash string          `json:"leaf_hash"`
	Entry    json.RawMessage `json:"entry"`
}

// AuditPage is one answer of GET /v1/audit/entries.
type AuditPage struct {
	Entries []AuditRecord `json:"entries"`
	// Next is the index to ask from for the entries after these (the
	// log's size when none are left).
	Next uint64 `json:"next"`
}

// AuditQuery picks entries: from an index on, at most N (0: the server's
// default), of a session (as actor or target), of an actor (user id,
// subject or agent), at or after Since.
type AuditQuery struct {
	From    uint64
	N       int
	Session string
	Actor   string
	Since   time.Time
}

// AuditCheckpoint is the latest signed checkpoint of the log.
type AuditCheckpoint struct {
	Origin string `json:"origin"`
	Size   uint64 `json:"size"`
	Root   string `json:"root"` // hex
	// Note is the signed checkpoint as published (C2SP tlog-checkpoint).
	Note string `json:"note"`
}

// AuditProof proves that an entry is in a checkpoint: the RFC 6962 audit
// path (hex hashes, leaf to root) from its leaf hash to the checkpoint's
// root.
type AuditProof struct {
	Index      uint64          `json:"index"`
	LeafHash   string          `json:"leaf_hash"`
	Hashes     []string        `json:"hashes"`
	Checkpoint AuditCheckpoint `json:"checkpoint"`
}

// AuditKey is the note verifier key of the log's checkpoints.
type AuditKey struct {
	Key string `json:"key"`
}

// AuditEntries lists entries q picks (GET /v1/audit/entries).
func (c *Client) AuditEntries(ctx context.Context, q AuditQuery) (AuditPage, error) {
	v := url.Values{}
	if q.From > 0 {
		v.Set("from", strconv.FormatUint(q.From, 10))
	}
	if q.N > 0 {
		v.Set("n", strconv.Itoa(q.N))
	}
	if q.Session != "" {
		v.Set("session", q.Session)
	}
	if q.Actor != "" {
		v.Set("actor", q.Actor)
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	var page AuditPage
	err := c.doJSON(ctx, http.MethodGet, "/v1/audit/entries", v, nil, &page)
	return page, err
}

// AuditProof returns the inclusion proof of entry index in the latest
// checkpoint; an entry no checkpoint covers yet is an *Error with
// CodeUnavailable (ask again within a second).
func (c *Client) AuditProof(ctx context.Context, index uint64) (AuditProof, error) {
	var p AuditProof
	err := c.doJSON(ctx, http.MethodGet, "/v1/audit/proof/"+strconv.FormatUint(index, 10), nil, nil, &p)
	return p, err
}

// AuditCheckpoint returns the latest signed checkpoint.
func (c *Client) AuditCheckpoint(ctx context.Context) (AuditCheckpoint, error) {
	var cp AuditCheckpoint
	err := c.doJSON(ctx, http.MethodGet, "/v1/audit/checkpoint", nil, nil, &cp)
	return cp, err
}

// AuditKey returns the log's verifier key.
func (c *Client) AuditKey(ctx context.Context) (string, error) {
	var k AuditKey
	err := c.doJSON(ctx, http.MethodGet, "/v1/audit/key", nil, nil, &k)
	return k.Key, err
}

// AuditExport streams the entries from index from on (GET
// /v1/audit/export, NDJSON), calling fn with each in order; with follow,
// it goes on with new entries as they are logged until ctx is done or fn
// returns an error (which it returns). Without follow it returns nil once
// the entries logged when it began are done.
func (c *Client) AuditExport(ctx context.Context, from uint64, follow bool, fn func(AuditRecord) error) error {
	v := url.Values{}
	if from > 0 {
		v.Set("from", strconv.FormatUint(from, 10))
	}
	if follow {
		v.Set("follow", "1")
	}
	resp, err := c.do(ctx, http.MethodGet, "/v1/audit/export", v, nil, "", contentNDJSON)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var rec AuditRecord
		if err := dec.Decode(&rec); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("audit export: read stream: %w", err)
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
}

// AuditWitness is a witness the log hands its checkpoints to (C2SP
// tlog-witness), to be co-signed.
type AuditWitness struct {
	// URL is the witness's base URL; the log posts to URL/add-checkpoint.
	URL string `json:"url"`
	// Key is the witness's cosignature/v1 note verifier key.
	Key string `json:"key"`
	// Name is the key's name (read only).
	Name string `json:"name,omitempty"`
	// Cosigned says whether the latest published checkpoint carries this
	// witness's cosignature (read only).
	Cosigned bool `json:"cosigned"`
}

// AuditWitnesses lists the witnesses (GET /v1/audit/witnesses).
func (c *Client) AuditWitnesses(ctx context.Context) ([]AuditWitness, error) {
	var out []AuditWitness
	err := c.doJSON(ctx, http.MethodGet, "/v1/audit/witnesses", nil, nil, &out)
	return out, err
}

// AddAuditWitness makes the log hand its checkpoints to w from the next one
// on (POST /v1/audit/witnesses); a witness already there by URL gets the
// new key.
func (c *Client) AddAuditWitness(ctx context.Context, w AuditWitness) (AuditWitness, error) {
	var out AuditWitness
	err := c.doJSON(ctx, http.MethodPost, "/v1/audit/witnesses", nil, w, &out)
	return out, err
}

// RemoveAuditWitness stops handing checkpoints to the witness at url
// (DELETE /v1/audit/witnesses?url=); an unknown one is an *Error with
// CodeNotFound.
func (c *Client) RemoveAuditWitness(ctx context.Context, witnessURL string) error {
	return c.doJSON(ctx, http.MethodDelete, "/v1/audit/witnesses", url.Values{"url": {witnessURL}}, nil, nil)
}
