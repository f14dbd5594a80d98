// Package nodelink is the control connection between a node (a VM host
// running 'cove node') and the API servers.
//
// The node dials the server, so a node behind NAT works:
//
//  1. Join, once: POST /v1/nodes/join with the fleet's join token as the
//     bearer token and the node's name, labels and capacity (JoinRequest).
//     The server makes the node's record, or finds it by name, and issues
//     a new credential ("cnode_" and 32 random bytes, base64url); only its
//     SHA-256 is stored (store.Node.CredentialHash), so a rejoin replaces
//     the last one. The node keeps it in HOME/node.credential (0600) and
//     needs the join token no more.
//  2. Connect, and again after every drop (backoff from 0.5 s doubling to
//     30 s, with jitter): GET /v1/nodes/connect, a WebSocket upgrade with
//     the credential as the bearer token. A yamux session runs over the
//     WebSocket's binary messages; either side opens streams, and each
//     stream carries one HTTP/1.1 exchange. The server calls the node's
//     handler through Hub.Client, the node the server's node-facing
//     handler through Agent.Client. A second connection with a node's
//     credential replaces the first.
//  3. Heartbeat: every Heartbeat interval the node POSTs HeartbeatPath
//     with a fresh capacity probe over the connection; the server stores
//     it (store.HeartbeatNode).
//
// A node that runs sessions (AgentConfig.Serves: its own session manager
// over the shared store, cove's API as its Handler) learns its id before
// it starts them (Agent.Join; kept in HOME/node.id) and connects with
// HeaderServes: the server records its own URL (Hub.SetURL) as the
// node's (store.Node.URL), so every server routes calls about the
// node's sessions to it, and it relays them over the connection
// (Hub.Transport). Each heartbeat the server stored is told to the node
// (AgentConfig.OnHeartbeat), which fences its VMs then.
//
// A credential the server no longer knows (the node was removed) is
// answered 401, and the node stops with an error that says to join again:
// a removed node does not come back by itself.
//
// Secrets: the join token and credentials are compared in constant time
// and never logged (Credential redacts itself).
package nodelink
