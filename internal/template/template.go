// Package template renders meshx's structured templates: maps and lists (as
// decoded from YAML/JSON) whose string leaves may hold {{var}} tags.
//
// A leaf that is exactly "{{$var$}}" is replaced by the variable's typed value
// (an int stays an int, a list stays a list). Any other {{var}} inserts the
// variable as text. Output is data, later encoded as JSON, so inserted text can
// never break the document's syntax. An unknown variable, a "{{" without its
// "}}" and a typed value used as text are errors naming the template path.
package template

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/valyala/fasttemplate"
)

// Vars are the values a template may use, by name.
type Vars map[string]any

// UnknownVarError names a variable no one defined and where it was used.
type UnknownVarError struct {
	Path string // template path, e.g. "registration.Meta.owner"
	Var  string
}

func (e *UnknownVarError) Error() string {
	return fmt.Sprintf("%s: unknown template variable {{%s}}", e.Path, e.Var)
}

// PathError is any other problem of a template, at its template path: a "{{"
// without its "}}", or a typed value that has no text form.
type PathError struct {
	Path string
	Err  error
}

func (e *PathError) Error() string { return e.Path + ": " + e.Err.Error() }
func (e *PathError) Unwrap() error { return e.Err }

// Render returns a rendered deep copy of tmpl. path names tmpl in errors.
func Render(tmpl any, vars Vars, path string) (any, error) {
	switch t := tmpl.(type) {
	case string:
		return renderLeaf(t, vars, path)
	case map[string]any:
		out := make(map[string]any, len(t))
		for _, k := range sortedKeys(t) {
			v, err := Render(t[k], vars, path+"."+k)
			if err != nil {
				return nil, err
			}
			out[k] = v
		}
		return out, nil
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			v, err := Render(e, vars, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	}
	return tmpl, nil
}

// RenderString renders one string as text (typed tags insert their text form).
func RenderString(s string, vars Vars, path string) (string, error) {
	i := strings.LastIndex(s, "{{")
	if i < 0 {
		return s, nil
	}
	if !strings.Contains(s[i+2:], "}}") {
		// fasttemplate would keep it as text: a typo like "{{id}" would go unseen.
		return "", &PathError{Path: path, Err: errors.New("\"{{\" without its \"}}\" (write {{name}})")}
	}
	var out strings.Builder
	_, err := fasttemplate.ExecuteFunc(s, "{{", "}}", &out, func(w io.Writer, tag string) (int, error) {
		name := strings.TrimSpace(tag)
		name = strings.TrimSuffix(strings.TrimPrefix(name, "$"), "$")
		v, ok := vars[name]
		if !ok {
			return 0, &UnknownVarError{Path: path, Var: name}
		}
		txt, err := Text(v)
		if err != nil {
			return 0, &PathError{Path: path, Err: fmt.Errorf("{{%s}}: %w", name, err)}
		}
		return w.Write([]byte(txt))
	})
	if err != nil {
		return "", err // the tag function's own errors, which carry the path
	}
	return out.String(), nil
}

func renderLeaf(s string, vars Vars, path string) (any, error) {
	if t := strings.TrimSpace(s); strings.HasPrefix(t, "{{$") && strings.HasSuffix(t, "$}}") && strings.Count(t, "{{") == 1 {
		name := strings.TrimSpace(t[3 : len(t)-3])
		v, ok := vars[name]
		if !ok {
			return nil, &UnknownVarError{Path: path, Var: name}
		}
		return v, nil
	}
	return RenderString(s, vars, path)
}

// Text is a variable's text form: strings as they are, numbers in decimal,
// lists of scalars joined by commas.
func Text(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case int:
		return strconv.Itoa(x), nil
	case bool:
		return strconv.FormatBool(x), nil
	case nil:
		return "", nil
	case []string:
		return strings.Join(x, ","), nil
	case fmt.Stringer:
		return x.String(), nil
	}
	return "", fmt.Errorf("a %T has no text form: use \"{{$name$}}\" alone in a value to insert it typed", v)
}

// Merge returns base with over laid on top: maps merge key by key, anything
// else in over replaces base; a nil value in over removes the key.
func Merge(base, over map[string]any) map[string]any {
	out := make(map[string]any, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		if v == nil {
			delete(out, k)
			continue
		}
		bm, bok := out[k].(map[string]any)
		om, ook := v.(map[string]any)
		if bok && ook {
			out[k] = Merge(bm, om)
			continue
		}
		out[k] = v
	}
	return out
}

func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
