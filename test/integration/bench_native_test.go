package integration

import (
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// dataPaths starts, on one agent, three ways to one echo app: straight
// (plain loopback TCP), through a pair of Consul built-in proxies, and
// through a pair of native planes. Both pairs are run by meshx (connect and
// native mode), each proxy in a process of its own, apart from the load
// generator; it returns the local port of each way.
func dataPaths(b *testing.B) map[string]int {
	c := testutil.StartConsul(b, benchHCL)
	h := newHost(b, c, "")
	app := echoApp(b)
	for _, mode := range []string{"connect", "native"} {
		p := mode[:1]
		h.service(p+"web.yaml", fmt.Sprintf("version: 1\nservice: {name: %sweb, port: %d}\ncheck: {probe: none}\nproxy: {mode: %s}\n", p, echoApp(b), mode))
		h.service(p+"client.yaml", fmt.Sprintf("version: 1\nservice: {name: %sclient}\ncheck: {probe: none}\nupstreams: [{name: %sweb}]\nproxy: {mode: %s}\n", p, p, mode))
	}
	h.foreground()
	h.waitPassing(60*time.Second, "cweb-testhost", "cclient-testhost", "nweb-testhost", "nclient-testhost")
	paths := map[string]int{"plain": app, "builtin": h.plan("cclient").Upstreams[0].Port,
		"native": h.plan("nclient").Upstreams[0].Port}
	for name, port := range paths {
		testutil.Eventually(b, 30*time.Second, func() error {
			if err := echoThrough(port, 1024, 1, false); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		})
	}
	return paths
}

var pathOrder = []string{"plain", "builtin", "native"}

// BenchmarkDataPath measures, in one run and on one agent, the three data
// paths of dataPaths:
//   - stream: one connection echoing 1 MiB per op (MB/s counts both ways);
//   - parallel: 32 connections at once, 256 KiB per op each;
//   - request: a new connection, 64 bytes there and back, closed; p50 and
//     p99 latency are reported besides the mean (ns/op).
func BenchmarkDataPath(b *testing.B) {
	paths := dataPaths(b)
	for _, name := range pathOrder {
		port := paths[name]
		b.Run("stream/"+name, func(b *testing.B) { benchStream(b, port, 1<<20) })
	}
	for _, name := range pathOrder {
		port := paths[name]
		b.Run("parallel32/"+name, func(b *testing.B) {
			b.SetParallelism(16) // 16 x GOMAXPROCS (2) = 32 connections
			b.SetBytes(2 * 256 << 10)
			b.RunParallel(func(pb *testing.PB) {
				c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				buf := make([]byte, 256<<10)
				for pb.Next() {
					if err := echoChunk(c, buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
	for _, name := range pathOrder {
		port := paths[name]
		b.Run("request/"+name, func(b *testing.B) { benchRequest(b, port) })
	}
}

func benchStream(b *testing.B, port, chunk int) {
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, chunk)
	b.SetBytes(int64(2 * chunk))
	b.ResetTimer()
	for range b.N {
		if err := echoChunk(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// echoChunk writes buf and reads as many bytes back, concurrently.
func echoChunk(c net.Conn, buf []byte) error {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(buf)
		errc <- err
	}()
	back := make([]byte, len(buf))
	if _, err := io.ReadFull(c, back); err != nil {
		return err
	}
	return <-errc
}

func benchRequest(b *testing.B, port int) {
	msg := make([]byte, 64)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			b.Fatal(err)
		}
		if err := echoChunk(c, msg); err != nil {
			b.Fatal(err)
		}
		c.Close()
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
}
