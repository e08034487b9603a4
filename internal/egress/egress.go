// Package egress is the gateway's one way out: every outbound HTTP call
// (Marketo token and REST requests, the connect page's credential check,
// callbacks) goes through a client made here. The address policy is checked
// when a connection is made, on the address actually dialled, so a name that
// resolves to a public address when a URL is checked and to an internal one
// later (DNS rebinding) still cannot pass. Redirects are never followed.
package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// DefaultMarketoHosts is MARKETO_HOSTS when it is not set.
const DefaultMarketoHosts = "*.mktorest.com"

// Sentinel errors of the policy; reach them with errors.Is.
var (
	// ErrForbiddenAddress: the destination is a private, loopback,
	// link-local or otherwise internal address that no setting allows.
	ErrForbiddenAddress = errors.New("egress: destination address not allowed")
	// ErrForbiddenHost: a Marketo call to a host not in MARKETO_HOSTS.
	ErrForbiddenHost = errors.New("egress: host not allowed for Marketo")
	// ErrRedirect: the destination answered with a redirect, which is not followed.
	ErrRedirect = errors.New("egress: redirect not followed")
)

// Policy says where outbound calls may go.
type Policy struct {
	// MarketoHosts are host names ("api.example.com") or patterns
	// ("*.mktorest.com", any name below it) that Marketo URLs may name. A
	// listed host is reachable whatever address it resolves to.
	MarketoHosts []string
	// Allow are address ranges callbacks may reach although they are
	// internal (EGRESS_ALLOW).
	Allow []netip.Prefix
}

// ParseHosts reads MARKETO_HOSTS: comma-separated names or "*." patterns.
func ParseHosts(v string) ([]string, error) {
	var out []string
	for _, h := range strings.Split(v, ",") {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "" {
			continue
		}
		name := strings.TrimPrefix(h, "*.")
		if name == "" || strings.ContainsAny(name, "*/:@ ") && !isIPLiteral(name) {
			return nil, fmt.Errorf("%q is not a host name or a *.domain pattern", h)
		}
		out = append(out, h)
	}
	if len(out) == 0 {
		return nil, errors.New("no host given")
	}
	return out, nil
}

func isIPLiteral(s string) bool {
	_, err := netip.ParseAddr(strings.Trim(s, "[]"))
	return err == nil
}

// ParseAllow reads EGRESS_ALLOW: comma-separated CIDRs (a bare address is a
// single-address range).
func ParseAllow(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not a CIDR such as 127.0.0.0/8", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Client holds the outbound HTTP clients. Both are safe for concurrent use.
type Client struct {
	policy    Policy
	marketo   *http.Client
	callbacks *http.Client
}

// New builds the clients for p.
func New(p Policy) *Client {
	c := &Client{policy: p}
	c.marketo = newHTTPClient(c.dialMarketo)
	c.callbacks = newHTTPClient(c.dialCallback)
	return c
}

// Marketo is the client for Marketo's identity and REST endpoints: it only
// connects to hosts in MARKETO_HOSTS, so Marketo credentials go nowhere
// else, whatever URL a tenant stored.
func (c *Client) Marketo() *http.Client { return c.marketo }

// Callbacks is the client for tenants' callback URLs: it refuses internal
// addresses unless EGRESS_ALLOW covers them.
func (c *Client) Callbacks() *http.Client { return c.callbacks }

func newHTTPClient(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			// No proxy: the policy is about the address dialled, and a
			// proxy would be dialled instead of the destination.
			Proxy:                 nil,
			DialContext:           dial,
			ForceAttemptHTTP2:     true,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			ExpectContinueTimeout: time.Second,
		},
		// A redirect is answered as it came: callers treat a 3xx as a
		// failure. Following one would re-send a secret to a place no
		// check has seen.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func (c *Client) dialMarketo(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if !c.MarketoHost(host) {
		return nil, ErrForbiddenHost
	}
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return d.DialContext(ctx, network, addr)
}

func (c *Client) dialCallback(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{
		Timeout: 10 * time.Second, KeepAlive: 30 * time.Second,
		// Control sees the resolved address of every connection attempt.
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return ErrForbiddenAddress
			}
			if !c.AddressAllowed(ap.Addr()) {
				return ErrForbiddenAddress
			}
			return nil
		},
	}
	return d.DialContext(ctx, network, addr)
}

