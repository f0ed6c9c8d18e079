package mirror

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

// The URLs the mirror fetches come from webhook bodies: whoever can post a
// webhook chooses them. The policy below keeps them from reaching anything
// but the result hosts (server-side request forgery): a host allow-list,
// https only, and no connection to an address that is not public, checked
// on the address actually dialled, after DNS and after every redirect.

// ErrRefused is matched (errors.Is) by the error of a URL or address the
// policy refuses.
var ErrRefused = errors.New("refused by the results policy")

// HostList is a parsed KREABUS_RESULTS_ALLOW_HOSTS: exact host names, and
// "*.example.com" patterns that match any subdomain of example.com.
type HostList struct {
	exact    map[string]bool
	suffixes []string // ".example.com"
}

// ParseHostList parses a comma-separated list of host names. Entries are
// case-insensitive; empty entries are ignored. An entry with a scheme, a
// port, a path or a misplaced wildcard is an error naming it.
func ParseHostList(s string) (HostList, error) {
	l := HostList{exact: map[string]bool{}}
	var errs []error
	for _, e := range strings.Split(s, ",") {
		e = strings.ToLower(strings.TrimSpace(e))
		if e == "" {
			continue
		}
		name, wild := strings.CutPrefix(e, "*.")
		if !validHostName(name) {
			errs = append(errs, fmt.Errorf("%q is not a host name or *.domain pattern", e))
			continue
		}
		if wild {
			l.suffixes = append(l.suffixes, "."+name)
		} else {
			l.exact[name] = true
		}
	}
	if err := errors.Join(errs...); err != nil {
		return HostList{}, err
	}
	return l, nil
}

// validHostName accepts a DNS name (letters, digits, '-', '.', labels of
// 1 to 63 characters) or an IP address literal.
func validHostName(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
				return false
			}
		}
	}
	return true
}

// Empty reports whether the list allows no host at all.
func (l HostList) Empty() bool { return len(l.exact) == 0 && len(l.suffixes) == 0 }

// Allows reports whether host (as in a URL, without port) is on the list.
func (l HostList) Allows(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if l.exact[host] {
		return true
	}
	for _, s := range l.suffixes {
		if strings.HasSuffix(host, s) {
			return true
		}
	}
	return false
}

// Policy decides which URLs and addresses the mirror may fetch from.
type Policy struct {
	Hosts HostList
	// AllowPrivate lets http URLs and loopback, private (RFC 1918, ULA)
	// and shared (CGNAT) addresses through, for local runs and tests.
	// Link-local addresses (cloud metadata services live there),
	// unspecified and multicast addresses stay refused.
	AllowPrivate bool

	// allowAddr, set by tests, lets one more address through.
	allowAddr func(netip.AddrPort) bool
}

// CheckURL checks a URL before it is requested, and every redirect.
func (p *Policy) CheckURL(u *url.URL) error {
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && p.AllowPrivate:
	default:
		return fmt.Errorf("%w: scheme %q (https only)", ErrRefused, u.Scheme)
	}
	if u.User != nil {
		return fmt.Errorf("%w: URL with user information", ErrRefused)
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("%w: URL without host", ErrRefused)
	}
	if !p.Hosts.Allows(host) {
		return fmt.Errorf("%w: host %q is not in KREABUS_RESULTS_ALLOW_HOSTS", ErrRefused, host)
	}
	return nil
}

// CheckAddr checks the address a connection is about to be made to.
func (p *Policy) CheckAddr(ap netip.AddrPort) error {
	if p.allowAddr != nil && p.allowAddr(ap) {
		return nil
	}
	a := ap.Addr()
	kind := addrKind(a)
	switch {
	case kind == "":
		return nil
	case p.AllowPrivate && (kind == "loopback" || kind == "private" || kind == "shared"):
		return nil
	}
	return fmt.Errorf("%w: address %s is %s", ErrRefused, a, kind)
}

// Special-purpose ranges that are not public unicast addresses beyond what
// netip classifies (IANA special-purpose registries).
var (
	sharedV4   = netip.MustParsePrefix("100.64.0.0/10") // carrier-grade NAT
	reservedV4 = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),
		netip.MustParsePrefix("192.0.0.0/24"),
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("198.18.0.0/15"),
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("203.0.113.0/24"),
		netip.MustParsePrefix("240.0.0.0/4"), // and the broadcast address
	}
	reservedV6 = []netip.Prefix{
		netip.MustParsePrefix("100::/64"),      // discard
		netip.MustParsePrefix("2001:db8::/32"), // documentation
		netip.MustParsePrefix("2001::/32"),     // Teredo: tunnels to any IPv4
	}
	nat64   = netip.MustParsePrefix("64:ff9b::/96")
	sixTo4  = netip.MustParsePrefix("2002::/16")
	nat64v2 = netip.MustParsePrefix("64:ff9b:1::/48")
)

// addrKind names why a is not a public unicast address, or "" when it is.
// An IPv6 address that embeds an IPv4 one (mapped, NAT64, 6to4) is judged
// by the IPv4 address it reaches.
func addrKind(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		switch {
		case nat64.Contains(a):
			b := a.As16()
			return addrKind(netip.AddrFrom4([4]byte(b[12:16])))
		case sixTo4.Contains(a):
			b := a.As16()
			return addrKind(netip.AddrFrom4([4]byte(b[2:6])))
		case nat64v2.Contains(a):
			return "reserved"
		}
	}
	switch {
	case !a.IsValid():
		return "invalid"
	case a.IsUnspecified():
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsLinkLocalUnicast():
		return "link-local (cloud metadata lives there)"
	case a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(), a.IsMulticast():
		return "multicast"
	case a.IsPrivate():
		return "private"
	case a.Is4() && sharedV4.Contains(a):
		return "shared"
	}
	for _, p := range reservedV4 {
		if a.Is4() && p.Contains(a) {
			return "reserved"
		}
	}
	for _, p := range reservedV6 {
		if a.Is6() && p.Contains(a) {
			return "reserved"
		}
	}
	return ""
}
