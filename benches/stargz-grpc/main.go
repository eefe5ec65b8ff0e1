// containerd-stargz-grpc for the lazy benchmark: Debian ships stargz-snapshotter's Go
// library (golang-github-containerd-stargz-snapshotter-dev) and ctr-remote, but not the
// snapshotter daemon. This is the smallest daemon over that library: the stargz
// filesystem and snapshotter with their default configuration, layers found from the
// labels `ctr-remote images rpull` sends (the library's CRI-label source needs the
// Kubernetes CRI API, which Debian does not package), loopback registries over plain
// http, served as containerd.services.snapshots.v1 on a unix socket until SIGINT or
// SIGTERM.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o containerd-stargz-grpc ./benches/stargz-grpc
//	containerd-stargz-grpc -address /run/stargz.sock -root /var/lib/stargz
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	"github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	"github.com/containerd/stargz-snapshotter/snapshot"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "unix socket to serve")
	root := flag.String("root", "/var/lib/containerd-stargz-grpc", "snapshotter root")
	flag.Parse()

	ctx := context.Background()
	// The stargz fetcher uses the client's Transport itself: it must not be nil.
	client := &http.Client{Transport: http.DefaultTransport}
	configure := docker.ConfigureDefaultRegistries(docker.WithClient(client),
		docker.WithPlainHTTP(docker.MatchLocalhost))
	hosts := func(spec reference.Spec) ([]docker.RegistryHost, error) {
		return configure(spec.Hostname())
	}
	fs, err := stargzfs.NewFilesystem(filepath.Join(*root, "stargz"), config.Config{},
		stargzfs.WithGetSources(source.FromDefaultLabels(hosts)),
		stargzfs.WithOverlayOpaqueType(layer.OverlayOpaqueTrusted))
	if err != nil {
		log.Fatalf("stargz filesystem: %v", err)
	}
	sn, err := snapshot.NewSnapshotter(ctx, filepath.Join(*root, "snapshotter"), fs, snapshot.AsynchronousRemove)
	if err != nil {
		log.Fatalf("stargz snapshotter: %v", err)
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	_ = os.Remove(*address)
	l, err := net.Listen("unix", *address)
	if err != nil {
		log.Fatalf("listen on %s: %v", *address, err)
	}
	done := make(chan os.Signal, 1)
	signal.Notify(done, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		if err := rpc.Serve(l); err != nil {
			log.Fatalf("serve: %v", err)
		}
	}()
	<-done
	rpc.Stop()
	if err := sn.Close(); err != nil {
		log.Printf("close: %v", err)
	}
}
