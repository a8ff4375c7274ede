// Command gendocs writes meshx's man pages and bash completions, generated
// from the command definitions, for the package build (mk/package.mk):
//
//	go run ./internal/cli/gendocs -out DIR -version V
//
// The pages are dated SOURCE_DATE_EPOCH when it is set (reproducible builds),
// else today.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/meshx/meshx/internal/cli"
	"github.com/meshx/meshx/internal/version"
)

func main() {
	out := flag.String("out", "", "directory to write man/ and bash-completion/ into")
	ver := flag.String("version", version.String(), "version named in the pages' header")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: gendocs -out DIR [-version V]")
		os.Exit(2)
	}
	date := time.Now().UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "gendocs: SOURCE_DATE_EPOCH=%q: %v\n", s, err)
			os.Exit(2)
		}
		date = time.Unix(sec, 0).UTC()
	}
	if err := cli.WriteDocs(*out, date, *ver); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}
