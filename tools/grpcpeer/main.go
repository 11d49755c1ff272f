// Command grpcpeer is the end-to-end tests' stand-in for a Consul 2.0.3
// agent's external gRPC listeners, which no Consul 2.x built here can be:
// a gRPC server (the health service) on a plaintext and a TLS port, each
// listener limited per client IP by hashicorp/go-connlimit as Consul's is.
// Each accepted connection is given to the limiter; one past the limit is
// closed at once, before a byte of it is read (the TLS handshake too), and
// said on stderr; the others are wrapped so that their close frees their
// slot. It prints "ready" once both ports listen, and serves until killed.
//
// Loopback addresses only: it is a test peer, never a server.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/hashicorp/go-connlimit"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	plain := flag.String("plain", "", "the plaintext gRPC port's address (loopback)")
	secure := flag.String("tls", "", "the gRPC over TLS port's address (loopback)")
	limit := flag.Int("limit", 5, "connections per client IP on each port (grpc_max_conns_per_client)")
	flag.Parse()
	if err := run(*plain, *secure, *limit); err != nil {
		fmt.Fprintln(os.Stderr, "grpcpeer:", err)
		os.Exit(1)
	}
}

func run(plain, secure string, limit int) error {
	cert, err := selfSigned()
	if err != nil {
		return err
	}
	servers := []struct {
		addr string
		opts []grpc.ServerOption
	}{{plain, nil}, {secure, []grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))}}}
	failed := make(chan error, len(servers))
	for _, s := range servers {
		addr, err := netip.ParseAddrPort(s.addr)
		if err != nil || !addr.Addr().Unmap().IsLoopback() {
			return fmt.Errorf("%q: want a loopback address and port", s.addr)
		}
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			return err
		}
		server := grpc.NewServer(s.opts...)
		healthpb.RegisterHealthServer(server, health.NewServer())
		limited := &limitedListener{Listener: ln, limiter: connlimit.NewLimiter(connlimit.Config{MaxConnsPerClientIP: limit})}
		go func() { failed <- server.Serve(limited) }()
	}
	fmt.Println("ready")
	return <-failed
}

// limitedListener gives each accepted connection to the limiter, as
// Consul's external gRPC listener does: one past the limit is closed unread
// and the next is accepted.
type limitedListener struct {
	net.Listener
	limiter *connlimit.Limiter
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		free, err := l.limiter.Accept(conn)
		if err != nil {
			if errors.Is(err, connlimit.ErrPerClientIPLimitReached) {
				fmt.Fprintf(os.Stderr, "refused %s: %v\n", conn.RemoteAddr(), err)
			}
			conn.Close()
			continue
		}
		return connlimit.Wrap(conn, free), nil
	}
}

// selfSigned is a certificate for the TLS port; the tests do not verify it.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	template := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "grpcpeer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
