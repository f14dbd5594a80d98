// Package process is the Go protoc makes of process.proto, envd's process
// service (start, connect, list, send input and signals, update a PTY),
// as package e2b's envd handlers encode and decode it.
package process
