// Package socks5 is the server side of a SOCKS5 CONNECT (RFC 1928) with username/password
// authentication (RFC 1929): the negotiation up to the request, and the reply. It knows no
// tailnet and dials nothing; the helper's forwards decide what a request may reach and which
// reply code a refusal gets.
//
// tailscale.com/net/socks5 serves the whole proxy itself, but it answers every failed dial
// with "general failure", gives a dial a fixed 5 s, compares the credential in variable time,
// serves UDP ASSOCIATE, and ends a connection at the first EOF of either direction (no
// half-close). A client needs the reply code to tell "not allowed" from "no such host", and a
// forwarded connection must carry half-closes, so only the negotiation is shared code, here.
package socks5

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
)

// Reply codes (RFC 1928 §6).
const (
	Succeeded               byte = 0x00
	GeneralFailure          byte = 0x01
	NotAllowed              byte = 0x02 // "connection not allowed by ruleset"
	NetworkUnreachable      byte = 0x03
	HostUnreachable         byte = 0x04
	ConnectionRefused       byte = 0x05
	TTLExpired              byte = 0x06
	CommandNotSupported     byte = 0x07
	AddressTypeNotSupported byte = 0x08
)

const (
	version         = 0x05
	authVersion     = 0x01 // RFC 1929's sub-negotiation version
	methodPassword  = 0x02
	methodNoneFound = 0xff
	cmdConnect      = 0x01
	atypIPv4        = 0x01
	atypDomain      = 0x03
	atypIPv6        = 0x04
)

// ErrBadCredential is Negotiate's error for a wrong username or password; the client has
// been told (RFC 1929 status 1) and nothing was dialled.
var ErrBadCredential = errors.New("socks5: wrong username or password")

// Request is what a client asked to CONNECT to: a domain name or an IP, and a port.
type Request struct {
	Host string // a domain name as sent, or an IP's text
	Port uint16
}

// Address is host:port, IPv6 in brackets.
func (r Request) Address() string {
	return netJoin(r.Host, r.Port)
}

// Negotiate reads a client's greeting, its credential and its request. A client that offers no
// username/password method, sends the wrong credential, or asks for anything but CONNECT is
// answered as RFC 1928/1929 say (the caller then closes the connection) and gets an error. The
// credential is compared in constant time and appears in no error.
func Negotiate(rw io.ReadWriter, username, password string) (Request, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return Request{}, fmt.Errorf("socks5: reading the greeting: %w", err)
	}
	if hdr[0] != version {
		return Request{}, fmt.Errorf("socks5: version %d, not 5", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(rw, methods); err != nil {
		return Request{}, fmt.Errorf("socks5: reading the methods: %w", err)
	}
	offered := false
	for _, m := range methods {
		offered = offered || m == methodPassword
	}
	if !offered {
		rw.Write([]byte{version, methodNoneFound})
		return Request{}, errors.New("socks5: the client offers no username/password authentication")
	}
	if _, err := rw.Write([]byte{version, methodPassword}); err != nil {
		return Request{}, err
	}

	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return Request{}, fmt.Errorf("socks5: reading the credential: %w", err)
	}
	if hdr[0] != authVersion {
		return Request{}, fmt.Errorf("socks5: credential version %d, not 1", hdr[0])
	}
	user, err := readBytes(rw, int(hdr[1]))
	if err != nil {
		return Request{}, err
	}
	var plen [1]byte
	if _, err := io.ReadFull(rw, plen[:]); err != nil {
		return Request{}, fmt.Errorf("socks5: reading the credential: %w", err)
	}
	pass, err := readBytes(rw, int(plen[0]))
	if err != nil {
		return Request{}, err
	}
	// Both compared, whatever the first gives: the time taken says nothing about either.
	okUser := subtle.ConstantTimeCompare(user, []byte(username))
	okPass := subtle.ConstantTimeCompare(pass, []byte(password))
	if okUser&okPass != 1 {
		rw.Write([]byte{authVersion, 0x01})
		return Request{}, ErrBadCredential
	}
	if _, err := rw.Write([]byte{authVersion, 0x00}); err != nil {
		return Request{}, err
	}

	var req [4]byte
	if _, err := io.ReadFull(rw, req[:]); err != nil {
		return Request{}, fmt.Errorf("socks5: reading the request: %w", err)
	}
	if req[0] != version {
		return Request{}, fmt.Errorf("socks5: request version %d, not 5", req[0])
	}
	var host string
	switch req[3] {
	case atypIPv4, atypIPv6:
		n := 4
		if req[3] == atypIPv6 {
			n = 16
		}
		b, err := readBytes(rw, n)
		if err != nil {
			return Request{}, err
		}
		ip, _ := netip.AddrFromSlice(b)
		host = ip.String()
	case atypDomain:
		var l [1]byte
		if _, err := io.ReadFull(rw, l[:]); err != nil {
			return Request{}, fmt.Errorf("socks5: reading the request: %w", err)
		}
		b, err := readBytes(rw, int(l[0]))
		if err != nil {
			return Request{}, err
		}
		host = string(b)
	default:
		WriteReply(rw, AddressTypeNotSupported)
		return Request{}, fmt.Errorf("socks5: address type %d", req[3])
	}
	var port [2]byte
	if _, err := io.ReadFull(rw, port[:]); err != nil {
		return Request{}, fmt.Errorf("socks5: reading the request: %w", err)
	}
	if req[1] != cmdConnect {
		WriteReply(rw, CommandNotSupported)
		return Request{}, fmt.Errorf("socks5: command %d: only CONNECT is served", req[1])
	}
	if host == "" {
		WriteReply(rw, HostUnreachable)
		return Request{}, errors.New("socks5: an empty domain name")
	}
	return Request{Host: host, Port: uint16(port[0])<<8 | uint16(port[1])}, nil
}

// WriteReply sends the reply to a request with code and an unspecified bound address (0.0.0.0:0):
// a tailnet connection's local address means nothing to a client on this machine.
func WriteReply(w io.Writer, code byte) error {
	_, err := w.Write([]byte{version, code, 0x00, atypIPv4, 0, 0, 0, 0, 0, 0})
	return err
}

func readBytes(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("socks5: short message: %w", err)
	}
	return b, nil
}

func netJoin(host string, port uint16) string {
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is6() {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(int(port))
}
