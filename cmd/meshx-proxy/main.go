// Command meshx-proxy keeps one service in the mesh (meshx-proxy@.service).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshx/meshx/internal/cli"
)

// A panic is a runtime failure (exit 1, systemd restarts the unit), not the
// bad-input code 2 Go would exit with, which the unit never restarts.
func main() { os.Exit(cli.Guard("meshx-proxy", os.Stderr, run)) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	return cli.ProxyMain(ctx, os.Args[1:], os.Stdout, os.Stderr, reload)
}
