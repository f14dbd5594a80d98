package envdpb_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cove-dev/cove/internal/e2b/envdpb/filesystem"
	"github.com/cove-dev/cove/internal/e2b/envdpb/process"
)

// TestProtoMatchesGenerated compiles the .proto files (in Go, no protoc)
// and compares each with the descriptor the generated Go carries: a
// .proto edited without regenerating, or generated code edited by hand,
// fails here.
func TestProtoMatchesGenerated(t *testing.T) {
	generated := map[string]protoreflect.FileDescriptor{
		"process/process.proto":       process.File_process_process_proto,
		"filesystem/filesystem.proto": filesystem.File_filesystem_filesystem_proto,
	}
	c := protocompile.Compiler{Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{ImportPaths: []string{"."}})}
	for name, gen := range generated {
		files, err := c.Compile(context.Background(), name)
		if err != nil {
			t.Fatalf("compile %s: %v", name, err)
		}
		want := protodesc.ToFileDescriptorProto(files[0])
		got := protodesc.ToFileDescriptorProto(gen)
		want.SourceCodeInfo, got.SourceCodeInfo = nil, nil
		if !proto.Equal(want, got) {
			t.Errorf("%s and its generated Go disagree: run go generate ./internal/e2b/envdpb\n.proto:    %v\ngenerated: %v", name, want, got)
		}
	}
}

// TestProtoHasEveryFile guards the test above: each .proto in the tree
// is one it compares.
func TestProtoHasEveryFile(t *testing.T) {
	protos, err := filepath.Glob("*/*.proto")
	if err != nil {
		t.Fatal(err)
	}
	if len(protos) != 2 {
		t.Fatalf("want the 2 .proto files that TestProtoMatchesGenerated compares, found %v", protos)
	}
	for _, p := range protos {
		if _, err := os.Stat(p[:len(p)-len(".proto")] + ".pb.go"); err != nil {
			t.Errorf("%s has no generated Go: %v", p, err)
		}
	}
}
