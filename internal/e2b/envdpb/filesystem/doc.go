// Package filesystem is the Go protoc makes of filesystem.proto, envd's
// filesystem service (stat, list, make, move, remove and watch), as package
// e2b's envd handlers encode and decode it.
package filesystem
