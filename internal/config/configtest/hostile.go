// Package configtest holds a corpus of hostile configuration inputs, shared by
// the unit tests (meshx-init validate, no agent) and the integration tests
// (meshx-init run against a real Consul agent). Every case must be refused
// with exit code 2, located at its file, line and field, and change nothing:
// no registration, no state written.
package configtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Case is one hostile input.
type Case struct {
	Name string
	// File is where the input goes, relative to the config dir:
	// "meshx.yaml" or "services.d/<name>".
	File string
	// Content is the file's content; "{{dir}}" stands for the config dir.
	// For a File of meshx.yaml it is the whole meshx.yaml; for a
	// service-config the harness writes a valid meshx.yaml of its own.
	Content string
	// Want follows the file's absolute path in the error output, literally:
	// ":4: service.port: must be a whole number".
	Want string
	// Setup, when set, makes File something other than a plain file
	// (a symbolic link, a directory...) after Content was written.
	Setup func(dir, path string) error
	// Secret must not appear in any output.
	Secret string
}

// Path is the case's file under a config dir.
func (c Case) Path(dir string) string { return filepath.Join(dir, c.File) }

// Write creates the case's file (and whatever Setup makes) under dir.
func (c Case) Write(dir string) error {
	p := c.Path(dir)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(c.Content, "{{dir}}", dir)), 0o644); err != nil {
		return err
	}
	if c.Setup != nil {
		return c.Setup(dir, p)
	}
	return nil
}

// SecretToken is what the secret cases' token file holds.
const SecretToken = "7c1e5d2a-b0f9-4e33-9d1c-5ecre7t0ken1"

func svc(name, content, want string) Case {
	return Case{Name: name, File: "services.d/a.yaml", Content: content, Want: want}
}

func svcJSON(name, content, want string) Case {
	return Case{Name: name, File: "services.d/a.json", Content: content, Want: want}
}

func global(name, content, want string) Case {
	return Case{Name: name, File: "meshx.yaml", Content: content, Want: want}
}

func with(c Case, setup func(dir, path string) error) Case { c.Setup = setup; return c }

// replaceWith removes the written file and puts what make creates in its place.
func replaceWith(make func(path string) error) func(dir, path string) error {
	return func(_, path string) error {
		if err := os.Remove(path); err != nil {
			return err
		}
		return make(path)
	}
}

func symlinkTo(target string) func(dir, path string) error {
	return replaceWith(func(p string) error { return os.Symlink(target, p) })
}

