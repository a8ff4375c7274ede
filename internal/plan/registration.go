package plan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/template"
)

// DefaultRegistration is the structured template every registration starts
// from; meshx.yaml's defaults.registration and then the service's own
// `registration:` are merged over it (docs/configuration.md). The service's
// Address is set only when service.address is written: otherwise Consul
// advertises the node's address, and {{address}} (default 127.0.0.1) is only
// where the sidecar reaches the app.
//
// The sidecar gets one check of its own, an alias of the service: meshx's TTL
// already passes only while the proxy accepts, so the sidecar is healthy the
// moment the service is. Without it Consul adds a TCP check of the proxy every
// 10s whose first run it staggers by up to 10s: peers saw "no healthy
// instances" for that long after meshx-proxy was ready.
func DefaultRegistration() map[string]any {
	return map[string]any{
		"ID":   "{{id}}",
		"Name": "{{name}}",
		"Port": "{{$port$}}",
		"Tags": "{{$tags$}}",
		"Meta": "{{$meta$}}",
		"Connect": map[string]any{
			"SidecarService": map[string]any{
				"Checks": []any{map[string]any{
					"Name":         "meshx: follows {{id}}",
					"AliasService": "{{id}}",
				}},
				"Proxy": map[string]any{
					"LocalServiceAddress": "{{address}}",
					"LocalServicePort":    "{{$port$}}",
					"Upstreams":           "{{$upstreams$}}",
				},
			},
		},
	}
}

func proxyOverlay(m map[string]any) map[string]any {
	return map[string]any{"Connect": map[string]any{"SidecarService": map[string]any{"Proxy": m}}}
}

// baseTemplate is the default registration with what the service-config's
// own fields add to it.
func baseTemplate(s *config.Service, g *config.Global) map[string]any {
	tmpl := DefaultRegistration()
	if config.Advertisable(s.Address) {
		tmpl["Address"] = "{{address}}"
	}
	if t := s.Transparent; t != nil {
		tmpl = template.Merge(tmpl, proxyOverlay(map[string]any{
			"Mode":             "transparent",
			"TransparentProxy": map[string]any{"OutboundListenerPort": t.OutboundPort},
		}))
	}
	if s.Proxy.PrometheusScrapePath != "" {
		tmpl = template.Merge(tmpl, proxyOverlay(map[string]any{
			"Config": map[string]any{"envoy_prometheus_bind_addr": "0.0.0.0:{{metrics_port}}"},
		}))
	}
	if s.Network.Namespace {
		tmpl = template.Merge(tmpl, namespaceOverlay(g.Network.HostAddress.IsValid()))
	}
	return tmpl
}

// namespaceOverlay is what a service in its own network namespace adds: its
// sidecar listens on every address of the namespace (the published port
// forwards there), and both are advertised at the host's address when
// meshx.yaml sets one; otherwise Consul advertises the node's address, where
// the port is published too.
func namespaceOverlay(hostAddress bool) map[string]any {
	side := map[string]any{"Proxy": map[string]any{"Config": map[string]any{"bind_address": "0.0.0.0"}}}
	o := map[string]any{"Connect": map[string]any{"SidecarService": side}}
	if hostAddress {
		o["Address"] = "{{host_address}}"
		side["Address"] = "{{host_address}}"
	}
	return o
}

