package remote

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm"
)

// keepGone is how long the node still answers about a VM whose VMM
// process exited (a Stop is then a no-op, Status an error of the
// driver's), before its ref is forgotten and calls get not_found.
const keepGone = time.Minute

// HandlerConfig wires a Handler.
type HandlerConfig struct {
	// Log receives the calls that failed on the node's side; nil discards.
	Log *slog.Logger
}

// handler serves one driver.
type handler struct {
	d   vmm.Driver
	log *slog.Logger

	mu  sync.Mutex
	vms map[string]vmm.VM // by ref; guarded by mu
}

// Handler serves d to a remote caller (New's Driver) under Prefix: the
// node's end. It keeps the VMs it booted, adopted or restored in a table
// by ref, until their VMM process has been gone a while (keepGone); a
// released VM stays in it, so its caller still learns when it exits.
// Every answer that is not a success carries the API's error envelope
// (with Marks); bad input (malformed or oversized JSON, an unknown field,
// a relative path, an unknown VM ref) is answered 4xx and changes
// nothing.
func Handler(d vmm.Driver, cfg HandlerConfig) http.Handler {
	h := &handler{d: d, log: cfg.Log, vms: map[string]vmm.VM{}}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	route := func(method, path string, fn func(w http.ResponseWriter, r *http.Request) error) {
		mux.HandleFunc(method+" "+Prefix+strings.ReplaceAll(path, "%s", "{ref}"), func(w http.ResponseWriter, r *http.Request) {
			err := fn(w, r)
			if err == nil || errors.Is(err, errAnswered) {
				return
			}
			if code := api.CodeOf(err); code == api.CodeInternal {
				h.log.Warn("remote vmm: call failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeError(w, err)
		})
	}
	route("GET", pathInfo, h.info)
	route("POST", pathBoot, h.boot)
	route("POST", pathAdopt, h.adopt)
	route("POST", pathKillVMs, h.killVMs)
	route("POST", pathSweep, h.sweep)
	route("POST", pathPrewarm, h.prewarm)
	route("POST", pathOverlay, h.overlay)
	route("POST", pathRebase, h.rebase)
	route("POST", pathFlatten, h.flatten)
	route("POST", pathBacking, h.backing)
	route("POST", pathDiff, h.diff)
	route("POST", pathRaw, h.raw)
	route("POST", pathRestore, h.restore)
	route("POST", pathAgent, h.agent)
	route("POST", pathStop, h.stop)
	route("POST", pathRelease, h.release)
	route("GET", pathDone, h.done)
	route("GET", pathConsole, h.console)
	route("GET", pathDiagnose, h.diagnose)
	route("GET", pathStatus, h.status)
	route("POST", pathResume, h.resume)
	route("POST", pathSave, h.save)
	route("POST", pathCheckpoint, h.checkpoint)
	route("GET", pathDisk, h.disk)
	route("POST", pathFreeze, h.freeze)
	route("POST", pathThaw, h.thaw)
	mux.HandleFunc(Prefix, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.CodeNotFound, "%s %s: no such route", r.Method, r.URL.Path))
	})
	return mux
}

// errAnswered is returned by a route that answered (or upgraded) itself.
var errAnswered = errors.New("answered")

func writeError(w http.ResponseWriter, err error) {
	we := encodeError(err)
	writeJSON(w, we.status(), errorResp{Error: *we})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ok answers v, or 204 when v is nil.
func ok(w http.ResponseWriter, v any) error {
	if v == nil {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// decode reads r's JSON body into v: bounded, one value, no unknown
// fields.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if _, big := errors.AsType[*http.MaxBytesError](err); big {
			return api.Errorf(api.CodeTooLarge, "request body over %d bytes", MaxBody)
		}
		return invalid("malformed request body: %v", err)
	}
	if dec.More() {
		return invalid("malformed request body: more than one JSON value")
	}
	return nil
}

// add keeps vm under a new ref and forgets it a while after its VMM
// process exits.
func (h *handler) add(vm vmm.VM) vmInfo {
	var b [12]byte
	_, _ = rand.Read(b[:])
	ref := hex.EncodeToString(b[:])
	h.mu.Lock()
	h.vms[ref] = vm
	h.mu.Unlock()
	go func() {
		<-vm.Done()
		time.Sleep(keepGone)
		h.mu.Lock()
		delete(h.vms, ref)
		h.mu.Unlock()
	}()
	return vmInfo{Ref: ref, Handle: vm.Handle(), PID: vm.PID()}
}

