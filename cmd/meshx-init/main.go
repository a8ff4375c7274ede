// Command meshx-init brings a host's services into the Consul service mesh.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshx/meshx/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.InitMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