// FieldError is a problem found while rendering a service, at a field of its
// service-config, or of meshx.yaml when Global is set.
type FieldError struct {
	Field  string // e.g. "registration.Meta.owner", "proxy.command[2]"
	Msg    string
	Global bool // the field is meshx.yaml's (defaults.registration...)
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// fieldError turns a template error into a FieldError at its template path.
func fieldError(err error) error {
	var uv *template.UnknownVarError
	var pe *template.PathError
	switch {
	case errors.As(err, &uv):
		return &FieldError{Field: uv.Path, Msg: fmt.Sprintf("unknown template variable {{%s}}", uv.Var),
			Global: isGlobal(uv.Path)}
	case errors.As(err, &pe):
		return &FieldError{Field: pe.Path, Msg: pe.Err.Error(), Global: isGlobal(pe.Path)}
	}
	return err
}

const globalRegistration = "defaults.registration"

func isGlobal(path string) bool { return strings.HasPrefix(path, globalRegistration) }

func (pl *Plan) buildRegistration(s *config.Service, h Host, vars template.Vars) error {
	base := baseTemplate(s, h.Global)
	if !h.Global.Metrics.Disabled {
		base = template.Merge(base, map[string]any{"Connect": map[string]any{"SidecarService": map[string]any{
			"Meta": map[string]any{MetaPrometheusPort: "{{proxy_metrics_port}}", MetaPrometheusPath: MetricsPath}}}})
	}
	layers := []struct {
		tmpl map[string]any
		path string
	}{
		{base, "registration"},
		{h.Global.Defaults.Registration, globalRegistration},
		{s.Registration, "registration"},
	}
	var merged map[string]any
	for i, l := range layers {
		if l.tmpl == nil {
			continue
		}
		if i > 0 {
			if err := checkKeys(l.tmpl, reflect.TypeFor[api.AgentServiceRegistration](), l.path); err != nil {
				return err
			}
		}
		out, err := template.Render(normalize(l.tmpl), vars, l.path)
		if err != nil {
			return fieldError(err)
		}
		if merged == nil {
			merged = out.(map[string]any)
		} else {
			merged = template.Merge(merged, out.(map[string]any))
		}
	}
	reg, err := decodeRegistration(merged)
	if err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			fe.locate(s.Registration, h.Global.Defaults.Registration)
		}
		return err
	}
	if reg.ID != pl.ID {
		return &FieldError{Field: "registration.ID", Msg: "the ID comes from service.id; do not set it in the template"}
	}
	if reg.Name != pl.Name {
		return &FieldError{Field: "registration.Name", Msg: "the name comes from service.name; do not set it in the template"}
	}
	if reg.Connect == nil || reg.Connect.SidecarService == nil {
		return &FieldError{Field: "registration.Connect", Msg: "Connect.SidecarService must stay: meshx runs a sidecar for every service"}
	}
	if reg.Connect.SidecarService.Port == 0 {
		reg.Connect.SidecarService.Port = pl.SidecarPort
	}
	pl.SidecarPort = reg.Connect.SidecarService.Port
	if err := checkRegistration(reg, pl.SidecarID); err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			fe.locate(s.Registration, h.Global.Defaults.Registration)
		}
		return err
	}
	if reg.Meta == nil {
		reg.Meta = map[string]string{}
	}
	reg.Meta[MetaManaged] = "true"
	reg.Meta[MetaHost] = h.Hostname
	reg.Meta[MetaName] = pl.Name
	reg.Checks = append(reg.Checks, &api.AgentServiceCheck{
		CheckID: pl.CheckID,
		Name:    "meshx heartbeat",
		Notes:   "passing while meshx-proxy runs the proxy and the app answers its probe",
		TTL:     s.Check.TTL.String(),
		Status:  api.HealthCritical,
	})
	pl.Hash = Hash(reg)
	reg.Meta[MetaHash] = pl.Hash
	pl.Registration = reg
	return nil
}

// locate turns the Go field path of a JSON decoding error
// ("registration.Checks.Interval") into the template path that wrote the
// value ("registration.Checks[0].Interval"), in the service's template or
// else in meshx.yaml's.
func (e *FieldError) locate(own, global map[string]any) {
	rest, ok := strings.CutPrefix(e.Field, "registration.")
	if !ok {
		return
	}
	if p, ok := findPath(own, strings.Split(rest, ".")); ok {
		e.Field = "registration" + p
	} else if p, ok := findPath(global, strings.Split(rest, ".")); ok {
		e.Field, e.Global = globalRegistration+p, true
	}
}

