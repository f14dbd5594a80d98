// Package egress is the host-side egress proxy of a session: it speaks the
// HTTP proxy protocol on connections the session manager hands it (carried
// from the guest over the agent channel, so the session is known from the
// channel, never from what the guest says), allows only what the session's
// Rules allow (default deny), intercepts HTTPS with a per-installation CA,
// and adds the session owner's credentials to requests bound for their
// hosts, so that no secret ever enters the VM.
//
// Invariants:
//   - A credential's value is only ever written into an upstream request
//     over verified TLS; never over plain HTTP, never in a log line, an error,
//     a decision record or a response the proxy writes itself.
//   - Every allow and deny is reported through Config.OnDecision and logged;
//     each allow is first told to Session.Admit, which may still refuse it
//     (the broker records it in the audit log there).
//   - The proxy never listens: its caller owns the transport.
package egress
