package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// parseFile reads a YAML or JSON file into a node tree, with syntax errors located.
func parseFile(path string, data []byte, p *Problems) *yaml.Node {
	if len(bytes.TrimSpace(data)) == 0 {
		p.add(1, "", "file is empty")
		return nil
	}
	if strings.EqualFold(filepath.Ext(path), ".json") {
		// YAML accepts things JSON does not (trailing commas, comments): check JSON
		// syntax first so a broken .json file is reported as such, with its line.
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			var se *json.SyntaxError
			line := 1
			if errors.As(err, &se) {
				line = 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
			}
			p.add(line, "", "JSON syntax error: %s", quotedRE.ReplaceAllString(strings.TrimPrefix(err.Error(), "json: "), ""))
			return nil
		}
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) { // nothing but comments
			p.add(1, "", "file is empty")
			return nil
		}
		p.add(syntaxLine(err, data), "", "syntax error: %s", trimYAML(err.Error()))
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		p.add(syntaxLine(err, data), "", "syntax error: %s", trimYAML(err.Error()))
		return nil
	case !emptyDocument(&extra):
		p.add(extra.Line, "", "more than one document in the file; write one service per file")
		return nil
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || emptyDocument(&doc) {
		p.add(1, "", "file is empty")
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		p.add(root.Line, "", "top level must be a mapping, not %s", kindName(root))
		return nil
	}
	if !checkTree(root, p) {
		return nil
	}
	return root
}

// emptyDocument reports whether a document holds nothing (a trailing "---").
func emptyDocument(doc *yaml.Node) bool {
	if len(doc.Content) == 0 {
		return true
	}
	n := doc.Content[0]
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" && n.Value == "" && n.Style == 0
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

// quotedRE matches what a parser quotes from the file (encoding/json's
// "invalid character 'x'"): an error must not echo a file that may be a
// secret (a service-config symlinked to a token file).
var quotedRE = regexp.MustCompile(` ?'(?:[^'\\]|\\.)*'`)

func yamlLine(msg string) int {
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

// syntaxLine is the line of a YAML syntax error; yaml.v3 gives none for
// errors at the end of the stream, so those are at the last line.
func syntaxLine(err error, data []byte) int {
	if n := yamlLine(err.Error()); n > 0 {
		return n
	}
	return max(1, bytes.Count(bytes.TrimRight(data, "\n"), []byte("\n"))+1)
}

var linePrefixRE = regexp.MustCompile(`^line \d+: `)

// trimYAML drops the "yaml: " and "line N: " prefixes; the line is reported apart.
func trimYAML(msg string) string {
	return linePrefixRE.ReplaceAllString(strings.TrimPrefix(msg, "yaml: "), "")
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "null"
		}
		if tag := n.ShortTag(); strings.HasPrefix(tag, "!!") {
			return "a scalar (" + strings.TrimPrefix(tag, "!!") + ")"
		}
		return "a scalar tagged " + strconv.Quote(n.Tag)
	case yaml.AliasNode:
		return "an alias"
	}
	return "unknown"
}

// lookup returns the value node for key in a mapping node, or nil.
func lookup(m *yaml.Node, key string) (k, v *yaml.Node) {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i], m.Content[i+1]
		}
	}
	return nil, nil
}

// walkLines records the line of every key and list item below n, by dotted
// path; the top-level mapping itself is recorded as "".
func walkLines(n *yaml.Node, path string, into map[string]Loc) {
	if path == "" {
		into[""] = Loc{Line: n.Line}
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := joinField(path, n.Content[i].Value)
			into[p] = Loc{Line: n.Content[i].Line, Name: p}
			walkLines(n.Content[i+1], p, into)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fieldIndex(path, i)
			into[p] = Loc{Line: c.Line, Name: p}
			walkLines(c, p, into)
		}
	}
}

func joinField(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// docIndex finds the field a yaml.v3 decoding error is about: its messages
// give only a line and, for unknown fields, the key.
type docIndex struct {
	keys   map[lineKey]string // (line, key as written) -> field
	values map[int][]valueAt  // line -> value nodes starting there, outermost first
}

type lineKey struct {
	line int
	key  string
}

type valueAt struct {
	field string
	tag   string
}

func indexDoc(root *yaml.Node) *docIndex {
	ix := &docIndex{keys: map[lineKey]string{}, values: map[int][]valueAt{}}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := joinField(path, k.Value)
				ix.keys[lineKey{k.Line, k.Value}] = p
				ix.values[v.Line] = append(ix.values[v.Line], valueAt{p, v.ShortTag()})
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fieldIndex(path, i)
				ix.values[c.Line] = append(ix.values[c.Line], valueAt{p, c.ShortTag()})
				walk(c, p)
			}
		}
	}
	walk(root, "")
	return ix
}

