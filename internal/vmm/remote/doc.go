// Package remote carries the vmm seam over a connection: Handler serves a
// node's vmm.Driver (the QEMU driver, or the in-process fake) over HTTP,
// and New gives the server a vmm.Driver (a vmm.Snapshotter,
// vmm.Checkpointer and vmm.Sweeper too) that calls it. Each call is one HTTP/1.1 exchange
// on a connection of its own (a yamux stream of the node's control
// connection, see package nodelink); VMs are named by a ref the node
// gives them.
//
// What cannot be a plain exchange is an upgraded one:
//   - VM.DialAgent upgrades to a byte stream that the node relays to the
//     guest agent's channel, so the agent protocol (and its deadlines)
//     runs end to end over it.
//   - Calls whose arguments hold functions (Snapshotter.Restore's hooks,
//     Checkpointer.Checkpoint's WhilePaused, Driver.KillVMs's match,
//     Sweeper.Sweep's keep) run
//     on a call stream: the node calls each function back over it and
//     waits for its answer, so they run on the server in the order the
//     node's driver calls them, with the VMM process waiting as it would
//     locally.
//   - VM.Done is a long poll, made again after a dropped connection.
//
// Errors cross with their meaning: the API's error envelope, plus the
// names of the sentinel errors they wrap (vmm.ErrNotQcow2,
// vmm.ErrNotRun, context.Canceled...), so errors.Is holds on the server
// as on the node. A caller's cancelled context closes its connection,
// which cancels the call on the node. Every body is bounded (MaxBody).
//
// vmm.Freezer is carried too (the conformance suite checks it), though a
// node's self-fencing freezes its VMs with its own driver: it runs where
// the node's session manager runs, which can no longer reach the servers
// then.
//
// The server is trusted: the node runs what it is asked, with the paths it
// is given (which must be absolute: they are the node's).
package remote
