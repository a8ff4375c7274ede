// Command webapp is the demo's application: a tiny HTTP server that says who
// answered, so a request through the mesh shows where it landed.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	name := flag.String("name", "web", "name to answer with")
	flag.Parse()
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s on %s (you asked for %s)\n", *name, host, r.URL.Path)
	})
	log.Fatal(http.ListenAndServe(*addr, nil))
}
