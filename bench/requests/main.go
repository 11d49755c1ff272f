// Command requests asks a Consul agent's HTTP API n times over kept-alive
// connections, one per client address (127.0.3.1 and up), each client in
// turn, and prints the mean time of a request in microseconds: what a
// kernel program on every read and send costs the agent's clients.
//
//	requests -addr 127.0.0.1:8500 -clients 50 -n 3000
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8500", "the agent's HTTP address (a loopback one)")
	clients := flag.Int("clients", 50, "client addresses, 127.0.3.1 and up (at most 250)")
	n := flag.Int("n", 3000, "requests")
	path := flag.String("path", "/v1/status/leader", "what each request asks")
	flag.Parse()
	if *clients < 1 || *clients > 250 || *n < 1 {
		fmt.Fprintln(os.Stderr, "requests: -clients must be 1 to 250 and -n positive")
		os.Exit(2)
	}
	if host, _, err := net.SplitHostPort(*addr); err != nil || !net.ParseIP(host).IsLoopback() {
		fmt.Fprintln(os.Stderr, "requests: -addr must be a loopback address with a port")
		os.Exit(2)
	}
	each := make([]*http.Client, *clients)
	for i := range each {
		from := &net.TCPAddr{IP: net.IPv4(127, 0, 3, byte(i+1))}
		each[i] = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: 1,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return (&net.Dialer{LocalAddr: from}).DialContext(ctx, network, addr)
			},
		}}
	}
	ask := func(c *http.Client) error {
		resp, err := c.Get("http://" + *addr + *path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s", resp.Status)
		}
		return nil
	}
	for _, c := range each { // each client's connection open before the clock starts
		if err := ask(c); err != nil {
			fmt.Fprintln(os.Stderr, "requests:", err)
			os.Exit(1)
		}
	}
	start := time.Now()
	for i := range *n {
		if err := ask(each[i%len(each)]); err != nil {
			fmt.Fprintln(os.Stderr, "requests:", err)
			os.Exit(1)
		}
	}
	fmt.Printf("%.1f\n", float64(time.Since(start).Microseconds())/float64(*n))
}