// value returns the innermost field on line whose value has the YAML tag.
func (ix *docIndex) value(line int, tag string) string {
	vs := ix.values[line]
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i].tag == tag {
			return vs[i].field
		}
	}
	return ""
}

var (
	typeErrRE    = regexp.MustCompile("(?s)^cannot unmarshal (!!\\w+)(?: `(.*)`)? into (.+)$")
	unknownRE    = regexp.MustCompile(`(?s)^field (.+) not found in type `)
	duplicateRE  = regexp.MustCompile(`(?s)^mapping key (".*") already defined at line (\d+)$`)
	typeFieldsRE = regexp.MustCompile(`yaml:"([^",]*)`)
)

// decodeStrict decodes the whole file into v, rejecting unknown fields. Every
// type error, unknown field and repeated key is reported with its line and
// field; v keeps what did decode, so that checking can go on. It reports
// whether the file decoded cleanly.
func decodeStrict(data []byte, root *yaml.Node, v any, ix *docIndex, p *Problems) bool {
	checkScalars(root, reflect.TypeOf(v), "", p)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(v)
	if err == nil {
		return true
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		p.add(syntaxLine(err, data), "", "%s", trimYAML(err.Error()))
		p.skip("")
		return false
	}
	for _, e := range te.Errors {
		line, msg := yamlLine(e), strings.TrimSpace(trimYAML(e))
		if m := typeErrRE.FindStringSubmatch(msg); m != nil {
			p.badValue(line, ix.value(line, m[1]), "must be %s, not %s", wantName(m[3]), gotName(m[1], m[2]))
		} else if m := unknownRE.FindStringSubmatch(msg); m != nil {
			field := ix.keys[lineKey{line, m[1]}]
			known := knownFields(reflect.TypeOf(v), parentField(field))
			switch near := nearest(m[1], known); {
			case near != "":
				p.add(line, field, "unknown field; did you mean %s?", near)
			case len(known) > 0:
				p.add(line, field, "unknown field (known here: %s)", strings.Join(known, ", "))
			default:
				p.add(line, field, "unknown field")
			}
		} else if m := duplicateRE.FindStringSubmatch(msg); m != nil {
			// yaml.v3 then skips the whole mapping that holds the key.
			key, _ := strconv.Unquote(m[1]) // yaml.v3 writes it with %#v
			field := ix.keys[lineKey{line, key}]
			p.add(line, field, "written twice (first at line %s)", m[2])
			p.skip(parentField(field))
		} else {
			p.add(line, "", "%s", msg)
		}
	}
	return false
}

// wantName describes a Go type the way a config author thinks of it.
func wantName(goType string) string {
	switch {
	case strings.HasSuffix(goType, "durationText"):
		return "a duration (like 10s)"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map["), strings.HasPrefix(goType, "struct"), strings.Contains(goType, "."):
		return "a mapping"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "a whole number"
	case strings.HasPrefix(goType, "float"):
		return "a number"
	case goType == "bool":
		return "true or false"
	case goType == "string":
		return "a string"
	}
	return goType
}

func gotName(tag, value string) string {
	switch tag {
	case "!!str":
		return "the string " + strconv.Quote(value)
	case "!!int", "!!float":
		return "the number " + value
	case "!!bool":
		return value
	case "!!null":
		return "null"
	case "!!map":
		return "a mapping"
	case "!!seq":
		return "a list"
	}
	return tag + " " + strconv.Quote(value)
}

// knownFields lists the yaml field names of the struct at field (a dotted
// path, list indexes allowed) inside t.
func knownFields(t reflect.Type, field string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if field != "" {
		for _, seg := range strings.Split(field, ".") {
			name, _, _ := strings.Cut(seg, "[")
			if t = fieldType(t, name); t == nil {
				return nil
			}
			for n := strings.Count(seg, "["); n > 0; n-- {
				if t.Kind() != reflect.Slice {
					return nil
				}
				t = deref(t.Elem())
			}
		}
	}
	return structFields(t)
}

// structFields lists the yaml field names of a struct, inline ones included.
func structFields(t reflect.Type) []string {
	if t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		if isInline(f) {
			out = append(out, structFields(deref(f.Type))...)
		} else if m := typeFieldsRE.FindStringSubmatch(string(f.Tag)); m != nil && m[1] != "" {
			out = append(out, m[1])
		}
	}
	return out
}

