// Command port-opener is the Go twin of the problem statement's
// port-opener.py: it listens on a loopback port, opens client connections to
// it and holds them open until it is interrupted. --clients spreads the
// connections over several source addresses (127.0.0.1, 127.0.0.2, ...), as
// several client hosts would.
//
//	go run ./cmd/port-opener -n 300 --clients 3
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
)

func main() {
	var (
		port     uint
		n        int
		ipv      int
		clients  int
		address  string
		verbose  bool
		flags    = flag.NewFlagSet("port-opener", flag.ExitOnError)
		portHelp = "port to listen and make connections on"
	)
	flags.UintVar(&port, "port", 8500, portHelp)
	flags.UintVar(&port, "p", 8500, portHelp)
	flags.IntVar(&n, "num-connections", 200, "number of connections to open")
	flags.IntVar(&n, "n", 200, "number of connections to open")
	flags.IntVar(&ipv, "ipv", 4, "IP version (4 or 6) to use")
	flags.IntVar(&clients, "clients", 1, "number of client source addresses to spread the connections over (127.0.0.1, 127.0.0.2, ...; IPv4 only)")
	flags.StringVar(&address, "address", "", "loopback address to listen on (default 127.0.0.1, or ::1 with --ipv 6)")
	flags.BoolVar(&verbose, "verbose", false, "enable verbose logging")
	flags.BoolVar(&verbose, "v", false, "enable verbose logging")
	_ = flags.Parse(os.Args[1:])
	if err := run(uint16(port), n, ipv, clients, address, verbose); err != nil {
		fmt.Fprintln(os.Stderr, "port-opener:", err)
		os.Exit(1)
	}
}

func run(port uint16, n, ipv, clients int, address string, verbose bool) error {
	if ipv != 4 && ipv != 6 {
		return fmt.Errorf("--ipv %d: must be 4 or 6", ipv)
	}
	if n < 0 || clients < 1 {
		return fmt.Errorf("--num-connections must be 0 or more and --clients 1 or more")
	}
	if address == "" {
		address = map[int]string{4: "127.0.0.1", 6: "::1"}[ipv]
	}
	addr, err := netip.ParseAddr(address)
	if err != nil {
		return fmt.Errorf("--address: %w", err)
	}
	ln, err := portopener.Listen(netip.AddrPortFrom(addr, port))
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Printf("started server on %s\n", ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var pairs []portopener.Pair
	defer func() { portopener.CloseAll(pairs) }()
	for i := range clients {
		from, err := portopener.ClientSource(ipv == 6, i)
		if err != nil {
			return err
		}
		share := n / clients
		if i < n%clients {
			share++
		}
		opened, err := ln.Open(ctx, from, share)
		if err != nil {
			return err
		}
		if verbose {
			log.Printf("opened %d connections from %s", share, from)
		}
		pairs = append(pairs, opened...)
	}
	fmt.Printf("opened %d client connections\n", len(pairs))
	<-ctx.Done()
	return nil
}