// findPath follows keys through maps, and through lists into the item a
// key's index names ("Checks[1]") or else their first item that holds the
// next key.
func findPath(v any, keys []string) (string, bool) {
	if len(keys) == 0 {
		return "", true
	}
	switch x := v.(type) {
	case map[string]any:
		key, idx, hasIdx := splitIndex(keys[0])
		next, ok := x[key]
		if !ok {
			break
		}
		if l, isList := next.([]any); hasIdx && isList && idx < len(l) {
			p, ok := findPath(l[idx], keys[1:])
			return fmt.Sprintf(".%s[%d]%s", key, idx, p), ok
		}
		if !hasIdx {
			p, ok := findPath(next, keys[1:])
			return "." + key + p, ok
		}
	case []any:
		for i, item := range x {
			if p, ok := findPath(item, keys); ok {
				return fmt.Sprintf("[%d]%s", i, p), true
			}
		}
	}
	return "", false
}

// splitIndex splits "Checks[1]" into "Checks", 1.
func splitIndex(seg string) (string, int, bool) {
	key, rest, ok := strings.Cut(seg, "[")
	if !ok {
		return seg, 0, false
	}
	n, err := strconv.Atoi(strings.TrimSuffix(rest, "]"))
	if err != nil || n < 0 {
		return seg, 0, false
	}
	return key, n, true
}

// decodeRegistration reads the rendered template as Consul's registration,
// strictly; a value of the wrong type is located at its field.
func decodeRegistration(m map[string]any) (*api.AgentServiceRegistration, error) {
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, &FieldError{Field: "registration", Msg: err.Error()}
	}
	var reg api.AgentServiceRegistration
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&reg); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, &FieldError{Field: "registration." + te.Field,
				Msg: fmt.Sprintf("must be %s, not a JSON %s", jsonKind(te.Type), te.Value)}
		}
		return nil, &FieldError{Field: "registration",
			Msg: "does not fit Consul's service registration: " + strings.TrimPrefix(err.Error(), "json: ")}
	}
	return &reg, nil
}

func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number (use \"{{$var$}}\" to insert a number typed)"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct, reflect.Pointer:
		return "a mapping"
	}
	return t.String()
}

// checkKeys reports a key of a user template that Consul's registration does
// not have, before rendering, at its path. Names are matched exactly: Consul's
// JSON decoding ignores case, but merging over the default template does not,
// so "meta:" would not merge with the default "Meta".
func checkKeys(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch x := v.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Map:
			for _, k := range slices.Sorted(maps.Keys(x)) {
				if err := checkKeys(x[k], t.Elem(), path+"."+k); err != nil {
					return err
				}
			}
		case reflect.Struct:
			fields := jsonFields(t)
			for _, k := range slices.Sorted(maps.Keys(x)) {
				ft, ok := fields[k]
				if !ok {
					for name := range fields {
						if strings.EqualFold(name, k) {
							return &FieldError{Field: path + "." + k, Msg: fmt.Sprintf("write %s: names are case-sensitive here", name),
								Global: isGlobal(path)}
						}
					}
					return &FieldError{Field: path + "." + k, Msg: "unknown field: Consul's service registration has no " + k,
						Global: isGlobal(path)}
				}
				if err := checkKeys(x[k], ft, path+"."+k); err != nil {
					return err
				}
			}
		}
	case []any:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for i, e := range x {
				if err := checkKeys(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// jsonFields maps the JSON names of a struct's fields (embedded ones
// included) to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-" || !f.IsExported():
		case f.Anonymous && name == "":
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				maps.Copy(out, jsonFields(ft))
			}
		case name == "":
			out[f.Name] = f.Type
		default:
			out[name] = f.Type
		}
	}
	return out
}

// normalize copies a YAML-decoded template into the shapes Render walks.
func normalize(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = normalizeValue(v)
	}
	return out
}

func normalizeValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		return normalize(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalizeValue(e)
		}
		return out
	}
	return v
}
