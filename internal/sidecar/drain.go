package sidecar

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// drainSettle is how long, once the servers no longer list this instance,
// callers' proxies get to learn it before the open connections are counted:
// Consul's built-in proxy asks at every new connection, Envoy is told over
// xDS within moments.
const drainSettle = time.Second

// drainPoll is how often drain looks at the catalog and the connections.
const drainPoll = 100 * time.Millisecond

// drain runs at a stop between "check critical" and "stop the proxy", within
// the plan's drain period: it waits until the servers no longer list this
// instance as a healthy Connect endpoint of its service (what callers ask),
// gives callers drainSettle to see it, then waits until no connection to the
// proxy's listeners is open. A zero period, or no proxy, skips it.
func (d *daemon) drain() {
	period := time.Duration(d.pl.Proxy.Drain)
	if period <= 0 || d.proxy == nil {
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), period)
	defer cancel()
	d.status(fmt.Sprintf("draining: waiting up to %s for callers to leave and connections to finish", period))
	for {
		listed, err := d.listedHealthy(ctx)
		if !listed {
			break
		}
		if !d.drainWait(ctx) {
			if err != nil {
				d.log.Warn("drain period over: the servers could not be asked whether callers still see this instance",
					"drain", period, "err", err)
			} else {
				d.log.Warn("drain period over while the servers still list this instance", "drain", period)
			}
			return
		}
	}
	unlisted := time.Now()
	ports := d.listenPorts()
	for {
		n := openConns(ports)
		if n == 0 && time.Since(unlisted) >= drainSettle {
			break
		}
		if !d.drainWait(ctx) {
			d.log.Warn("drain period over with connections still open", "open", n, "drain", period)
			return
		}
	}
	d.log.Info("drained", "took", time.Since(start).Round(time.Millisecond),
		"unlisted_after", unlisted.Sub(start).Round(time.Millisecond))
}

// drainWait waits one poll interval, keeping the watchdog fed; false when
// the drain period is over.
func (d *daemon) drainWait(ctx context.Context) bool {
	d.touch()
	select {
	case <-ctx.Done():
		return false
	case <-time.After(drainPoll):
		return true
	}
}

// listedHealthy asks the servers (through the agent, not its cache) whether
// they still list this instance's sidecar as a passing Connect endpoint.
func (d *daemon) listedHealthy(ctx context.Context) (bool, error) {
	ids, err := d.agent.ConnectHealthy(d.pl.Name, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return true, err
	}
	return slices.Contains(ids, d.pl.SidecarID), nil
}

// listenPorts are the ports the proxy accepts connections on: the public
// mTLS listener and every upstream listener.
func (d *daemon) listenPorts() map[int]bool {
	ports := map[int]bool{}
	if d.pl.SidecarPort > 0 {
		ports[d.pl.SidecarPort] = true
	}
	for _, u := range d.pl.Upstreams {
		ports[u.Port] = true
	}
	return ports
}

// openConns counts the established TCP connections of this network
// namespace whose local port is one of ports: connections the proxy accepted
// and has not closed yet.
func openConns(ports map[int]bool) int {
	n := 0
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		n += countEstablished(f, ports)
	}
	return n
}

// tcpEstablished is the state column's value for ESTABLISHED in /proc/net/tcp.
const tcpEstablished = "01"

func countEstablished(path string, ports map[int]bool) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		// sl local_address rem_address st ...; addresses are HEXIP:HEXPORT.
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[3] != tcpEstablished {
			continue
		}
		_, hexPort, ok := strings.Cut(fields[1], ":")
		if !ok {
			continue
		}
		if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && ports[int(p)] {
			n++
		}
	}
	return n
}
