package cli

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/sidecar"
	"github.com/meshx/meshx/internal/systemd"
)

// ProxyMain is meshx-proxy. reload yields on SIGHUP.
func ProxyMain(ctx context.Context, args []string, stdout, stderr io.Writer, reload <-chan struct{}) int {
	return execute(ctx, proxyRoot(stderr, reload), args, stdout, stderr)
}

// proxyRoot is meshx-proxy's command; it logs to stderr.
func proxyRoot(stderr io.Writer, reload <-chan struct{}) *cobra.Command {
	var g globals
	var cleanup bool
	var netns string
	root := &cobra.Command{
		Use:   "meshx-proxy <service>",
		Short: "Keep one service in the mesh: supervise its proxy, heartbeat its check",
		Long: `meshx-proxy runs one service's data plane from the plan meshx-init rendered:
it makes sure the registration is in the agent, supervises the proxy (restarts
with backoff), heartbeats the TTL check from real health, installs the
transparent-proxy rules once the proxy accepts, and tells systemd READY=1 only
when traffic can flow. On SIGTERM it sets the check critical, stops the proxy,
removes its rules and deregisters. SIGHUP re-reads the plan.

--cleanup <service> is the unit's ExecStopPost: it removes rules and a proxy a
killed meshx-proxy left behind; safe to run at any time.

Exit codes: 0 ok, 1 runtime failure, 2 bad input (do not restart), 3 the proxy
kept crashing and max_restarts restarts were used up (do not restart).`,
		Args: exactArgs(1, "one service name"),
		RunE: func(c *cobra.Command, args []string) error {
			log, err := g.logger(stderr)
			if err != nil {
				return err
			}
			name := args[0]
			log = log.With("service", name)
			if cleanup {
				// Needs no meshx.yaml: a broken one must not keep a crashed
				// meshx-proxy's rules in place.
				return sidecar.Cleanup(c.Context(), g.dirs, name, netns, log)
			}
			gl, err := config.LoadGlobal(config.ConfigPath(g.dirs.Config))
			if err != nil {
				return err
			}
			o := sidecar.Options{Dirs: g.dirs, Global: gl, Service: name, Logger: log, Reload: reload,
				Notify: func(s string) { _ = systemd.Notify(s) }}
			o.NewRedirector = func() (sidecar.Redirector, error) { return sidecar.NewRules(netns, log) }
			return sidecar.Run(c.Context(), o)
		},
	}
	g.bind(root)
	withVersion(root)
	root.ValidArgsFunction = g.completeServices(false)
	root.Flags().BoolVar(&cleanup, "cleanup", false, "remove leftovers of a killed meshx-proxy and exit")
	root.Flags().StringVar(&netns, "netns", "", "network namespace path for transparent-proxy rules (tests)")
	_ = root.Flags().MarkHidden("netns")
	return root
}
