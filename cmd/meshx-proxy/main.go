// Command meshx-proxy keeps one service in the mesh (meshx-proxy@.service).
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
	code := cli.ProxyMain(ctx, os.Args[1:], os.Stdout, os.Stderr, reload)
	stop()
	os.Exit(code)
}