// vm is the VM of the request's ref.
func (h *handler) vm(r *http.Request) (vmm.VM, error) {
	ref := r.PathValue("ref")
	h.mu.Lock()
	vm := h.vms[ref]
	h.mu.Unlock()
	if vm == nil {
		return nil, fmt.Errorf("vm %q: %w", ref, ErrUnknownVM)
	}
	return vm, nil
}

func (h *handler) snapshotter() (vmm.Snapshotter, error) {
	s, ok := h.d.(vmm.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("the node's driver (%T) cannot save or restore VMs: %w", h.d, errors.ErrUnsupported)
	}
	return s, nil
}

func (h *handler) checkpointer() (vmm.Checkpointer, error) {
	c, ok := h.d.(vmm.Checkpointer)
	if !ok {
		return nil, fmt.Errorf("the node's driver (%T) cannot checkpoint VMs: %w", h.d, errors.ErrUnsupported)
	}
	return c, nil
}

func (h *handler) info(w http.ResponseWriter, r *http.Request) error {
	_, snap := h.d.(vmm.Snapshotter)
	_, ck := h.d.(vmm.Checkpointer)
	return ok(w, infoResp{Accel: h.d.Accel(), Snapshotter: snap, Checkpointer: ck})
}

func (h *handler) boot(w http.ResponseWriter, r *http.Request) error {
	var req bootReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := req.Spec.check(); err != nil {
		return err
	}
	vm, err := h.d.Boot(r.Context(), req.Spec.spec())
	if err != nil {
		return err
	}
	return ok(w, h.add(vm))
}

func (h *handler) adopt(w http.ResponseWriter, r *http.Request) error {
	var req adoptReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if len(req.Handle) == 0 {
		return invalid("adopt: no handle")
	}
	vm, err := h.d.Adopt(r.Context(), req.Handle)
	if err != nil && r.Context().Err() == nil {
		// The handle names no VM the driver can take here: garbage, a
		// version it does not know, or a VMM process that is gone.
		return coded{api.Errorf(api.CodeNotFound, "adopt: %v", err), err}
	}
	if err != nil {
		return err
	}
	return ok(w, h.add(vm))
}

func (h *handler) killVMs(w http.ResponseWriter, r *http.Request) error {
	var req killReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := absolute(map[string]string{"dir_root": req.DirRoot}); err != nil {
		return err
	}
	return serveCall(w, r, func(ctx context.Context, c *callbacks) (any, error) {
		pids := h.d.KillVMs(ctx, req.DirRoot, func(id string) bool {
			m, err := c.ask(ctx, callMsg{Call: cbMatch, ID: id})
			return err == nil && m.Match // a caller gone matches nothing more
		})
		return killResp{PIDs: pids}, nil
	})
}

// sweep runs the driver's Sweep, if it is a vmm.Sweeper (else it kills
// nothing), with keep called back.
func (h *handler) sweep(w http.ResponseWriter, r *http.Request) error {
	var req killReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := absolute(map[string]string{"dir_root": req.DirRoot}); err != nil {
		return err
	}
	sw, _ := h.d.(vmm.Sweeper)
	return serveCall(w, r, func(ctx context.Context, c *callbacks) (any, error) {
		if sw == nil {
			return killResp{}, nil
		}
		pids := sw.Sweep(req.DirRoot, func(id string) bool {
			m, err := c.ask(ctx, callMsg{Call: cbKeep, ID: id})
			// A caller gone keeps everything: a sweep kills only what it
			// was told it may.
			return err != nil || m.Match
		})
		return killResp{PIDs: pids}, nil
	})
}

// prewarm passes a hint to a driver that starts VMM processes ahead; it
// answers at once.
func (h *handler) prewarm(w http.ResponseWriter, r *http.Request) error {
	var req prewarmReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.MemoryMiB <= 0 || req.CPUs <= 0 {
		return invalid("prewarm: memory_mib and cpus must be positive")
	}
	if p, ok := h.d.(interface{ Prewarm(memMiB, cpus int) }); ok {
		p.Prewarm(req.MemoryMiB, req.CPUs)
	}
	return ok(w, nil)
}

// format checks a disk format name.
func format(name, f string) error {
	if f != "raw" && f != "qcow2" {
		return invalid("%s: %q: want raw or qcow2", name, f)
	}
	return nil
}

func (h *handler) overlay(w http.ResponseWriter, r *http.Request) error {
	var req overlayReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := errors.Join(absolute(map[string]string{"path": req.Path}), format("backing_format", req.BackingFormat)); err != nil {
		return err
	}
	if req.Backing == "" {
		return invalid("backing: empty")
	}
	return errOr(w, h.d.Disks().Overlay(r.Context(), req.Path, req.Backing, req.BackingFormat))
}

