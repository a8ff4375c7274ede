package metrics

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/common/expfmt"
)

// Path is where meshx-proxy serves its metrics.
const Path = "/metrics"

// maxMerged bounds what one scrape takes from Envoy's admin endpoint.
const maxMerged = 32 << 20

// HandlerOptions configure Handler.
type HandlerOptions struct {
	// Merge is the URL of Prometheus text to append to each scrape (Envoy's
	// http://127.0.0.1:ADMIN/stats/prometheus); "" merges nothing.
	Merge string
	// MergeTimeout bounds fetching Merge; 0 = 3s.
	MergeTimeout time.Duration
	Logger       *slog.Logger // nil: discard
}

// Handler serves the families in Prometheus's text format, then the text
// fetched from o.Merge. Envoy's families are all named envoy_*, so the two
// never collide. When Merge cannot be fetched the scrape still answers, with
// meshx_envoy_metrics_up 0.
func (m *Metrics) Handler(o HandlerOptions) http.Handler {
	if o.MergeTimeout == 0 {
		o.MergeTimeout = 3 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var merged []byte
		if o.Merge != "" {
			var err error
			merged, err = fetchText(r.Context(), o.Merge, o.MergeTimeout)
			if err != nil {
				o.Logger.Warn("merge envoy metrics", "url", o.Merge, "err", err)
				m.envoyUp.Set(0)
			} else {
				m.envoyUp.Set(1)
			}
		}
		mfs, err := m.reg.Gather()
		if err != nil {
			http.Error(w, "gather metrics: "+err.Error(), http.StatusInternalServerError)
			return
		}
		format := expfmt.NewFormat(expfmt.TypeTextPlain)
		var buf bytes.Buffer
		enc := expfmt.NewEncoder(&buf, format)
		for _, mf := range mfs {
			if err := enc.Encode(mf); err != nil {
				http.Error(w, "encode metrics: "+err.Error(), http.StatusInternalServerError)
				return
			}
		}
		if len(merged) > 0 && merged[len(merged)-1] != '\n' {
			merged = append(merged, '\n')
		}
		w.Header().Set("Content-Type", string(format))
		_, _ = w.Write(buf.Bytes())
		_, _ = w.Write(merged)
	})
}

// fetchText GETs Prometheus text from url.
func fetchText(ctx context.Context, url string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		if mt, _, _ := mime.ParseMediaType(ct); mt != "text/plain" {
			return nil, fmt.Errorf("content type %q is not Prometheus text", ct)
		}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxMerged+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxMerged {
		return nil, fmt.Errorf("more than %d bytes", maxMerged)
	}
	return b, nil
}

// Server is a running metrics listener.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds addr (host:port) and serves h at Path until Close.
func Listen(addr string, h http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	s := &Server{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// Addr is where the server listens.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server, letting scrapes in flight finish (bounded by ctx).
func (s *Server) Close(ctx context.Context) error {
	return s.srv.Shutdown(ctx)
}
