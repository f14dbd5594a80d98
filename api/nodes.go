package api

import "time"

// Node states (Node.State): dead if the node stopped heartbeating for
// longer than the server's grace, else draining or cordoned as an
// operator set it, else ready.
const (
	NodeReady    = "ready"
	NodeCordoned = "cordoned"
	NodeDraining = "draining"
	NodeDead     = "dead"
)

// NodeCapacity is what a node reports about its host.
type NodeCapacity struct {
	VCPUs     int   `json:"vcpus"`
	MemoryMiB int64 `json:"memory_mib"`
	// DiskBytes is the bytes free under the node's COVE_HOME.
	DiskBytes int64 `json:"disk_bytes"`
	// Accel is "kvm" or "tcg".
	Accel    string   `json:"accel"`
	CPUModel string   `json:"cpu_model"`
	CPUFlags []string `json:"cpu_flags,omitempty"`
	// QEMUVersion and KernelVersion (the host's): a snapshot restores
	// only on a compatible machine.
	QEMUVersion   string `json:"qemu_version"`
	KernelVersion string `json:"kernel_version"`
	// FenceAfterMS is how long the node goes without a heartbeat before
	// it freezes its VMs (absent: it does not); it is not marked dead
	// before twice that.
	FenceAfterMS int64 `json:"fence_after_ms,omitempty"`
}

// Node is one VM host: the embedded node of a `cove server`, or a `cove
// node` agent that joined.
type Node struct {
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	State    string            `json:"state"`
	Labels   map[string]string `json:"labels,omitempty"`
	Capacity NodeCapacity      `json:"capacity"`
	// Embedded marks the node inside a `cove server` process.
	Embedded bool `json:"embedded"`
	// URL is where the other API servers route the calls of the node's
	// sessions: an embedded node's server (its --advertise-url), or, for
	// a 'cove node' running sessions, the server its control connection
	// is to, which relays them over it; "" for none.
	URL string `json:"url,omitempty"`
	// E2BURL is where they reach its server's E2B API (its
	// --e2b-advertise-url) to route its sandboxes' E2B calls; "" for none.
	E2BURL      string    `json:"e2b_url,omitempty"`
	JoinedAt    time.Time `json:"joined_at"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
	// Sessions counts the sessions the node holds (any state);
	// Running those whose VM runs there now.
	Sessions int `json:"sessions"`
	Running  int `json:"running"`
	// Connected: the node has a control connection to the server that
	// answered (its own embedded node always has).
	Connected bool `json:"connected"`
	// Version is the node agent's version, which GET /v1/nodes/{id}
	// asks the node over its connection; "" in lists, for a node not
	// connected to the server that answered, and for embedded nodes.
	Version string `json:"version,omitempty"`
}

// NodeList is the answer of GET /v1/nodes.
type NodeList struct {
	Nodes []Node `json:"nodes"`
}

// DrainResult is the answer of POST /v1/nodes/{id}/drain: the node, now
// draining, and how many of its running sessions the drain parked.
type DrainResult struct {
	Node   Node `json:"node"`
	Parked int  `json:"parked"`
	// Errors are the sessions the drain could not park, and why.
	Errors []string `json:"errors,omitempty"`
}
