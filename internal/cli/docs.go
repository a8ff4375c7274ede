package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"
)

// ManSection is the manual section of meshx's pages: system administration
// commands and daemons.
const ManSection = "8"

// Docs are the files WriteDocs makes, relative to its directory.
const (
	ManDir        = "man"             // <command path joined by '-'>.8 per command
	CompletionDir = "bash-completion" // one bash completion script per binary
)

// roots are both binaries' command trees, for documentation only.
func roots() []*cobra.Command {
	return []*cobra.Command{initRoot(io.Discard), proxyRoot(io.Discard, nil)}
}

// WriteDocs writes the man pages of every command of both binaries and each
// binary's bash completion under dir, generated from the command definitions.
// date is the pages' date (a build sets it from the commit, so the package is
// reproducible); version names the source in each page's header.
func WriteDocs(dir string, date time.Time, version string) error {
	for _, sub := range []string{ManDir, CompletionDir} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	for _, root := range roots() {
		root.DisableAutoGenTag = true
		root.InitDefaultVersionFlag()
		escapeMarkdown(root, map[*pflag.Flag]bool{})
		h := &doc.GenManHeader{Section: ManSection, Date: &date, Source: "meshx " + version, Manual: "meshx manual"}
		if err := doc.GenManTree(root, h, filepath.Join(dir, ManDir)); err != nil {
			return fmt.Errorf("man pages of %s: %w", root.Name(), err)
		}
		if err := writeCompletion(root, filepath.Join(dir, CompletionDir, root.Name())); err != nil {
			return err
		}
	}
	return nil
}

// markdownEscaper keeps "<service>" and the like in the man pages: cobra
// renders them through Markdown, which would drop them as HTML tags.
var markdownEscaper = strings.NewReplacer("<", `\<`, ">", `\>`)

// escapeMarkdown escapes the text of c and its subcommands, and of their flags
// (each once: a persistent flag is shared by the commands under it).
func escapeMarkdown(c *cobra.Command, seen map[*pflag.Flag]bool) {
	c.Use = markdownEscaper.Replace(c.Use)
	c.Short = markdownEscaper.Replace(c.Short)
	c.Long = markdownEscaper.Replace(c.Long)
	c.Example = markdownEscaper.Replace(c.Example)
	for _, fs := range []*pflag.FlagSet{c.PersistentFlags(), c.LocalNonPersistentFlags()} {
		fs.VisitAll(func(f *pflag.Flag) {
			if !seen[f] {
				seen[f] = true
				f.Usage = markdownEscaper.Replace(f.Usage)
			}
		})
	}
	for _, sub := range c.Commands() {
		escapeMarkdown(sub, seen)
	}
}

// writeCompletion writes root's bash completion script, which asks the binary
// itself (its hidden __complete command) what may follow.
func writeCompletion(root *cobra.Command, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := root.GenBashCompletionV2(f, true); err != nil {
		f.Close()
		return fmt.Errorf("bash completion of %s: %w", root.Name(), err)
	}
	return f.Close()
}
