# A Consul script check that warns before the agent answers 429: WARNING
# when one client holds 80% of http_max_conns_per_client, CRITICAL at 100%
# (or when the check's own read of the limit is refused with 429).
# The agent needs `enable_local_script_checks = true`. Put this file in the
# agent's config directory and run `consul reload`.
check {
  id       = "consul-conn-exporter"
  name     = "HTTP connections per client against http_max_conns_per_client"
  # With ACLs on, add the token (agent:read, see the README) after env:
  #   "CONSUL_HTTP_TOKEN_FILE=/etc/consul-conn-exporter/token",
  # Add "--clients.processes" to name the local programs holding the
  # connections (the agent then needs to run as root).
  args     = ["/usr/bin/env", "CONSUL_HTTP_ADDR=127.0.0.1:8500",
              "/usr/bin/consul_conn_exporter", "check", "--port", "8500", "--limit", "auto"]
  interval = "30s"
  timeout  = "10s"
}
