// Command fakeproxy stands in for a transparent proxy in tests: it accepts TCP
// connections on every -listen address and answers each with one line naming
// the listener, until SIGTERM. With -admin it also stands in for Envoy's
// admin listener: GET /stats/prometheus answers Prometheus text, as Envoy's
// does, with a counter of those requests.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var addrs listFlag
	flag.Var(&addrs, "listen", "address to accept on (repeatable)")
	admin := flag.String("admin", "", "address to serve /stats/prometheus on, as Envoy's admin listener")
	flag.Parse()
	if *admin != "" {
		l, err := net.Listen("tcp", *admin)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		var scrapes atomic.Int64
		mux := http.NewServeMux()
		mux.HandleFunc("/stats/prometheus", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
			fmt.Fprintf(w, "# TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n"+
				"# TYPE envoy_fake_admin_scrapes_total counter\nenvoy_fake_admin_scrapes_total{} %d\n", scrapes.Add(1))
		})
		go func() { _ = http.Serve(l, mux) }()
	}
	for _, a := range addrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("listening on", a)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "fakeproxy %s\n", a)
				c.Close()
			}
		}()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
