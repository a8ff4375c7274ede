package config

import (
	"reflect"
	"strconv"

	"github.com/hashicorp/consul/api"
	"gopkg.in/yaml.v3"
)

// checkTree refuses what no shape of config may hold, before any decoding:
// nesting deeper than MaxDepth, explicit YAML tags (!!binary, !custom), and
// a key written twice in one mapping (in YAML and in JSON alike). It reports
// whether the tree is clean.
func checkTree(root *yaml.Node, p *Problems) bool {
	ok := true
	var walk func(n *yaml.Node, path string, depth int)
	walk = func(n *yaml.Node, path string, depth int) {
		if depth > MaxDepth {
			p.add(n.Line, path, "nested deeper than %d levels", MaxDepth)
			ok = false
			return
		}
		if n.Style&yaml.TaggedStyle != 0 {
			p.add(n.Line, path, "explicit YAML tags (here %s) are not accepted: write the value plainly", strconv.Quote(n.Tag))
			ok = false
		}
		switch n.Kind {
		case yaml.MappingNode:
			first := map[string]int{}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				f := joinField(path, k.Value)
				if k.Style&yaml.TaggedStyle != 0 {
					p.add(k.Line, f, "explicit YAML tags (here %s) are not accepted: write the key plainly", strconv.Quote(k.Tag))
					ok = false
				}
				if line, dup := first[k.Value]; dup && k.Kind == yaml.ScalarNode {
					p.add(k.Line, f, "written twice (first at line %d)", line)
					ok = false
				} else {
					first[k.Value] = k.Line
				}
				walk(n.Content[i+1], f, depth+1)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fieldIndex(path, i), depth+1)
			}
		}
	}
	walk(root, "", 1)
	return ok
}

// registrationType is what a registration template becomes: Consul's own
// registration, whose typed fields get the same checks as meshx's (port:
// 1e3 is refused under registration: as under service:).
var registrationType = reflect.TypeFor[api.AgentServiceRegistration]()

// durationText is a duration as written ("10s"); it is parsed after decoding,
// so "ttl: 10" is reported as a duration without a unit, not as a non-string.
type durationText string

// checkScalars refuses a scalar whose YAML type is not the Go type of the
// field it fills, which yaml.v3 would convert silently: a number with a
// fraction or an exponent truncated into an integer (port: 8080.9, 1e3), a
// boolean or a number turned into a name (name: true). null is "not set".
// Values that yaml.v3 refuses itself are left to its own located error.
func checkScalars(n *yaml.Node, t reflect.Type, path string, p *Problems) {
	checkScalarsIn(n, t, path, p, false)
}

// checkScalarsIn is checkScalars; with fractionsOnly (a registration
// template, whose other mismatches the plan reports once rendered) it
// refuses only a fraction or an exponent where Consul takes an integer.
func checkScalarsIn(n *yaml.Node, t reflect.Type, path string, p *Problems, fractionsOnly bool) {
	t = deref(t)
	if t == reflect.TypeFor[durationText]() {
		return // parsed later, with a message of its own
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch t.Kind() {
			case reflect.Struct:
				if ft := fieldType(t, k.Value); ft != nil {
					if k.Value == "registration" && ft.Kind() == reflect.Map {
						checkScalarsIn(v, registrationType, joinField(path, k.Value), p, true)
						continue
					}
					checkScalarsIn(v, ft, joinField(path, k.Value), p, fractionsOnly)
				}
			case reflect.Map:
				checkScalarsIn(v, t.Elem(), joinField(path, k.Value), p, fractionsOnly)
			}
		}
	case yaml.SequenceNode:
		if t.Kind() == reflect.Slice {
			for i, c := range n.Content {
				checkScalarsIn(c, t.Elem(), fieldIndex(path, i), p, fractionsOnly)
			}
		}
	case yaml.ScalarNode:
		tag := n.ShortTag()
		if tag == "!!null" {
			return
		}
		want := ""
		switch t.Kind() {
		case reflect.String:
			want = "!!str"
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			want = "!!int"
		case reflect.Bool:
			want = "!!bool"
		}
		if fractionsOnly && want != "!!int" {
			return
		}
		// The other mismatches (a string into an integer...) yaml.v3 reports.
		if want != "" && tag != want && (want == "!!str" || tag == "!!float") {
			hint := ""
			if want == "!!str" {
				hint = " (quote it if you mean the text)"
			}
			p.badValue(n.Line, path, "must be %s, not %s%s", wantName(t.String()), gotName(tag, n.Value), hint)
		}
	}
}
