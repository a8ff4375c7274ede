// Command meshx-proxy keeps one service in the mesh (meshx-proxy@.service).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/meshx/meshx/internal/cli"
)

func main() { os.Exit(run()) }

func run() (code int) {
	// A panic is a runtime failure (exit 1, systemd restarts the unit), not the
	// bad-input code 2 Go would exit with, which the unit never restarts.
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "meshx-proxy: panic: %v\n%s", r, debug.Stack())
			code = cli.ExitFailure
		}
	}()
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