func (h *handler) rebase(w http.ResponseWriter, r *http.Request) error {
	var req rebaseReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Backing == "" {
		// Rest on nothing: only with the data copied in.
		if !req.Copy {
			return invalid("backing: empty without copy")
		}
		if err := absolute(map[string]string{"path": req.Path}); err != nil {
			return err
		}
		return errOr(w, h.d.Disks().Rebase(r.Context(), req.Path, "", "", true))
	}
	if err := errors.Join(absolute(map[string]string{"path": req.Path}), format("backing_format", req.BackingFormat)); err != nil {
		return err
	}
	return errOr(w, h.d.Disks().Rebase(r.Context(), req.Path, req.Backing, req.BackingFormat, req.Copy))
}

func (h *handler) flatten(w http.ResponseWriter, r *http.Request) error {
	var req flattenReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := errors.Join(absolute(map[string]string{"src": req.Src, "dst": req.Dst, "base": req.Base}), format("base_format", req.BaseFormat)); err != nil {
		return err
	}
	return errOr(w, h.d.Disks().Flatten(r.Context(), req.Src, req.Dst, req.Base, req.BaseFormat))
}

func (h *handler) backing(w http.ResponseWriter, r *http.Request) error {
	var req backingReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := absolute(map[string]string{"path": req.Path}); err != nil {
		return err
	}
	file, format, err := h.d.Disks().Backing(r.Context(), req.Path)
	if err != nil {
		return err
	}
	return ok(w, backingResp{File: file, Format: format})
}

// errOr answers err, or 204.
func errOr(w http.ResponseWriter, err error) error {
	if err != nil {
		return err
	}
	return ok(w, nil)
}

func (h *handler) restore(w http.ResponseWriter, r *http.Request) error {
	var req restoreReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := errors.Join(req.Spec.check(), absolute(map[string]string{"state": req.State})); err != nil {
		return err
	}
	snap, err := h.snapshotter()
	if err != nil {
		return err
	}
	return serveCall(w, r, func(ctx context.Context, c *callbacks) (any, error) {
		spec := req.Spec.spec()
		if req.Started {
			spec.Started = func(ctx context.Context, handle []byte) error {
				_, err := c.ask(ctx, callMsg{Call: cbStarted, Handle: handle})
				return err
			}
		}
		if req.BeforeLoad {
			spec.BeforeLoad = func(ctx context.Context) error {
				_, err := c.ask(ctx, callMsg{Call: cbBeforeLoad})
				return err
			}
		}
		if req.BeforeRun {
			spec.BeforeRun = func(ctx context.Context) error {
				_, err := c.ask(ctx, callMsg{Call: cbBeforeRun})
				return err
			}
		}
		vm, stats, err := snap.Restore(ctx, spec, req.State)
		if err != nil {
			return nil, err
		}
		return restoreResp{VM: h.add(vm), Stats: stats}, nil
	})
}

// agent connects to the guest agent and, once connected, upgrades the
// request's connection to carry its bytes both ways until either side
// closes.
func (h *handler) agent(w http.ResponseWriter, r *http.Request) error {
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	if !upgrading(r, protoAgent) {
		return invalid("agent: upgrade to %s", protoAgent)
	}
	ac, err := vm.DialAgent(r.Context())
	if err != nil {
		return err
	}
	conn, brw, err := hijack(w, protoAgent)
	if err != nil {
		ac.Close()
		return err
	}
	go func() {
		_, _ = io.Copy(ac, brw.Reader) // bytes the caller sent early are in brw
		ac.Close()
		conn.Close()
	}()
	_, _ = io.Copy(conn, ac)
	conn.Close()
	ac.Close()
	return errAnswered
}

func (h *handler) stop(w http.ResponseWriter, r *http.Request) error {
	var req stopReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if req.GraceMS > 0 {
		// A dropped connection does not cut the stop short: it ends by
		// force at the caller's deadline.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), time.Duration(req.GraceMS)*time.Millisecond)
		defer cancel()
	}
	return errOr(w, vm.Stop(ctx))
}

func (h *handler) release(w http.ResponseWriter, r *http.Request) error {
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	return errOr(w, vm.Release())
}

// done answers once vm's VMM process exited: a long poll, which the
// caller makes again if the connection drops first.
func (h *handler) done(w http.ResponseWriter, r *http.Request) error {
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	select {
	case <-vm.Done():
		return ok(w, nil)
	case <-r.Context().Done():
		return r.Context().Err()
	}
}

func (h *handler) console(w http.ResponseWriter, r *http.Request) error {
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	return ok(w, consoleResp{Tail: vm.ConsoleTail()})
}

