// Command meshx-init brings a host's services into the Consul service mesh.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshx/meshx/internal/cli"
)

func main() { os.Exit(cli.Guard("meshx-init", os.Stderr, run)) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cli.InitMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
}
