// Package envdpb holds cove's .proto files of envd's services (process
// and filesystem, as the E2B SDKs speak them) and the Go generated from
// them, which package e2b's envd handlers encode and decode with:
// protojson for the Connect JSON codec, proto for the binary one.
//
// go generate ./internal/e2b/envdpb regenerates the Go: protoc from
// Debian's protobuf-compiler and libprotobuf-dev (make deps installs
// them), protoc-gen-go pinned as a tool of this module.
package envdpb

//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --proto_path=. --go_out=. --go_opt=paths=source_relative process/process.proto filesystem/filesystem.proto"