// MarketoHost reports whether host (a name or an address) is in MARKETO_HOSTS.
func (c *Client) MarketoHost(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	for _, p := range c.policy.MarketoHosts {
		p = strings.Trim(p, "[]")
		if suffix, ok := strings.CutPrefix(p, "*."); ok {
			if strings.HasSuffix(host, "."+suffix) {
				return true
			}
		} else if host == p {
			return true
		}
	}
	return false
}

// AddressAllowed reports whether a callback may connect to a.
func (c *Client) AddressAllowed(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range c.policy.Allow {
		if p.Contains(a) {
			return true
		}
	}
	return Public(a)
}

// internalRanges are ranges netip has no predicate for.
var internalRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("fec0::/10"),       // deprecated site-local
	netip.MustParsePrefix("100::/64"),        // discard-only
	netip.MustParsePrefix("2002::/16"),       // 6to4 can embed any IPv4 address
	netip.MustParsePrefix("64:ff9b::/96"),    // NAT64 can embed any IPv4 address
	netip.MustParsePrefix("::ffff:0:0:0/96"), // IPv4-translated
}

// Public reports whether a is an ordinary public unicast address: not
// loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local
// (169.254/16, fe80::/10), CGNAT, multicast, unspecified or reserved, in
// either IP version (IPv4-mapped IPv6 is judged as the IPv4 address).
func Public(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() || !a.IsGlobalUnicast() {
		return false
	}
	for _, p := range internalRanges {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// URL problems, in words for the person who gave the URL.
const (
	whyNotHTTP   = "must be an absolute http(s) URL"
	whyUserInfo  = "must not carry a user name or password"
	whyNotListed = "must name a Marketo host (allowed: %s)"
	whyInternal  = "points to a private, loopback or link-local address, which is not allowed"
)

// CheckMarketoURL checks an identity or REST URL before any request is
// made: an absolute http(s) URL on a host in MARKETO_HOSTS. The error's
// text says what is wrong, without naming the setting's key.
func (c *Client) CheckMarketoURL(raw string) error {
	u, err := parse(raw)
	if err != nil {
		return err
	}
	if !c.MarketoHost(u.Hostname()) {
		return fmt.Errorf(whyNotListed, strings.Join(c.policy.MarketoHosts, ", "))
	}
	return nil
}

// CheckCallbackURL checks a callback URL when it is configured: an absolute
// http(s) URL; an address literal (or localhost) must be allowed. Names are
// resolved only when a call is made, where the dialer checks every address.
func (c *Client) CheckCallbackURL(raw string) error {
	u, err := parse(raw)
	if err != nil {
		return err
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if a, err := netip.ParseAddr(host); err == nil {
		if !c.AddressAllowed(a) {
			return errors.New(whyInternal)
		}
		return nil
	}
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		if !c.AddressAllowed(netip.MustParseAddr("127.0.0.1")) {
			return errors.New(whyInternal)
		}
	}
	return nil
}

func parse(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || !u.IsAbs() || u.Host == "" || u.Hostname() == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, errors.New(whyNotHTTP)
	}
	if u.User != nil {
		return nil, errors.New(whyUserInfo)
	}
	return u, nil
}

// Describe says in a few words why an outbound call failed, for people
// and stored error fields: the policy's refusal, refused, unreachable, not
// found, timed out or a TLS failure. It never repeats what the other side
// sent, nor the URL (which may carry credentials).
func Describe(err error) string {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrForbiddenHost):
		return "refused: the host is not an allowed Marketo host"
	case errors.Is(err, ErrForbiddenAddress):
		return "refused: the address is private, loopback or link-local"
	case errors.Is(err, ErrRedirect):
		return "answered with a redirect, which is not followed"
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return "timed out"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.As(err, &dnsErr):
		return "host name not found"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case strings.Contains(err.Error(), "tls:") || strings.Contains(err.Error(), "x509:"):
		return "TLS handshake failed"
	case errors.As(err, &opErr):
		return "unreachable"
	}
	return "connection failed"
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// StatusClass names an HTTP status by its class, e.g. "HTTP 5xx".
func StatusClass(code int) string {
	if code < 100 || code > 599 {
		return "an invalid HTTP status"
	}
	return fmt.Sprintf("HTTP %dxx", code/100)
}