// nearest returns the known name a typo most likely meant: one at most two
// edits away (or differing only in case), else "".
func nearest(name string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		d := editDistance(strings.ToLower(name), strings.ToLower(k))
		if d < bestD {
			best, bestD = k, d
		}
	}
	if bestD >= len(name) { // a short name is "close" to anything short
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance of a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func fieldType(t reflect.Type, name string) reflect.Type {
	if t.Kind() != reflect.Struct {
		return nil
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if isInline(f) {
			if ft := fieldType(deref(f.Type), name); ft != nil {
				return ft
			}
			continue
		}
		if m := typeFieldsRE.FindStringSubmatch(string(f.Tag)); m != nil && m[1] == name {
			return deref(f.Type)
		}
	}
	if t.PkgPath() == consulAPI {
		return apiFieldType(t, name)
	}
	return nil
}

const consulAPI = "github.com/hashicorp/consul/api"

// apiFieldType is fieldType for consul/api's types, which have no yaml
// tags: a registration template names a field by its Go name (case counts).
func apiFieldType(t reflect.Type, name string) reflect.Type {
	if f, ok := t.FieldByName(name); ok && f.IsExported() {
		return deref(f.Type)
	}
	return nil
}

// isInline reports whether a struct field is yaml.v3's `yaml:",inline"`.
func isInline(f reflect.StructField) bool {
	return strings.Contains(f.Tag.Get("yaml"), ",inline")
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// ReadFile loads one service-config file in any supported shape. A file that
// cannot be read is a located problem of that file (ErrInvalid), like any other.
func ReadFile(path string, d Defaults) (*Service, error) {
	p := &Problems{file: path}
	data := readConfig(path, p)
	if data == nil {
		return nil, p.Err()
	}
	return Parse(path, data, d)
}

// readConfig reads a config file of at most MaxFileSize bytes; it reports why
// it could not (nil) as a problem of the file. It never echoes what it read.
func readConfig(path string, p *Problems) []byte {
	f, why := openRegular(path)
	if f == nil {
		p.add(0, "", "cannot read: %s", why)
		return nil
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	switch {
	case err != nil:
		p.add(0, "", "cannot read: %s", readReason(path, err))
		return nil
	case len(data) > MaxFileSize:
		p.add(0, "", "file is larger than %d bytes", MaxFileSize)
		return nil
	}
	return data
}

// openRegular opens a regular file (through symbolic links) for reading, or
// says why it cannot. It opens nothing else: reading a FIFO would block.
func openRegular(path string) (*os.File, string) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, readReason(path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, "not a regular file (" + fileKind(fi.Mode()) + ")"
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, readReason(path, err)
	}
	return f, ""
}

// readReason says why a file could not be read, without its path (the
// problem is already located at it).
func readReason(path string, err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	if errors.Is(err, fs.ErrNotExist) {
		if _, lerr := os.Lstat(path); lerr == nil {
			return "a symbolic link to a file that does not exist"
		}
	}
	return err.Error()
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "mode " + m.String()
}

// meshxKeys are the top-level keys only the meshx shape has: a file with one
// of them and no version is a meshx file that forgot its version.
var meshxKeys = []string{"service", "check", "upstreams", "proxy", "registration", "transparent_proxy", "network"}

// Parse decodes one service-config. The returned error joins every problem
// found, each located by file, line and field; errors.Is(err, ErrInvalid)
// holds for them. A file that cannot be parsed at all (a syntax error, an
// empty file) reports that one problem; otherwise decoding and checking go on
// past problems so that all of them are reported at once.
func Parse(path string, data []byte, d Defaults) (*Service, error) {
	p := &Problems{file: path}
	root := parseFile(path, data, p)
	if root == nil {
		return nil, p.Err()
	}
	ix := indexDoc(root)
	var s *Service
	switch {
	case hasKey(root, "version") || hasKey(root, meshxKeys...):
		s = decodeMeshx(data, root, ix, p)
	case hasKey(root, "annotations"):
		s = decodeAnnotations(root, p)
	default:
		s = decodeFlat(data, root, ix, p)
	}
	if s == nil {
		return nil, p.Err()
	}
	s.File = path
	s.setDefaults(d)
	s.validate(p)
	if err := p.Err(); err != nil {
		return nil, err
	}
	return s, nil
}

func hasKey(root *yaml.Node, keys ...string) bool {
	for _, k := range keys {
		if _, v := lookup(root, k); v != nil {
			return true
		}
	}
	return false
}

func fieldIndex(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }
