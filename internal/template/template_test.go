package template

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

var vars = Vars{
	"name":     "web",
	"port":     8080,
	"tags":     []string{"v1", "v2"},
	"empty":    "",
	"nothing":  nil,
	"on":       true,
	"ip":       netip.MustParseAddr("127.0.0.1"),
	"ups":      []any{map[string]any{"DestinationName": "db", "LocalBindPort": 9191}},
	"meta":     map[string]any{"team": "a"},
	"quote":    `say "hi"`,
	"slash":    `C:\path\n`,
	"newline":  "line1\nline2",
	"script":   `</script><script>alert(1)</script>`,
	"braces":   "{{port}}",
	"unicode":  "héllo \u2028 \x00",
	"jsonlike": `"}, "ID": "evil`,
}

func TestRenderTyped(t *testing.T) {
	tests := []struct {
		name string
		tmpl any
		want any
	}{
		{"int stays an int", "{{$port$}}", 8080},
		{"spaces around the tag", "  {{$port$}} ", 8080},
		{"list stays a list", "{{$tags$}}", []string{"v1", "v2"}},
		{"list of maps", "{{$ups$}}", []any{map[string]any{"DestinationName": "db", "LocalBindPort": 9191}}},
		{"map stays a map", "{{$meta$}}", map[string]any{"team": "a"}},
		{"bool stays a bool", "{{$on$}}", true},
		{"nil stays nil", "{{$nothing$}}", nil},
		{"typed tag with text around is text", "port {{$port$}}", "port 8080"},
		{"two typed tags are text", "{{$port$}}{{$port$}}", "80808080"},
		{"text tag", "{{port}}", "8080"},
		{"text tag with spaces", "{{ port }}", "8080"},
		{"text in text", "http://{{name}}:{{port}}/health", "http://web:8080/health"},
		{"list as text", "tags={{tags}}", "tags=v1,v2"},
		{"stringer as text", "{{ip}}:{{port}}", "127.0.0.1:8080"},
		{"nil as text", "[{{nothing}}]", "[]"},
		{"no tags", "plain", "plain"},
		{"a single brace is text", "{ not a tag }", "{ not a tag }"},
		{"closing braces alone are text", "}}", "}}"},
		{"inserted text is not rendered again", "{{braces}}", "{{port}}"},
		{"non-strings pass through", 42, 42},
		{"floats pass through", 1.5, 1.5},
		{"nil passes through", nil, nil},
		{"maps and lists are walked", map[string]any{"a": []any{"{{$port$}}", "{{name}}", 1}, "b": map[string]any{"c": "{{$tags$}}"}},
			map[string]any{"a": []any{8080, "web", 1}, "b": map[string]any{"c": []string{"v1", "v2"}}}},
		{"keys are not rendered", map[string]any{"{{name}}": "x"}, map[string]any{"{{name}}": "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Render(tt.tmpl, vars, "t")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestRenderDoesNotModifyTheTemplate(t *testing.T) {
	tmpl := map[string]any{"a": []any{"{{name}}"}, "b": map[string]any{"c": "{{$port$}}"}}
	if _, err := Render(tmpl, vars, "t"); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"a": []any{"{{name}}"}, "b": map[string]any{"c": "{{$port$}}"}}
	if !reflect.DeepEqual(tmpl, want) {
		t.Errorf("template changed: %#v", tmpl)
	}
}

func TestRenderErrors(t *testing.T) {
	tests := []struct {
		name string
		tmpl any
		want string
		path string
		uv   string // the unknown variable, for *UnknownVarError
	}{
		{"unknown text variable", map[string]any{"Meta": map[string]any{"owner": "{{team}}"}},
			"registration.Meta.owner: unknown template variable {{team}}", "registration.Meta.owner", "team"},
		{"unknown typed variable", map[string]any{"Port": "{{$prot$}}"},
			"registration.Port: unknown template variable {{prot}}", "registration.Port", "prot"},
		{"unknown variable in a list", map[string]any{"Checks": []any{map[string]any{"HTTP": "http://{{host}}/"}}},
			"registration.Checks[0].HTTP: unknown template variable {{host}}", "registration.Checks[0].HTTP", "host"},
		{"empty tag", map[string]any{"Name": "{{}}"},
			"registration.Name: unknown template variable {{}}", "registration.Name", ""},
		{"unclosed tag", map[string]any{"Name": "{{name"},
			`registration.Name: "{{" without its "}}" (write {{name}})`, "registration.Name", ""},
		{"list of maps as text", map[string]any{"Tags": []any{"x{{ups}}"}},
			`registration.Tags[0]: {{ups}}: a []interface {} has no text form: use "{{$name$}}" alone in a value to insert it typed`,
			"registration.Tags[0]", ""},
		{"map as text", map[string]any{"Meta": "{{meta}}"},
			`registration.Meta: {{meta}}: a map[string]interface {} has no text form: use "{{$name$}}" alone in a value to insert it typed`,
			"registration.Meta", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Render(tt.tmpl, vars, "registration")
			if err == nil || err.Error() != tt.want {
				t.Fatalf("err = %v\nwant  %s", err, tt.want)
			}
			var uv *UnknownVarError
			var pe *PathError
			switch {
			case errors.As(err, &uv):
				if uv.Path != tt.path || tt.uv != uv.Var {
					t.Errorf("UnknownVarError{%q, %q}, want {%q, %q}", uv.Path, uv.Var, tt.path, tt.uv)
				}
			case errors.As(err, &pe):
				if pe.Path != tt.path {
					t.Errorf("PathError.Path = %q, want %q", pe.Path, tt.path)
				}
			default:
				t.Errorf("%T carries no template path", err)
			}
		})
	}
}

// TestRenderJSONSafe renders hostile values into a registration-like template
// and checks that the JSON document stays valid and the values come back
// byte for byte: values are data, never JSON or template syntax.
func TestRenderJSONSafe(t *testing.T) {
	hostile := []string{"quote", "slash", "newline", "script", "braces", "unicode", "jsonlike"}
	tmpl := map[string]any{"ID": "{{name}}", "Meta": map[string]any{}}
	for _, k := range hostile {
		tmpl["Meta"].(map[string]any)["text_"+k] = "<{{" + k + "}}>"
		tmpl["Meta"].(map[string]any)["typed_"+k] = "{{$" + k + "$}}"
	}
	out, err := Render(tmpl, vars, "registration")
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatalf("invalid JSON: %s", b)
	}
	if strings.Contains(string(b), "</script>") {
		t.Errorf("</script> appears unescaped in %s", b)
	}
	var back struct {
		ID   string
		Meta map[string]string
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.ID != "web" || len(back.Meta) != 2*len(hostile) {
		t.Errorf("a value broke out of its field: %s", b)
	}
	for _, k := range hostile {
		v := vars[k].(string)
		if got := back.Meta["text_"+k]; got != "<"+v+">" {
			t.Errorf("text %s = %q, want %q", k, got, "<"+v+">")
		}
		if got := back.Meta["typed_"+k]; got != v {
			t.Errorf("typed %s = %q, want %q", k, got, v)
		}
	}
}

func TestRenderString(t *testing.T) {
	got, err := RenderString("{{$port$}}", vars, "proxy.command[3]")
	if err != nil || got != "8080" {
		t.Errorf("typed tag in RenderString = %q, %v; want its text", got, err)
	}
	_, err = RenderString("-sidecar-for {{idd}}", vars, "proxy.command[3]")
	if err == nil || err.Error() != "proxy.command[3]: unknown template variable {{idd}}" {
		t.Errorf("err = %v", err)
	}
}

func TestText(t *testing.T) {
	tests := []struct {
		in   any
		want string
		err  bool
	}{
		{"s", "s", false},
		{7, "7", false},
		{false, "false", false},
		{nil, "", false},
		{[]string{"a", "b"}, "a,b", false},
		{[]string{}, "", false},
		{netip.MustParseAddrPort("[::1]:80"), "[::1]:80", false},
		{map[string]string{}, "", true},
		{[]any{"a"}, "", true},
		{3.5, "", true},
	}
	for _, tt := range tests {
		got, err := Text(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("Text(%#v) = %q, %v", tt.in, got, err)
		}
	}
}

func TestMerge(t *testing.T) {
	base := func() map[string]any {
		return map[string]any{
			"ID":   "{{id}}",
			"Tags": []any{"a", "b"},
			"Meta": map[string]any{"team": "a", "tier": "front"},
			"Connect": map[string]any{"SidecarService": map[string]any{
				"Proxy": map[string]any{"LocalServicePort": "{{$port$}}", "Upstreams": "{{$upstreams$}}"},
			}},
			"Port": 1,
		}
	}
	tests := []struct {
		name string
		over map[string]any
		want map[string]any
	}{
		{"nil over", nil, base()},
		{"empty over", map[string]any{}, base()},
		{"new key", map[string]any{"Weights": map[string]any{"Passing": 10}},
			func() map[string]any { m := base(); m["Weights"] = map[string]any{"Passing": 10}; return m }()},
		{"deep map merge", map[string]any{"Meta": map[string]any{"owner": "me", "team": "b"},
			"Connect": map[string]any{"SidecarService": map[string]any{"Proxy": map[string]any{"Config": map[string]any{"x": 1}}}}},
			func() map[string]any {
				m := base()
				m["Meta"] = map[string]any{"team": "b", "tier": "front", "owner": "me"}
				m["Connect"] = map[string]any{"SidecarService": map[string]any{"Proxy": map[string]any{
					"LocalServicePort": "{{$port$}}", "Upstreams": "{{$upstreams$}}", "Config": map[string]any{"x": 1}}}}
				return m
			}()},
		{"lists replace", map[string]any{"Tags": []any{"c"}},
			func() map[string]any { m := base(); m["Tags"] = []any{"c"}; return m }()},
		{"scalar replaces map", map[string]any{"Meta": "{{$meta$}}"},
			func() map[string]any { m := base(); m["Meta"] = "{{$meta$}}"; return m }()},
		{"map replaces scalar", map[string]any{"Port": map[string]any{"x": 1}},
			func() map[string]any { m := base(); m["Port"] = map[string]any{"x": 1}; return m }()},
		{"nil deletes", map[string]any{"Tags": nil, "Meta": map[string]any{"tier": nil}},
			func() map[string]any {
				m := base()
				delete(m, "Tags")
				m["Meta"] = map[string]any{"team": "a"}
				return m
			}()},
		{"nil deletes a nested block", map[string]any{"Connect": map[string]any{"SidecarService": map[string]any{"Proxy": map[string]any{"Upstreams": nil}}}},
			func() map[string]any {
				m := base()
				m["Connect"] = map[string]any{"SidecarService": map[string]any{"Proxy": map[string]any{"LocalServicePort": "{{$port$}}"}}}
				return m
			}()},
		{"nil for a missing key", map[string]any{"Nope": nil}, base()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := base()
			got := Merge(b, tt.over)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %#v\nwant %#v", got, tt.want)
			}
			if !reflect.DeepEqual(b, base()) {
				t.Errorf("Merge modified base: %#v", b)
			}
		})
	}
}
