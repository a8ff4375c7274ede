// Command nsapp is a test application that runs inside a network
// namespace (where the test's own goroutines cannot listen):
//
//	nsapp ADDR BODY   serve HTTP on ADDR, answering every request with BODY
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: nsapp ADDR BODY")
		os.Exit(2)
	}
	body := os.Args[2]
	err := http.ListenAndServe(os.Args[1], http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, body)
	}))
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
