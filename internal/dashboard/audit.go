package dashboard

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
)

// auditVerdict is what GET /dash/audit/verify answers: whether an audit
// entry is in the log's latest signed checkpoint.
type auditVerdict struct {
	Index uint64 `json:"index"`
	// Verified: the checkpoint's signature checks with the log's key, the
	// entry as listed hashes to its leaf, and the audit path leads from
	// that leaf to the checkpoint's root.
	Verified bool `json:"verified"`
	// Size and Origin are the checkpoint's.
	Size   uint64 `json:"checkpoint_size,omitempty"`
	Origin string `json:"checkpoint_origin,omitempty"`
	// Error says why it is not verified.
	Error string `json:"error,omitempty"`
}

// auditVerify answers GET /dash/audit/verify?index=N for a signed-in
// page. It reads the entry, its inclusion proof and the log's verifier
// key from the API's /v1/audit routes with the cookie's token (so the
// policy decides, as for 'cove audit proof'), and checks them with
// internal/audit, which a page's script could not do without a second
// implementation of signed notes and Merkle proofs. The key comes from
// the same server: this shows the log is consistent with its own key; an
// auditor who keeps the key elsewhere checks with 'cove audit verify'.
func (h *Handler) auditVerify(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	w.Header().Set("Cache-Control", "no-store")
	if !methodAllowed(w, r, "GET only", http.MethodGet) {
		return
	}
	c, err := h.signedIn(w, r)
	if err != nil {
		h.expired(w, r, err)
		return
	}
	idx, err := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeInvalid, "index: want the entry's index, a whole number")
		return
	}
	var key api.AuditKey
	if h.apiGet(w, r, c.Token, "/v1/audit/key", &key) {
		return
	}
	var page api.AuditPage
	if h.apiGet(w, r, c.Token, "/v1/audit/entries?n=1&from="+strconv.FormatUint(idx, 10), &page) {
		return
	}
	if len(page.Entries) == 0 || page.Entries[0].Index != idx {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("audit entry %d: not in the log", idx))
		return
	}
	var p api.AuditProof
	if h.apiGet(w, r, c.Token, "/v1/audit/proof/"+strconv.FormatUint(idx, 10), &p) {
		return
	}
	v := auditVerdict{Index: idx, Size: p.Checkpoint.Size, Origin: p.Checkpoint.Origin}
	if err := verifyEntry(p, page.Entries[0], key.Key); err != nil {
		v.Error = err.Error()
	} else {
		v.Verified = true
	}
	writeJSONBody(w, http.StatusOK, v)
}

// verifyEntry checks that rec, as listed, is the leaf p proves to be in
// its checkpoint, signed with key.
func verifyEntry(p api.AuditProof, rec api.AuditRecord, key string) error {
	leaf, err := hex.DecodeString(p.LeafHash)
	if err != nil {
		return fmt.Errorf("proof: leaf hash: %w", err)
	}
	if listed, err := hex.DecodeString(rec.LeafHash); err != nil || !bytes.Equal(listed, leaf) {
		return fmt.Errorf("the entry's leaf hash %s is not the proof's %s", rec.LeafHash, p.LeafHash)
	}
	ap := audit.Proof{Index: p.Index, LeafHash: leaf, Checkpoint: audit.Checkpoint{Note: []byte(p.Checkpoint.Note)}}
	for _, s := range p.Hashes {
		b, err := hex.DecodeString(s)
		if err != nil {
			return fmt.Errorf("proof: hash: %w", err)
		}
		ap.Hashes = append(ap.Hashes, b)
	}
	// The entry's bytes as listed must hash to the leaf.
	return ap.Verify(key, []byte(rec.Entry))
}

// apiGet asks the API for path with token, through its gate, and decodes
// a 200 into v. Any other answer is written to w as the API gave it, and
// apiGet reports true (done).
func (h *Handler) apiGet(w http.ResponseWriter, r *http.Request, token, path string, v any) bool {
	rec, err := h.callAPI(r.Context(), r, token, path)
	if err != nil {
		writeError(w, http.StatusInternalServerError, api.CodeInternal, err.Error())
		return true
	}
	if rec.code != http.StatusOK {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(rec.code)
		_, _ = w.Write(rec.body.Bytes())
		return true
	}
	if err := json.Unmarshal(rec.body.Bytes(), v); err != nil {
		writeError(w, http.StatusInternalServerError, api.CodeInternal, path+": "+err.Error())
		return true
	}
	return false
}

// callAPI makes a GET of path to the API's handler with token as bearer.
func (h *Handler) callAPI(ctx context.Context, r *http.Request, token, path string) (*recorder, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	req.RemoteAddr, req.Host, req.TLS = r.RemoteAddr, r.Host, r.TLS
	req.Header.Set("Authorization", "Bearer "+token)
	rec := &recorder{header: http.Header{}, code: http.StatusOK}
	h.api.ServeHTTP(rec, req)
	return rec, nil
}
