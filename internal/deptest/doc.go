// Package deptest holds tests of the repository's own rules: every package
// has one doc comment, the guest agent stays free of server dependencies,
// the session layer and the API server reach VMs only through package
// vmm's interfaces, and no package is a grab-bag named util or common.
package deptest
