package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// parseFile reads a YAML or JSON file into a node tree, with syntax errors located.
func parseFile(path string, data []byte, p *Problems) *yaml.Node {
	if len(bytes.TrimSpace(data)) == 0 {
		p.add(0, "", "file is empty")
		return nil
	}
	if strings.EqualFold(filepath.Ext(path), ".json") {
		// YAML accepts things JSON does not (trailing commas, comments): check JSON
		// syntax first so a broken .json file is reported as such, with its line.
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			var se *json.SyntaxError
			line := 0
			if errors.As(err, &se) {
				line = 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
			}
			p.add(line, "", "JSON syntax error: %v", err)
			return nil
		}
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		p.add(yamlLine(err.Error()), "", "syntax error: %s", trimYAML(err.Error()))
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.add(extra.Line, "", "more than one document in the file; write one service per file")
		return nil
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		p.add(0, "", "file is empty")
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		p.add(root.Line, "", "top level must be a mapping, not %s", kindName(root))
		return nil
	}
	return root
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

func yamlLine(msg string) int {
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
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
		if n.Tag == "!!null" {
			return "null"
		}
		return "a scalar (" + strings.TrimPrefix(n.Tag, "!!") + ")"
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

// walkLines records the line of every key and list item below n, by dotted path.
func walkLines(n *yaml.Node, path string, into map[string]Loc) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			into[p] = Loc{Line: n.Content[i].Line, Name: p}
			walkLines(n.Content[i+1], p, into)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			into[p] = Loc{Line: c.Line, Name: p}
			walkLines(c, p, into)
		}
	}
}

// decodeStrict decodes the whole file into v, rejecting unknown fields; every
// type error and unknown field is reported with its line.
func decodeStrict(data []byte, v any, p *Problems) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, e := range te.Errors {
				p.add(yamlLine(e), "", "%s", strings.TrimSpace(trimYAML(e)))
			}
			return false
		}
		p.add(yamlLine(err.Error()), "", "%s", trimYAML(err.Error()))
		return false
	}
	return true
}

// ReadFile loads one service-config file in any supported shape.
func ReadFile(path string, d Defaults) (*Service, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data, d)
}

// Parse decodes one service-config. The returned error joins every problem
// found, each located; errors.Is(err, ErrInvalid) holds for them.
func Parse(path string, data []byte, d Defaults) (*Service, error) {
	p := &Problems{file: path}
	root := parseFile(path, data, p)
	if root == nil {
		return nil, p.Err()
	}
	var s *Service
	if _, v := lookup(root, "version"); v != nil {
		s = decodeMeshx(data, root, p)
	} else if _, v := lookup(root, "annotations"); v != nil {
		s = decodeAnnotations(root, p)
	} else {
		s = decodeFlat(data, root, p)
	}
	if s == nil || p.Err() != nil {
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