func (h *handler) diagnose(w http.ResponseWriter, r *http.Request) error {
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	return ok(w, diagnoseResp{Line: vm.Diagnose(r.Context())})
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) error {
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	st, err := vm.Status(r.Context())
	if err != nil {
		return err
	}
	return ok(w, statusResp{Status: st})
}

func (h *handler) resume(w http.ResponseWriter, r *http.Request) error {
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	return errOr(w, vm.Resume(r.Context()))
}

func (h *handler) save(w http.ResponseWriter, r *http.Request) error {
	var req saveReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := absolute(map[string]string{"state": req.State}); err != nil {
		return err
	}
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	snap, err := h.snapshotter()
	if err != nil {
		return err
	}
	stats, err := snap.Save(r.Context(), vm, req.State)
	if err != nil {
		return err
	}
	return ok(w, stats)
}

func (h *handler) checkpoint(w http.ResponseWriter, r *http.Request) error {
	var req checkpointReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := absolute(map[string]string{"state": req.State, "new_disk": req.NewDisk}); err != nil {
		return err
	}
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	ck, err := h.checkpointer()
	if err != nil {
		return err
	}
	return serveCall(w, r, func(ctx context.Context, c *callbacks) (any, error) {
		creq := vmm.CheckpointRequest{State: req.State, NewDisk: req.NewDisk}
		if req.WhilePaused {
			creq.WhilePaused = func(ctx context.Context) error {
				_, err := c.ask(ctx, callMsg{Call: cbWhilePaused})
				return err
			}
		}
		stats, err := ck.Checkpoint(ctx, vm, creq)
		if err != nil {
			return nil, err
		}
		return checkpointResp{Stats: stats, Handle: vm.Handle()}, nil
	})
}

func (h *handler) disk(w http.ResponseWriter, r *http.Request) error {
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	ck, err := h.checkpointer()
	if err != nil {
		return err
	}
	d, err := ck.Disk(r.Context(), vm)
	if err != nil {
		return err
	}
	return ok(w, diskResp{Disk: d})
}

func (h *handler) freeze(w http.ResponseWriter, r *http.Request) error {
	return h.freezer(w, r, vmm.Freezer.Freeze)
}

func (h *handler) thaw(w http.ResponseWriter, r *http.Request) error {
	return h.freezer(w, r, vmm.Freezer.Thaw)
}

// freezer runs op, Freeze or Thaw, of the node's driver on the VM r
// names.
func (h *handler) freezer(w http.ResponseWriter, r *http.Request, op func(vmm.Freezer, context.Context, vmm.VM) error) error {
	vm, err := h.vm(r)
	if err != nil {
		return err
	}
	fz, ok := h.d.(vmm.Freezer)
	if !ok {
		return fmt.Errorf("the node's driver (%T) cannot freeze VMs: %w", h.d, errors.ErrUnsupported)
	}
	return errOr(w, op(fz, r.Context(), vm))
}

// upgrading reports whether r asks to upgrade to proto.
func upgrading(r *http.Request, proto string) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), proto) &&
		strings.Contains(strings.ToLower(r.Header.Get("Connection")), "upgrade")
}

// hijack takes r's connection over and answers 101 to proto.
func hijack(w http.ResponseWriter, proto string) (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, nil, fmt.Errorf("remote vmm: the connection cannot be upgraded (%T)", w)
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("remote vmm: upgrade: %w", err)
	}
	_, err = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + proto + "\r\n\r\n")
	if err == nil {
		err = brw.Flush()
	}
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("remote vmm: upgrade: %w", err)
	}
	return conn, brw, nil
}

// Unavailable serves Prefix for a node that has no driver to serve (QEMU
// missing, say): every call is answered 503 with why.
func Unavailable(why string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.CodeUnavailable, "this node runs no VMs: %s", why))
	})
}

func (h *handler) diff(w http.ResponseWriter, r *http.Request) error {
	var req diffReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := absolute(map[string]string{"path": req.Path, "src": req.Src}); err != nil {
		return err
	}
	if req.Backing != "" {
		if err := format("backing_format", req.BackingFormat); err != nil {
			return err
		}
	}
	return errOr(w, h.d.Disks().Diff(r.Context(), req.Path, req.Src, req.Backing, req.BackingFormat))
}

func (h *handler) raw(w http.ResponseWriter, r *http.Request) error {
	var req rawReq
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := errors.Join(absolute(map[string]string{"src": req.Src, "dst": req.Dst}), format("src_format", req.SrcFormat)); err != nil {
		return err
	}
	return errOr(w, h.d.Disks().Raw(r.Context(), req.Src, req.SrcFormat, req.Dst))
}
