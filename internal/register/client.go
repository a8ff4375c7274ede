// Package register keeps meshx's services registered with the local Consul
// agent: it builds the API client from meshx.yaml and the standard CONSUL_*
// variables, waits for an unreachable agent with backoff, registers a plan
// (service, sidecar, TTL check) only when it changed, enforces ownership, and
// deregisters what meshx owns but no longer configures.
package register

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"

	"github.com/meshx/meshx/internal/config"
)

// APIConfig builds the consul/api config: the CONSUL_* environment first, then
// meshx.yaml's values, which win where set.
func APIConfig(c config.Consul) *api.Config {
	cfg := api.DefaultConfig()
	if c.Address != "" {
		cfg.Address = c.Address
	}
	switch {
	case c.Token != "":
		cfg.Token, cfg.TokenFile = string(c.Token), ""
	case c.TokenFile != "":
		cfg.TokenFile, cfg.Token = c.TokenFile, ""
	case c.Login != nil:
		// Logging in is done without a token; a CONSUL_HTTP_TOKEN* inherited
		// from the environment must not take the login's place either.
		cfg.Token, cfg.TokenFile = "", ""
	}
	if c.CAFile != "" {
		cfg.TLSConfig.CAFile = c.CAFile
	}
	if c.CertFile != "" {
		cfg.TLSConfig.CertFile = c.CertFile
	}
	if c.KeyFile != "" {
		cfg.TLSConfig.KeyFile = c.KeyFile
	}
	if c.TLSServerName != "" {
		cfg.TLSConfig.Address = c.TLSServerName
	}
	switch {
	case strings.HasPrefix(cfg.Address, "https://"):
		cfg.Scheme = "https"
	case strings.HasPrefix(c.Address, "http://"):
		// meshx.yaml's http:// wins over an inherited CONSUL_HTTP_SSL=true
		// (consul/api would keep https and speak TLS to a plain agent).
		cfg.Scheme = "http"
	}
	return cfg
}

// NewClient returns an API client for the local agent; its connections
// come from c.Source when that is set.
func NewClient(c config.Consul) (*api.Client, error) {
	cfg := APIConfig(c)
	if c.Source.IsValid() {
		t := cleanhttp.DefaultPooledTransport()
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second,
			LocalAddr: &net.TCPAddr{IP: c.Source.AsSlice()}}
		t.DialContext = d.DialContext
		cfg.Transport = t
	}
	cl, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", Address(c), err)
	}
	return cl, nil
}

// LoopbackAgent reports whether an agent address is on loopback IPv4
// (127.0.0.0/8 or localhost, over http or https), where each service
// connects from an address of its own (SourceAddress).
func LoopbackAgent(address string) bool {
	if scheme, rest, ok := strings.Cut(address, "://"); ok {
		if scheme == "unix" {
			return false
		}
		address = rest
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	ip, err := netip.ParseAddr(host)
	return host == "localhost" || err == nil && ip.Is4() && ip.IsLoopback()
}

// SourceAddress is the loopback address a service's connections to an
// agent at address come from: 127.a.b.c from a hash of id, never in
// 127.0.0.0/24; invalid (the system picks) when the agent is not on
// loopback IPv4 (a unix socket, another host, IPv6). The agent counts its
// limit of HTTP connections per client address
// (limits.http_max_conns_per_client, 200 by default) for each service
// alone, as it would for services on hosts of their own, instead of one
// budget for the whole host.
func SourceAddress(address, id string) netip.Addr {
	if !LoopbackAgent(address) {
		return netip.Addr{}
	}
	h := fnv.New32a()
	h.Write([]byte(id))
	v := h.Sum32()
	b := [4]byte{127, byte(v >> 16), byte(v >> 8), byte(v)}
	if b[1] == 0 && b[2] == 0 {
		b[2] = 1 // keep clear of 127.0.0.0/24, where agents and apps listen
	}
	if b[3] == 0 || b[3] == 255 {
		b[3] = 1
	}
	return netip.AddrFrom4(b)
}

// Address is the agent address meshx uses, for messages.
func Address(c config.Consul) string {
	cfg := APIConfig(c)
	if strings.Contains(cfg.Address, "://") {
		return cfg.Address
	}
	return cfg.Scheme + "://" + cfg.Address
}

// ProxyEnv returns the environment for the proxy child: base plus the agent's
// address, TLS files and token. The token goes in the environment (never argv)
// and is read here, so a proxy running as an unprivileged user needs no access
// to the token file.
func ProxyEnv(c config.Consul, base []string) ([]string, error) {
	cfg := APIConfig(c)
	env := make([]string, 0, len(base)+8)
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case api.HTTPTokenEnvName, api.HTTPTokenFileEnvName, api.HTTPAddrEnvName:
			continue
		}
		env = append(env, kv)
	}
	env = append(env, api.HTTPAddrEnvName+"="+cfg.Address)
	token := cfg.Token
	if cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("read token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token != "" {
		env = append(env, api.HTTPTokenEnvName+"="+token)
	}
	for k, v := range map[string]string{api.HTTPCAFile: cfg.TLSConfig.CAFile, api.HTTPClientCert: cfg.TLSConfig.CertFile,
		api.HTTPClientKey: cfg.TLSConfig.KeyFile, api.HTTPTLSServerName: cfg.TLSConfig.Address, api.GRPCAddrEnvName: c.GRPCAddress} {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env, nil
}

// ErrAgentUnreachable is returned when the agent did not answer in time.
var ErrAgentUnreachable = errors.New("consul agent unreachable")

// WaitAgent retries until the agent answers a Ping or wait passes, with
// exponential backoff and jitter (0.5s growing to 10s, the last sleep cut to
// end at the deadline, so the last try is made at about wait); each failure
// after the first is logged.
func WaitAgent(ctx context.Context, a Agent, addr string, wait time.Duration, log *slog.Logger) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 500*time.Millisecond, 10*time.Second
	deadline := time.Now().Add(wait)
	for tries := 1; ; tries++ {
		err := a.Ping(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("%w at %s after %s (%d attempts): %v", ErrAgentUnreachable, addr, wait, tries, err)
		}
		if tries > 1 {
			log.Warn("waiting for the consul agent", "address", addr, "attempt", tries, "err", err)
		}
		t := time.NewTimer(min(b.NextBackOff(), left))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