// secretLink makes the case's file a symbolic link to a token file.
func secretLink(dir, path string) error {
	tok := filepath.Join(dir, "consul.token")
	if err := os.WriteFile(tok, []byte(SecretToken+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil {
		return err
	}
	return os.Symlink(tok, path)
}

// withService adds a valid service-config, so that meshx.yaml's default
// registration is rendered.
func withService(dir, _ string) error {
	p := filepath.Join(dir, "services.d", "web.yaml")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte("version: 1\nservice: {name: web}\n"), 0o644)
}

// mkdir makes a directory at dir/rel.
func mkdir(rel string) func(dir, path string) error {
	return func(dir, _ string) error { return os.MkdirAll(filepath.Join(dir, rel), 0o755) }
}

const head = "version: 1\nservice:\n  name: web\n" // lines 1-3

// reg is a service-config whose registration: starts at line 4.
func reg(body string) string { return head + "registration:\n" + body }

func lines(prefix, format string, n int) string {
	var b strings.Builder
	b.WriteString(prefix)
	for i := range n {
		if strings.Count(format, "%d") == 2 {
			fmt.Fprintf(&b, format, i, i)
		} else {
			fmt.Fprintf(&b, format, i)
		}
	}
	return b.String()
}

func nested(depth int) string {
	return strings.Repeat("{a: ", depth) + "1" + strings.Repeat("}", depth)
}

// laughs is a mapping whose aliases expand to 10^n items ("billion laughs").
func laughs(n int) string {
	var b strings.Builder
	b.WriteString("  Meta:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < n; i++ {
		ref := fmt.Sprintf("*a%d", i-1)
		fmt.Fprintf(&b, "    a%d: &a%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(ref+", ", 10), ", "))
	}
	return b.String()
}

// Cases returns the corpus.
func Cases() []Case {
	long := strings.Repeat("x", 600)
	cases := []Case{
		// Numbers with a fraction or an exponent where an integer is meant.
		svc("port with a fraction", head+"  port: 8080.9\n", ":4: service.port: must be a whole number, not the number 8080.9"),
		svc("port with an exponent", head+"  port: 1e3\n", ":4: service.port: must be a whole number, not the number 1e3"),
		svc("port huge", head+"  port: 99999999999999999999\n", ":4: service.port: must be a whole number, not the number 99999999999999999999"),
		svc("port negative", head+"  port: -1\n", ":4: service.port: port -1 out of range"),
		svc("port above 65535", head+"  port: 65536\n", ":4: service.port: port 65536 out of range"),
		svc("port a string", head+"  port: \"8080\"\n", ":4: service.port: must be a whole number, not the string \"8080\""),
		svc("port a boolean", head+"  port: true\n", ":4: service.port: must be a whole number, not true"),
		svc("port a list", head+"  port: [80]\n", ":4: service.port: must be a whole number, not a list"),
		svc("port a mapping", head+"  port: {a: 1}\n", ":4: service.port: must be a whole number, not a mapping"),
		svc("version with a fraction", "version: 1.9\nservice: {name: web}\n", ":1: version: must be a whole number, not the number 1.9"),
		svc("version with an exponent", "version: 1e0\nservice: {name: web}\n", ":1: version: must be a whole number, not the number 1e0"),
		svc("version 2", "version: 2\nservice: {name: web}\n", ":1: version: unsupported version 2"),
		svc("version a string", "version: \"1\"\nservice: {name: web}\n", ":1: version: must be a whole number, not the string \"1\""),
		svc("max_restarts with a fraction", head+"proxy:\n  max_restarts: 2.7\n", ":5: proxy.max_restarts: must be a whole number, not the number 2.7"),
		svc("max_restarts zero", head+"proxy:\n  max_restarts: 0\n", ":5: proxy.max_restarts: must be at least 1"),
		svc("max_restarts below -1", head+"proxy:\n  max_restarts: -2\n", ":5: proxy.max_restarts: must be at least 1"),
		svc("upstream port with a fraction", head+"upstreams:\n  - name: db\n    port: 9191.5\n", ":6: upstreams[0].port: must be a whole number, not the number 9191.5"),
		svc("upstream port above 65535", head+"upstreams:\n  - name: db\n    port: 70000\n", ":6: upstreams[0].port: port 70000 out of range"),
		svc("outbound port with a fraction", head+"proxy: {mode: envoy}\ntransparent_proxy:\n  enabled: true\n  outbound_port: 15001.5\n", ":7: transparent_proxy.outbound_port: must be a whole number, not the number 15001.5"),
		svc("excluded port with a fraction", head+"proxy: {mode: envoy}\ntransparent_proxy:\n  enabled: true\n  exclude_inbound_ports: [22.5]\n", ":7: transparent_proxy.exclude_inbound_ports[0]: must be a whole number, not the number 22.5"),
		svc("excluded uid too big", head+"proxy: {mode: envoy}\ntransparent_proxy:\n  enabled: true\n  exclude_uids: [99999999999]\n", ":7: transparent_proxy.exclude_uids[0]: uid 99999999999 is above the largest"),
		svc("proxy command program empty", head+"proxy:\n  command: [\"\", x]\n", ":5: proxy.command[0]: the program must not be empty"),
		svc("proxy command with a NUL", head+"proxy:\n  command: [/bin/x, \"a\\0b\"]\n", ":5: proxy.command[1]: an argument cannot hold a NUL byte"),
		svc("excluded uid negative", head+"proxy: {mode: envoy}\ntransparent_proxy:\n  enabled: true\n  exclude_uids: [-1]\n", ":7: transparent_proxy.exclude_uids[0]: uid -1 is negative"),
		svcJSON("JSON port 8080.0", "{\n  \"name\": \"web\",\n  \"port\": 8080.0\n}\n", ":3: port: must be a whole number, not the number 8080.0"),
		svcJSON("JSON port 1e3", "{\n  \"name\": \"web\",\n  \"port\": 1e3\n}\n", ":3: port: must be a whole number, not the number 1e3"),
		svcJSON("JSON local_bind_port with a fraction", "{\"name\": \"web\", \"connect\": {\"sidecar_service\": {\"proxy\": {\"upstreams\": [\n  {\"destination_name\": \"db\", \"local_bind_port\": 9191.1}]}}}}\n",
			":2: connect.sidecar_service.proxy.upstreams[0].local_bind_port: must be a whole number, not the number 9191.1"),
		svcJSON("annotation port with a fraction", "{\"annotations\": {\n\"consul.hashicorp.com/connect-service\": \"web\",\n\"consul.hashicorp.com/connect-service-port\": \"80.5\"}}\n",
			":3: annotations.consul.hashicorp.com/connect-service-port: not a port number: \"80.5\""),
		svcJSON("annotation port a number with a fraction", "{\"annotations\": {\n\"consul.hashicorp.com/connect-service\": \"web\",\n\"consul.hashicorp.com/connect-service-port\": 80.5}}\n",
			":3: annotations.consul.hashicorp.com/connect-service-port: must be a string, not the number 80.5"),
		svcJSON("annotation upstream port with an exponent", "{\"annotations\": {\n\"consul.hashicorp.com/connect-service\": \"web\",\n\"consul.hashicorp.com/connect-service-upstreams\": \"db:1e3\"}}\n",
			":3: annotations.consul.hashicorp.com/connect-service-upstreams: upstream 1 (\"db:1e3\"): not a port number: \"1e3\""),
		svcJSON("annotation excluded port with a fraction", "{\"annotations\": {\n\"consul.hashicorp.com/connect-service\": \"web\",\n\"consul.hashicorp.com/transparent-proxy-exclude-inbound-ports\": \"22,2.5\"}}\n",
			":3: annotations.consul.hashicorp.com/transparent-proxy-exclude-inbound-ports: not a number: \"2.5\""),
		svcJSON("annotation port above 65535", "{\"annotations\": {\n\"consul.hashicorp.com/connect-service\": \"web\",\n\"consul.hashicorp.com/connect-service-port\": \"70000\"}}\n",
			":3: annotations.consul.hashicorp.com/connect-service-port: port 70000 out of range"),

		// Keys written twice, in YAML and in JSON.
		svc("name twice", "version: 1\nservice:\n  name: web\n  name: api\n", ":4: service.name: written twice (first at line 3)"),
		svc("version twice", "version: 1\nversion: 1\nservice: {name: web}\n", ":2: version: written twice (first at line 1)"),
		svc("upstream name twice", head+"upstreams:\n  - name: db\n    name: cache\n", ":6: upstreams[0].name: written twice (first at line 5)"),
		svc("meta key twice", head+"  meta:\n    team: a\n    team: b\n", ":6: service.meta.team: written twice (first at line 5)"),
		svc("registration key twice", reg("  Meta: {a: b}\n  Meta: {c: d}\n"), ":6: registration.Meta: written twice (first at line 5)"),
		// A fraction or an exponent where Consul takes an integer, in a template.
		svc("registration port exponent", reg("  Port: 1e3\n"), ":5: registration.Port: must be a whole number"),
		svc("registration weight fraction", reg("  Weights: {Passing: 2.5, Warning: 1}\n"), ":5: registration.Weights.Passing: must be a whole number"),
		svc("registration sidecar port fraction", reg("  Connect:\n    SidecarService: {Port: 21000.5}\n"), ":6: registration.Connect.SidecarService.Port: must be a whole number"),
		svc("quoted and plain key", "version: 1\nservice:\n  name: web\n  \"name\": api\n", ":4: service.name: written twice (first at line 3)"),
		svcJSON("JSON name twice", "{\n  \"name\": \"web\",\n  \"name\": \"api\"\n}\n", ":3: name: written twice (first at line 2)"),
		svcJSON("JSON nested key twice", "{\"name\": \"web\", \"connect\": {\"sidecar_service\": {\n\"proxy\": {},\n\"proxy\": {}}}}\n", ":3: connect.sidecar_service.proxy: written twice (first at line 2)"),
		svcJSON("JSON annotation twice", "{\"annotations\": {\n\"consul.hashicorp.com/connect-service\": \"web\",\n\"consul.hashicorp.com/connect-service\": \"api\"}}\n",
			":3: annotations.consul.hashicorp.com/connect-service: written twice (first at line 2)"),
		svcJSON("JSON annotations twice", "{\n\"annotations\": {\"consul.hashicorp.com/connect-service\": \"web\"},\n\"annotations\": {}}\n", ":3: annotations: written twice (first at line 2)"),
		global("meshx.yaml consul twice", "version: 1\nconsul: {wait: 1s}\nconsul: {wait: 2s}\n", ":3: consul: written twice (first at line 2)"),
		global("meshx.yaml address twice", "version: 1\nconsul:\n  address: http://127.0.0.1:8500\n  address: http://127.0.0.1:8501\n", ":4: consul.address: written twice (first at line 3)"),

		// Meta: Consul's rules and limits, under service: and in registration:.
		svc("meta key with a dot", head+"  meta: {a.b: x}\n", ":4: service.meta.a.b: invalid meta key \"a.b\""),
		svc("meta key with a space", head+"  meta: {\"a b\": x}\n", ":4: service.meta.a b: invalid meta key \"a b\""),
		svc("meta key too long", head+"  meta: {"+strings.Repeat("k", 129)+": x}\n", ":4: service.meta."+strings.Repeat("k", 129)+": invalid meta key"),
		svc("meta value too long", head+"  meta: {team: "+long+"}\n", ":4: service.meta.team: meta value is 600 bytes; Consul allows at most 512"),
		svc("meta pairs too many", head+lines("  meta:\n", "    k%d: v%d\n", 61), ":4: service.meta: 61 meta pairs; at most 60"),
		svc("meta key consul-", head+"  meta: {consul-x: y}\n", ":4: service.meta.consul-x: the meta key prefix \"consul-\" is reserved by Consul"),
		svc("meta key meshx-", head+"  meta: {meshx-host: evil}\n", ":4: service.meta.meshx-host: the meta key prefix \"meshx-\" is reserved"),
		svc("meta key empty", head+"  meta: {\"\": x}\n", ":4: service.meta.: invalid meta key \"\""),
		svc("meta value a number", head+"  meta: {team: 12}\n", ":4: service.meta.team: must be a string, not the number 12"),
		svc("registration meta key with a space", reg("  Meta:\n    \"a b\": x\n"), ":6: registration.Meta.a b: invalid meta key \"a b\""),
		svc("registration meta value too long", reg("  Meta:\n    team: "+long+"\n"), ":6: registration.Meta.team: meta value is 600 bytes"),
		svc("registration meta pairs too many", reg(lines("  Meta:\n", "    k%d: v%d\n", 61)), ":5: registration.Meta: 61 meta pairs; at most 60"),
		svc("registration meta key meshx-", reg("  Meta:\n    meshx-managed: \"false\"\n"), ":6: registration.Meta.meshx-managed: the meta key prefix \"meshx-\" is reserved"),
		svc("registration meta key consul-", reg("  Meta:\n    consul-version: x\n"), ":6: registration.Meta.consul-version: the meta key prefix \"consul-\" is reserved by Consul"),
		svc("registration meta value a mapping", reg("  Meta:\n    team: {a: b}\n"), ":5: registration.Meta: must be a string, not a JSON object"),

		// Weights, checks, Kind: what Consul refuses at registration time.
		svc("weights passing zero", reg("  Weights: {Passing: 0, Warning: 1}\n"), ":5: registration.Weights.Passing: must be 1-65535, not 0"),
		svc("weights passing negative", reg("  Weights: {Passing: -1, Warning: 1}\n"), ":5: registration.Weights.Passing: must be 1-65535, not -1"),
		svc("weights warning negative", reg("  Weights: {Passing: 1, Warning: -1}\n"), ":5: registration.Weights.Warning: must be 0-65535, not -1"),
		svc("weights passing too big", reg("  Weights: {Passing: 70000, Warning: 1}\n"), ":5: registration.Weights.Passing: must be 1-65535, not 70000"),
		svc("weights a string", reg("  Weights: {Passing: many}\n"), ":5: registration.Weights.Passing: must be a whole number"),
		svc("kind connect-proxy", reg("  Kind: connect-proxy\n"), ":5: registration.Kind: meshx registers typical services"),
		svc("kind mesh-gateway", reg("  Kind: mesh-gateway\n"), ":5: registration.Kind: meshx registers typical services"),
		svc("a Proxy block on the service", reg("  Proxy: {DestinationServiceName: db}\n"), ":5: registration.Proxy: a typical service has no Proxy block"),
		svc("connect native with a sidecar", reg("  Connect: {Native: true}\n"), ":5: registration.Connect.Native: a Connect-native service has no sidecar"),
		svc("check without a kind", reg("  Checks:\n    - Name: nothing\n"), ":6: registration.Checks[0]: a check needs one of"),
		svc("check with two kinds", reg("  Checks:\n    - {TTL: 10s, HTTP: \"http://127.0.0.1/\", Interval: 10s}\n"), ":6: registration.Checks[0]: a check has one kind"),
		svc("http check without interval", reg("  Check: {HTTP: \"http://127.0.0.1:8080/health\"}\n"), ":5: registration.Check.Interval: a HTTP check needs an Interval of at least 1s"),
		svc("check interval not a duration", reg("  Checks:\n    - {TCP: \"127.0.0.1:8080\", Interval: soon}\n"), ":6: registration.Checks[0].Interval: must be a positive duration"),
		svc("check interval 1ns", reg("  Checks:\n    - {TCP: \"127.0.0.1:8080\", Interval: 1ns}\n"), ":6: registration.Checks[0].Interval: a TCP check needs an Interval of at least 1s"),
		svc("http check not http", reg("  Checks:\n    - {HTTP: \"ftp://127.0.0.1/\", Interval: 10s}\n"), ":6: registration.Checks[0].HTTP: must be an http:// or https:// URL"),
		svc("tcp check without port", reg("  Checks:\n    - {TCP: nohost, Interval: 10s}\n"), ":6: registration.Checks[0].TCP: must be host:port"),
		svc("tcp check port too big", reg("  Checks:\n    - {TCP: \"127.0.0.1:70000\", Interval: 10s}\n"), ":6: registration.Checks[0].TCP: must be host:port"),
		svc("check status unknown", reg("  Checks:\n    - {TTL: 30s, Status: ok}\n"), ":6: registration.Checks[0].Status: must be passing, warning or critical"),
		svc("check ttl negative", reg("  Checks:\n    - {TTL: -5s}\n"), ":6: registration.Checks[0].TTL: must be a positive duration"),
		svc("ttl check with interval", reg("  Checks:\n    - {TTL: 30s, Interval: 10s}\n"), ":6: registration.Checks[0].Interval: a TTL check takes no Interval"),
		svc("deregister-after not a duration", reg("  Checks:\n    - {TTL: 30s, DeregisterCriticalServiceAfter: later}\n"), ":6: registration.Checks[0].DeregisterCriticalServiceAfter: must be a positive duration"),
		svc("check failures negative", reg("  Checks:\n    - {TTL: 30s, FailuresBeforeCritical: -1}\n"), ":6: registration.Checks[0].FailuresBeforeCritical: must not be negative"),
		svc("check a list item null", reg("  Checks:\n    - null\n"), ":6: registration.Checks[0]: must be a mapping, not null"),
		svc("sidecar check without kind", reg("  Connect:\n    SidecarService:\n      Checks:\n        - Name: x\n"), ":8: registration.Connect.SidecarService.Checks[0]: a check needs one of"),
		svc("unknown registration field", reg("  Colour: red\n"), ":5: registration.Colour: unknown field"),

		// Tags, ports and addresses given through registration: are held to
		// the rules of the same fields under service:.
		svc("registration tag empty", reg("  Tags: [\"\"]\n"), ":5: registration.Tags[0]: invalid tag \"\""),
		svc("registration tag with a newline", reg("  Tags: [\"a\\nb\"]\n"), ":5: registration.Tags[0]: invalid tag \"a\\nb\""),
		svc("registration tags too many", reg(lines("  Tags:\n", "    - t%d%d\n", 65)), ":5: registration.Tags: 65 tags; at most 64"),
		svc("registration tag too long", reg("  Tags: ["+strings.Repeat("t", 300)+"]\n"), ":5: registration.Tags[0]: tag is 300 bytes; at most 256"),
		svc("registration port too big", reg("  Port: 70000\n"), ":5: registration.Port: port 70000 out of range"),
		svc("registration port negative", reg("  Port: -1\n"), ":5: registration.Port: port -1 out of range"),
		svc("registration port with a fraction", reg("  Port: 8080.5\n"), ":5: registration.Port: must be a whole number"),
		svc("registration address loopback", reg("  Address: 127.0.0.1\n"), ":5: registration.Address: \"127.0.0.1\" is a loopback address"),
		svc("registration address localhost", reg("  Address: localhost\n"), ":5: registration.Address: \"localhost\" is a loopback name"),
		svc("registration address from the template", reg("  Address: \"{{address}}\"\n"), ":5: registration.Address: \"127.0.0.1\" is a loopback address"),
		svc("registration address unspecified", reg("  Address: 0.0.0.0\n"), ":5: registration.Address: \"0.0.0.0\" is the unspecified address"),
		svc("registration address IPv6 unspecified", reg("  Address: \"::\"\n"), ":5: registration.Address: \"::\" is the unspecified address"),
		svc("registration address not an address", reg("  Address: 999.1.1.1\n"), ":5: registration.Address: invalid address \"999.1.1.1\""),
		svc("registration address multicast", reg("  Address: 224.0.0.1\n"), ":5: registration.Address: \"224.0.0.1\" is a multicast address"),
		svc("registration address broadcast", reg("  Address: 255.255.255.255\n"), ":5: registration.Address: \"255.255.255.255\" is the broadcast address"),
		svc("registration address link-local", reg("  Address: \"fe80::1\"\n"), ":5: registration.Address: \"fe80::1\" is a link-local address"),
		svc("registration tagged address loopback", reg("  TaggedAddresses:\n    lan: {Address: 127.0.0.1, Port: 80}\n"), ":6: registration.TaggedAddresses.lan.Address: \"127.0.0.1\" is a loopback address"),
		svc("registration tagged port too big", reg("  TaggedAddresses:\n    wan: {Address: 10.0.0.1, Port: 70000}\n"), ":6: registration.TaggedAddresses.wan.Port: port 70000 out of range"),
		svc("sidecar address loopback", reg("  Connect:\n    SidecarService:\n      Address: 127.0.0.1\n"), ":7: registration.Connect.SidecarService.Address: \"127.0.0.1\" is a loopback address"),
		svc("sidecar port too big", reg("  Connect:\n    SidecarService:\n      Port: 70000\n"), ":7: registration.Connect.SidecarService.Port: port 70000 out of range"),
		svc("sidecar kind", reg("  Connect:\n    SidecarService:\n      Kind: mesh-gateway\n"), ":7: registration.Connect.SidecarService.Kind: a sidecar is a \"connect-proxy\""),
		svc("sidecar id", reg("  Connect:\n    SidecarService:\n      ID: other\n"), ":7: registration.Connect.SidecarService.ID: the sidecar's id is"),
		svc("sidecar local service port too big", reg("  Connect:\n    SidecarService:\n      Proxy:\n        LocalServicePort: 70000\n"), ":8: registration.Connect.SidecarService.Proxy.LocalServicePort: port 70000 out of range"),
		svc("sidecar local service address multicast", reg("  Connect:\n    SidecarService:\n      Proxy:\n        LocalServiceAddress: 224.0.0.1\n"), ":8: registration.Connect.SidecarService.Proxy.LocalServiceAddress: 224.0.0.1 is a multicast address"),
		svc("sidecar upstream port too big", reg("  Connect:\n    SidecarService:\n      Proxy:\n        Upstreams:\n          - {DestinationName: db, LocalBindPort: 70000}\n"), ":9: registration.Connect.SidecarService.Proxy.Upstreams[0].LocalBindPort: port 70000 out of range"),
		svc("sidecar upstream bad name", reg("  Connect:\n    SidecarService:\n      Proxy:\n        Upstreams:\n          - {DestinationName: \"Bad Name\", LocalBindPort: 9000}\n"), ":9: registration.Connect.SidecarService.Proxy.Upstreams[0].DestinationName: invalid upstream name"),
		svc("sidecar upstream multicast bind", reg("  Connect:\n    SidecarService:\n      Proxy:\n        Upstreams:\n          - {DestinationName: db, LocalBindPort: 9000, LocalBindAddress: 224.0.0.1}\n"), ":9: registration.Connect.SidecarService.Proxy.Upstreams[0].LocalBindAddress: 224.0.0.1 is a multicast address"),
		svc("sidecar upstream port zero", reg("  Connect:\n    SidecarService:\n      Proxy:\n        Upstreams:\n          - {DestinationName: db, LocalBindPort: 0}\n"), ":9: registration.Connect.SidecarService.Proxy.Upstreams[0].LocalBindPort: port 0 out of range"),
		svc("sidecar upstream listeners clash", reg("  Connect:\n    SidecarService:\n      Proxy:\n        Upstreams:\n          - {DestinationName: a, LocalBindPort: 9000}\n          - {DestinationName: b, LocalBindPort: 9000}\n"),
			":10: registration.Connect.SidecarService.Proxy.Upstreams[1].LocalBindPort: :9000 is also the local listener of upstream 1 (a)"),
		svc("sidecar upstream type unknown", reg("  Connect:\n    SidecarService:\n      Proxy:\n        Upstreams:\n          - {DestinationName: db, LocalBindPort: 9000, DestinationType: bogus}\n"), ":9: registration.Connect.SidecarService.Proxy.Upstreams[0].DestinationType: must be service or prepared_query"),
		svc("sidecar upstream bad datacenter", reg("  Connect:\n    SidecarService:\n      Proxy:\n        Upstreams:\n          - {DestinationName: db, LocalBindPort: 9000, Datacenter: \"dc 2\"}\n"), ":9: registration.Connect.SidecarService.Proxy.Upstreams[0].Datacenter: invalid datacenter \"dc 2\""),
		svc("sidecar upstream port and socket", reg("  Connect:\n    SidecarService:\n      Proxy:\n        Upstreams:\n          - {DestinationName: db, LocalBindPort: 9000, LocalBindSocketPath: /run/db.sock}\n"), ":9: registration.Connect.SidecarService.Proxy.Upstreams[0].LocalBindSocketPath: an upstream listens on LocalBindPort or on LocalBindSocketPath, not both"),
		svc("sidecar upstream peer and datacenter", reg("  Connect:\n    SidecarService:\n      Proxy:\n        Upstreams:\n          - {DestinationName: db, LocalBindPort: 9000, DestinationPeer: p1, Datacenter: dc2}\n"), ":9: registration.Connect.SidecarService.Proxy.Upstreams[0].Datacenter: an upstream names a DestinationPeer or a Datacenter, not both"),
		svc("check id meshx's", reg("  Checks:\n    - {CheckID: \"meshx-ttl:web-h1\", TTL: 10s}\n"), ":6: registration.Checks[0].CheckID: the check id prefix \"meshx-\" is meshx's own"),
		svc("sidecar removed", reg("  Connect: null\n"), ":5: registration.Connect: Connect.SidecarService must stay"),
		svc("registration ID", reg("  ID: other\n"), ":5: registration.ID: the ID comes from service.id"),
		svc("registration Name", reg("  Name: other\n"), ":5: registration.Name: the name comes from service.name"),

		// Addresses that are not addresses, multicast, broadcast, unspecified.
		svc("address 999.1.1.1", head+"  address: 999.1.1.1\n", ":4: service.address: invalid address \"999.1.1.1\""),
		svc("address 1.2.3.4.5", head+"  address: 1.2.3.4.5\n", ":4: service.address: invalid address \"1.2.3.4.5\""),
		svc("address multicast", head+"  address: 224.0.0.1\n", ":4: service.address: 224.0.0.1 is a multicast address"),
		svc("address IPv6 multicast", head+"  address: \"ff02::1\"\n", ":4: service.address: ff02::1 is a multicast address"),
		svc("address broadcast", head+"  address: 255.255.255.255\n", ":4: service.address: 255.255.255.255 is the broadcast address"),
		svc("address unspecified", head+"  address: 0.0.0.0\n", ":4: service.address: 0.0.0.0 is the unspecified address"),
		svc("address IPv6 unspecified", head+"  address: \"::\"\n", ":4: service.address: :: is the unspecified address"),
		svc("address with a zone", head+"  address: \"fe80::1%eth0\"\n", ":4: service.address: invalid address \"fe80::1%eth0\""),
		svc("address empty label", head+"  address: web..local\n", ":4: service.address: invalid address \"web..local\""),
		svc("address label starting with '-'", head+"  address: a.-web.local\n", ":4: service.address: invalid address \"a.-web.local\""),
		svc("address a URL", head+"  address: \"http://10.0.0.1\"\n", ":4: service.address: invalid address \"http://10.0.0.1\""),
		svc("address with a port", head+"  address: \"10.0.0.1:80\"\n", ":4: service.address: invalid address \"10.0.0.1:80\""),
		svc("upstream address multicast", head+"upstreams:\n  - {name: db, address: 224.0.0.1}\n", ":5: upstreams[0].address: 224.0.0.1 is a multicast address"),
		svc("upstream address broadcast", head+"upstreams:\n  - {name: db, address: 255.255.255.255}\n", ":5: upstreams[0].address: 255.255.255.255 is the broadcast address"),
		svc("upstream address not an address", head+"upstreams:\n  - {name: db, address: 999.1.1.1}\n", ":5: upstreams[0].address: invalid local bind address \"999.1.1.1\""),
		svc("dns address multicast", head+"proxy: {mode: envoy}\ntransparent_proxy:\n  enabled: true\n  dns: {enabled: true, address: \"224.0.0.1:53\"}\n", ":7: transparent_proxy.dns.address: 224.0.0.1 is a multicast address"),
		svc("dns address port zero", head+"proxy: {mode: envoy}\ntransparent_proxy:\n  enabled: true\n  dns: {enabled: true, address: \"127.0.0.1:0\"}\n", ":7: transparent_proxy.dns.address: not an address:port"),
		svcJSON("JSON address unspecified", "{\n  \"name\": \"web\",\n  \"address\": \"0.0.0.0\"\n}\n", ":3: address: 0.0.0.0 is the unspecified address"),
		svcJSON("JSON local_bind_address multicast", "{\"name\": \"web\", \"connect\": {\"sidecar_service\": {\"proxy\": {\"upstreams\": [\n  {\"destination_name\": \"db\", \"local_bind_port\": 9191, \"local_bind_address\": \"239.1.1.1\"}]}}}}\n",
			":2: connect.sidecar_service.proxy.upstreams[0].local_bind_address: 239.1.1.1 is a multicast address"),
		global("ports.ip multicast", "version: 1\nports:\n  ip: 224.0.0.1\n", ":3: ports.ip: 224.0.0.1 is a multicast address"),
		global("ports.ip unspecified", "version: 1\nports:\n  ip: 0.0.0.0\n", ":3: ports.ip: 0.0.0.0 is the unspecified address"),
		global("ports.ip broadcast", "version: 1\nports:\n  ip: 255.255.255.255\n", ":3: ports.ip: 255.255.255.255 is the broadcast address"),
		global("ports.ip not an address", "version: 1\nports:\n  ip: 999.1.1.1\n", ":3: ports.ip: invalid address \"999.1.1.1\""),
		global("metrics.ip multicast", "version: 1\nmetrics:\n  ip: 224.0.0.1\n", ":3: metrics.ip: 224.0.0.1 is a multicast address"),

		// YAML tags, and booleans or numbers where a name is meant.
		svc("name !!binary", "version: 1\nservice:\n  name: !!binary d2Vi\n", ":3: service.name: explicit YAML tags (here \"!!binary\") are not accepted"),
		svc("name custom tag", "version: 1\nservice:\n  name: !custom web\n", ":3: service.name: explicit YAML tags (here \"!custom\") are not accepted"),
		svc("port !!int string", "version: 1\nservice:\n  name: web\n  port: !!int \"8080\"\n", ":4: service.port: explicit YAML tags"),
		svc("tagged key", "version: 1\nservice:\n  !!str name: web\n", ":3: service.name: explicit YAML tags"),
		svc("tagged registration", head+"registration: !!map {}\n", ":4: registration: explicit YAML tags"),
		svc("name true", "version: 1\nservice:\n  name: true\n", ":3: service.name: must be a string, not true"),
		svc("name True", "version: 1\nservice:\n  name: True\n", ":3: service.name: must be a string, not True"),
		svc("name a number", "version: 1\nservice:\n  name: 123\n", ":3: service.name: must be a string, not the number 123"),
		svc("name a float", "version: 1\nservice:\n  name: 1.5\n", ":3: service.name: must be a string, not the number 1.5"),
		svc("id false", head+"  id: false\n", ":4: service.id: must be a string, not false"),
		svc("upstream name false", head+"upstreams:\n  - name: false\n", ":5: upstreams[0].name: must be a string, not false"),
		svc("tag true", head+"  tags: [true]\n", ":4: service.tags[0]: must be a string, not true"),
		svc("mode true", head+"proxy:\n  mode: true\n", ":5: proxy.mode: must be a string, not true"),
		svc("probe false", head+"check:\n  probe: false\n", ":5: check.probe: must be a string, not false"),
		svcJSON("JSON name true", "{\n  \"name\": true\n}\n", ":2: name: must be a string, not true"),
		svcJSON("annotation name true", "{\"annotations\": {\n\"consul.hashicorp.com/connect-service\": true}}\n", ":2: annotations.consul.hashicorp.com/connect-service: must be a string, not true"),
		svcJSON("annotation name a number", "{\"annotations\": {\n\"consul.hashicorp.com/connect-service\": 123}}\n", ":2: annotations.consul.hashicorp.com/connect-service: must be a string, not the number 123"),
		global("hostname true", "version: 1\nhostname: true\n", ":2: hostname: must be a string, not true"),
		global("proxy_user a number", "version: 1\nproxy_user: 0\n", ":2: proxy_user: must be a string, not the number 0"),

		// meshx.yaml: files and agent addresses.
		global("token_file relative", "version: 1\nconsul:\n  token_file: consul.token\n", ":3: consul.token_file: write an absolute path, not \"consul.token\""),
		global("token_file missing", "version: 1\nconsul:\n  token_file: {{dir}}/no-such-token\n", ":3: consul.token_file: cannot read {{dir}}/no-such-token: no such file or directory"),
		with(global("token_file a directory", "version: 1\nconsul:\n  token_file: {{dir}}/tokens\n", ":3: consul.token_file: cannot read {{dir}}/tokens: not a regular file (a directory)"), mkdir("tokens")),
		with(global("token_file dangling link", "version: 1\nconsul:\n  token_file: {{dir}}/token-link\n", ":3: consul.token_file: cannot read {{dir}}/token-link: a symbolic link to a file that does not exist"),
			func(dir, _ string) error {
				return os.Symlink(filepath.Join(dir, "gone"), filepath.Join(dir, "token-link"))
			}),
		global("ca_file relative", "version: 1\nconsul:\n  ca_file: ca.pem\n", ":3: consul.ca_file: write an absolute path, not \"ca.pem\""),
		global("ca_file missing", "version: 1\nconsul:\n  ca_file: {{dir}}/ca.pem\n", ":3: consul.ca_file: cannot read {{dir}}/ca.pem: no such file or directory"),
		with(global("ca_file a directory", "version: 1\nconsul:\n  ca_file: {{dir}}/tls\n", ":3: consul.ca_file: cannot read {{dir}}/tls: not a regular file (a directory)"), mkdir("tls")),
		global("cert_file missing", "version: 1\nconsul:\n  cert_file: {{dir}}/cert.pem\n", ":3: consul.cert_file: cannot read {{dir}}/cert.pem"),
		global("key_file relative", "version: 1\nconsul:\n  key_file: ./key.pem\n", ":3: consul.key_file: write an absolute path"),
		global("address port too big", "version: 1\nconsul:\n  address: http://127.0.0.1:99999\n", ":3: consul.address: port \"99999\" out of range 1-65535"),
		global("address port zero", "version: 1\nconsul:\n  address: http://127.0.0.1:0\n", ":3: consul.address: port \"0\" out of range 1-65535"),
		global("address port not a number", "version: 1\nconsul:\n  address: http://127.0.0.1:http\n", ":3: consul.address: "),
		global("address port empty", "version: 1\nconsul:\n  address: \"http://127.0.0.1:\"\n", ":3: consul.address: port \"\" out of range 1-65535"),
		global("address with a query", "version: 1\nconsul:\n  address: http://127.0.0.1:8500?dc=x\n", ":3: consul.address: the address must not hold a query"),
		global("address with a fragment", "version: 1\nconsul:\n  address: http://127.0.0.1:8500#x\n", ":3: consul.address: the address must not hold a fragment"),
		{Name: "address with a password", File: "meshx.yaml", Content: "version: 1\nconsul:\n  address: http://admin:hunter2-pass@127.0.0.1:8500\n",
			Want: ":3: consul.address: the address must not hold a user or password", Secret: "hunter2-pass"},
		global("address with a path", "version: 1\nconsul:\n  address: http://127.0.0.1:8500/v1/agent\n", ":3: consul.address: the agent address takes no path"),
		global("unix address with a query", "version: 1\nconsul:\n  address: unix:///run/consul.sock?x=1\n", ":3: consul.address: the address must not hold a query"),
		global("address without a scheme", "version: 1\nconsul:\n  address: 127.0.0.1:8500\n", ":3: consul.address: address must start with http://, https:// or unix://"),
		global("address bad host", "version: 1\nconsul:\n  address: http://999.1.1.1:8500\n", ":3: consul.address: invalid host"),
		global("grpc address port too big", "version: 1\nconsul:\n  grpc_address: 127.0.0.1:99999\n", ":3: consul.grpc_address: port \"99999\" out of range 1-65535"),
		global("grpc address without host", "version: 1\nconsul:\n  grpc_address: \":8502\"\n", ":3: consul.grpc_address: write host:port or a URL"),

		// An impossible ports setting, located in meshx.yaml.
		global("range below 1", "version: 1\nports:\n  range: 0-10\n", ":3: ports.range: port range 0-10: low end 0 is outside 1..65535"),
		global("range above 65535", "version: 1\nports:\n  range: 20000-70000\n", ":3: ports.range: port range 20000-70000: high end 70000 is outside 1..65535"),
		global("range reversed", "version: 1\nports:\n  range: 20999-20000\n", ":3: ports.range: port range 20999-20000: low end is above high end"),
		global("range with a fraction", "version: 1\nports:\n  range: 20000.5-20010\n", ":3: ports.range: write the range as LOW-HIGH"),
		global("range overlapping Consul", "version: 1\nports:\n  range: 21000-21100\n", ":3: ports.range: port range 21000-21100 overlaps Consul's sidecar proxy ports"),
		global("range a number", "version: 1\nports:\n  range: 20000\n", ":3: ports.range: must be a string, not the number 20000"),
		with(global("defaults registration weights zero", "version: 1\ndefaults:\n  registration:\n    Weights: {Passing: 0}\n",
			":4: defaults.registration.Weights.Passing: must be 1-65535, not 0"), withService),
		with(global("defaults registration address loopback", "version: 1\ndefaults:\n  registration:\n    Address: \"{{address}}\"\n",
			":4: defaults.registration.Address: \"127.0.0.1\" is a loopback address"), withService),
		with(global("defaults registration tag empty", "version: 1\ndefaults:\n  registration:\n    Tags: [\"\"]\n",
			":4: defaults.registration.Tags[0]: invalid tag"), withService),
		global("meshx.yaml version with a fraction", "version: 1.5\n", ":1: version: must be a whole number, not the number 1.5"),

		// Durations and sizes beyond the documented limits.
		svc("interval 1ns", head+"check:\n  interval: 1ns\n", ":5: check.interval: interval 1ns is too short (at least 100ms)"),
		svc("interval 50ms", head+"check:\n  interval: 50ms\n", ":5: check.interval: interval 50ms is too short (at least 100ms)"),
		svc("interval negative", head+"check:\n  interval: -1s\n", ":5: check.interval: interval -1s must be positive"),
		svc("ttl 1ns", head+"check:\n  ttl: 1ns\n", ":5: check.ttl: ttl 1ns is too short (at least 1s)"),
		svc("ttl 1000h", head+"check:\n  ttl: 1000h\n", ":5: check.ttl: ttl 1000h0m0s is too long (at most 24h0m0s)"),
		svc("ttl without a unit", head+"check:\n  ttl: 10\n", ":5: check.ttl: not a duration (like 10s or 1m): \"10\""),
		svc("ttl a list", head+"check:\n  ttl: [10s]\n", ":5: check.ttl: must be a duration (like 10s), not a list"),
		global("default interval 1ns", "version: 1\ndefaults:\n  check:\n    interval: 1ns\n", ":4: defaults.check.interval: interval 1ns is too short"),
		global("default ttl 100h", "version: 1\ndefaults:\n  check:\n    ttl: 100h\n", ":4: defaults.check.ttl: ttl 100h0m0s is too long"),
		global("wait 1000h", "version: 1\nconsul:\n  wait: 1000h\n", ":3: consul.wait: 1000h0m0s is too long"),
		global("wait negative", "version: 1\nconsul:\n  wait: -1s\n", ":3: consul.wait: must be positive"),
		svc("tags too many", head+lines("  tags:\n", "    - t%d%d\n", 65), ":4: service.tags: 65 tags; at most 64"),
		svc("tag too long", head+"  tags: ["+strings.Repeat("t", 300)+"]\n", ":4: service.tags[0]: tag is 300 bytes; at most 256"),
		svc("tag with a control character", head+"  tags: [\"a\\tb\"]\n", ":4: service.tags[0]: invalid tag"),
		svc("upstreams too many", head+lines("upstreams:\n", "  - {name: u%d, port: %d}\n", 257), ":4: upstreams: 257 upstreams; at most 256"),
		svc("nested too deep", reg("  Meta: "+nested(40)+"\n"), ":5: registration.Meta.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a: nested deeper than 32 levels"),
		svcJSON("JSON nested too deep", strings.Repeat("{\"a\": ", 40)+"1"+strings.Repeat("}", 40), ":1: a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a: nested deeper than 32 levels"),
		svc("aliases expanding exponentially", reg(laughs(9)), ":14: document contains excessive aliasing"),
		svc("file too large", head+strings.Repeat("# padding padding padding padding\n", 8000), ": file is larger than 262144 bytes"),
		global("meshx.yaml too large", "version: 1\n"+strings.Repeat("# padding padding padding padding\n", 8000), ": file is larger than 262144 bytes"),
		svc("upstreams exceed the port range", head+lines("upstreams:\n", "  - {name: u%d}\n", 60), ":4: upstreams: needs 63 ports from the range"),

		// Files that cannot be read: bad input of that file alone.
		with(svc("dangling symlink", "", ": cannot read: a symbolic link to a file that does not exist"), symlinkTo("/nonexistent/meshx/web.yaml")),
		with(svc("symlink loop", "", ": cannot read: too many levels of symbolic links"), symlinkTo("a.yaml")),
		with(svc("directory named a.yaml", "", ": cannot read: not a regular file (a directory)"), replaceWith(func(p string) error { return os.Mkdir(p, 0o755) })),
		with(svc("named pipe", "", ": cannot read: not a regular file (a named pipe)"), replaceWith(func(p string) error { return syscall.Mkfifo(p, 0o644) })),
		with(svc("symlink to /dev/null", "", ": cannot read: not a regular file (a device)"), symlinkTo("/dev/null")),
		{Name: "services.d a file", File: "services.d", Content: "version: 1\n", Want: ": cannot read the service-config directory: not a directory"},
		with(Case{Name: "services.d a dangling link", File: "services.d", Want: ": cannot read the service-config directory: a symbolic link to a file that does not exist"},
			symlinkTo("/nonexistent/services.d")),
		with(global("meshx.yaml a directory", "", ": cannot read: not a regular file (a directory)"), replaceWith(func(p string) error { return os.Mkdir(p, 0o755) })),
		with(global("meshx.yaml dangling symlink", "", ": cannot read: a symbolic link to a file that does not exist"), symlinkTo("/nonexistent/meshx.yaml")),
		with(global("meshx.yaml symlink loop", "", ": cannot read: too many levels of symbolic links"), symlinkTo("meshx.yaml")),

		// A service-config that is really a secret: never echoed.
		{Name: "token file linked as YAML", File: "services.d/a.yaml", Want: ":1: top level must be a mapping", Setup: secretLink, Secret: SecretToken[:4]},
		{Name: "token file linked as JSON", File: "services.d/a.json", Want: ":1: JSON syntax error", Setup: secretLink, Secret: SecretToken[:4]},
		{Name: "token-like value in a bad field", File: "services.d/a.yaml", Content: "version: 1\nservice:\n  name: !!binary " + SecretToken + "\n",
			Want: ":3: service.name: explicit YAML tags", Secret: SecretToken},

		// Plain mistakes, for breadth.
		svc("empty", "", ":1: file is empty"),
		svc("comments only", "# nothing\n", ":1: file is empty"),
		svc("top-level list", "- a\n- b\n", ":1: top level must be a mapping, not a list"),
		svc("two documents", "version: 1\nservice: {name: web}\n---\nversion: 1\n", ":3: more than one document"),
		svc("syntax error", "version: 1\nservice: {name: web\n", ":1: syntax error"),
		svc("unknown field", head+"  colour: red\n", ":4: service.colour: unknown field"),
		svc("name with shell", "version: 1\nservice:\n  name: \"web;rm -rf /\"\n", ":3: service.name: invalid name"),
		svc("name with a NUL", "version: 1\nservice:\n  name: \"web\\0\"\n", ":3: service.name: invalid name"),
		svc("id too long", head+"  id: "+strings.Repeat("i", 200)+"\n", ":4: service.id: invalid id"),
		svc("unknown template variable", reg("  Meta:\n    owner: \"{{team}}\"\n"), ":6: registration.Meta.owner: unknown template variable {{team}}"),
		svcJSON("JSON trailing comma", "{\n  \"name\": \"web\",\n}\n", ":3: JSON syntax error"),
		svcJSON("annotation unknown", "{\"annotations\": {\n\"consul.hashicorp.com/connect-service\": \"web\",\n\"consul.hashicorp.com/connect-inject\": \"true\"}}\n", ":3: annotations.consul.hashicorp.com/connect-inject: unsupported annotation"),
		svcJSON("annotation bool not a bool", "{\"annotations\": {\n\"consul.hashicorp.com/connect-service\": \"web\",\n\"consul.hashicorp.com/transparent-proxy\": \"nope\"}}\n", ":3: annotations.consul.hashicorp.com/transparent-proxy: must be \"true\" or \"false\""),
		global("meshx.yaml unknown field", "version: 1\nbogus: 1\n", ":2: bogus: unknown field"),
		global("meshx.yaml no version", "consul: {wait: 1s}\n", ":1: version: missing"),
	}
	return cases
}
