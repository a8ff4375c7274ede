package plan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/template"
)

// DefaultRegistration is the structured template every registration starts
// from; a service's `registration:` is merged over it (docs/configuration.md).
func DefaultRegistration() map[string]any {
	return map[string]any{
		"ID":      "{{id}}",
		"Name":    "{{name}}",
		"Address": "{{address}}",
		"Port":    "{{$port$}}",
		"Tags":    "{{$tags$}}",
		"Meta":    "{{$meta$}}",
		"Connect": map[string]any{
			"SidecarService": map[string]any{
				"Proxy": map[string]any{
					"LocalServiceAddress": "{{address}}",
					"LocalServicePort":    "{{$port$}}",
					"Upstreams":           "{{$upstreams$}}",
				},
			},
		},
	}
}

func transparentOverlay(t *config.Transparent) map[string]any {
	return map[string]any{"Connect": map[string]any{"SidecarService": map[string]any{"Proxy": map[string]any{
		"Mode":             "transparent",
		"TransparentProxy": map[string]any{"OutboundListenerPort": t.OutboundPort},
	}}}}
}

func (pl *Plan) buildRegistration(s *config.Service, h Host, vars template.Vars) error {
	tmpl := DefaultRegistration()
	if s.Transparent != nil {
		tmpl = template.Merge(tmpl, transparentOverlay(s.Transparent))
	}
	if s.Proxy.PrometheusScrapePath != "" {
		tmpl = template.Merge(tmpl, map[string]any{"Connect": map[string]any{"SidecarService": map[string]any{
			"Proxy": map[string]any{"Config": map[string]any{"envoy_prometheus_bind_addr": "0.0.0.0:20200"}}}}})
	}
	if h.Global.Defaults.Registration != nil && s.Registration == nil {
		tmpl = template.Merge(tmpl, normalize(h.Global.Defaults.Registration))
	}
	if s.Registration != nil {
		tmpl = template.Merge(tmpl, normalize(s.Registration))
	}
	out, err := template.Render(tmpl, vars, "registration")
	if err != nil {
		return err
	}
	raw, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("registration: %w", err)
	}
	var reg api.AgentServiceRegistration
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&reg); err != nil {
		return fmt.Errorf("registration: does not fit Consul's service registration: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if reg.ID != pl.ID || reg.Name != pl.Name {
		return fmt.Errorf("registration: ID and Name come from service.id and service.name; do not set them in the template")
	}
	if reg.Connect == nil || reg.Connect.SidecarService == nil {
		return fmt.Errorf("registration: Connect.SidecarService must stay: meshx runs a sidecar for every service")
	}
	if reg.Meta == nil {
		reg.Meta = map[string]string{}
	}
	for k := range reg.Meta {
		if strings.HasPrefix(k, "meshx-") {
			return fmt.Errorf("registration.Meta.%s: the prefix \"meshx-\" is reserved", k)
		}
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
	pl.Hash = Hash(&reg)
	reg.Meta[MetaHash] = pl.Hash
	pl.Registration = &reg
	return nil
}

// normalize turns YAML-decoded values (map[string]any with nested
// map[string]interface{} and []interface{}) into the shapes Render walks.
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
