package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// certificates makes a CA and a certificate it signs for 127.0.0.1, as
// PEM files in dir: ca.pem, server.pem, server-key.pem.
func certificates(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	write := func(name, kind string, der []byte) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600))
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	write("ca.pem", "CERTIFICATE", caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	server := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "pushgateway"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	serverDER, err := x509.CreateCertificate(rand.Reader, server, ca, &key.PublicKey, caKey)
	require.NoError(t, err)
	write("server.pem", "CERTIFICATE", serverDER)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	write("server-key.pem", "EC PRIVATE KEY", keyDER)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return pool
}

// A real Pushgateway that wants basic auth over TLS with the test's CA:
// the push works with a password file and the CA, a wrong password and an
// unknown CA are each named, and the secret is in no output and not in
// the exporter's argv.
func TestPushConfigFileAuthenticatesOverTLS(t *testing.T) {
	gateway := programs.Need(t, "prometheus-pushgateway", "apt-get install prometheus-pushgateway")
	dir := t.TempDir()
	pool := certificates(t, dir)
	const secret = "s3cret-push-pass"
	hash, err := bcrypt.GenerateFromPassword([]byte(secret), bcrypt.MinCost)
	require.NoError(t, err)
	webConfig := filepath.Join(dir, "web.yml")
	require.NoError(t, os.WriteFile(webConfig, []byte("tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"+
		"basic_auth_users:\n  ops: "+string(hash)+"\n"), 0o600))
	addr := freeAddr(t)
	startServer(t, gateway, "--web.listen-address="+addr, "--web.config.file="+webConfig)

	passwordFile := filepath.Join(dir, "password")
	require.NoError(t, os.WriteFile(passwordFile, []byte(secret+"\n"), 0o600))
	wrongFile := filepath.Join(dir, "wrong")
	require.NoError(t, os.WriteFile(wrongFile, []byte("not-it\n"), 0o600))
	pushConfig := func(name, body string) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
		return path
	}
	good := pushConfig("good.yml", "basic_auth:\n  username: ops\n  password_file: password\ntls_config:\n  ca_file: ca.pem\n")
	wrong := pushConfig("wrong.yml", "basic_auth:\n  username: ops\n  password_file: wrong\ntls_config:\n  ca_file: ca.pem\n")
	noCA := pushConfig("no-ca.yml", "basic_auth:\n  username: ops\n  password_file: password\n")
	push := func(config string) result {
		res := exporter(t, "", "--once", "--command", "true", "--push.url", "https://"+addr,
			"--push.instance", "consul-tls", "--push.config.file", config, "--push.timeout", "5s")
		assert.NotContains(t, res.stderr, secret)
		return res
	}

	res := push(good)
	require.Equal(t, 0, res.exit, res.stderr)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, err := http.NewRequest(http.MethodGet, "https://"+addr+"/metrics", nil)
	require.NoError(t, err)
	req.SetBasicAuth("ops", secret)
	resp, err := client.Do(req)
	require.NoError(t, err)
	assert.Equal(t, 1.0, parseBody(t, resp)[`consul_conn_exporter_collect_success{instance="consul-tls",job="consul_conn_exporter"}`])

	res = push(wrong)
	assert.Equal(t, 1, res.exit)
	assert.Contains(t, res.stderr, "unexpected status code 401")
	res = push(noCA)
	assert.Equal(t, 1, res.exit)
	assert.Contains(t, res.stderr, "certificate signed by unknown authority")

	// Long-running, the secret is not in the process's argv either.
	cmd := exec.Command(binary, "--command", "true", "--push.url", "https://"+addr, "--push.config.file", good, "--interval", "1h")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// The kernel tells the parent that exec worked before it has set the
	// new argv up: under load a read at once can find it empty.
	var argv []byte
	require.Eventually(t, func() bool {
		var err error
		argv, err = os.ReadFile("/proc/" + itoa(uint64(cmd.Process.Pid)) + "/cmdline")
		return err == nil && len(argv) > 0
	}, 10*time.Second, 10*time.Millisecond)
	assert.Contains(t, string(argv), "--push.config.file")
	assert.NotContains(t, string(argv), secret)
}

func TestBadPushConfigFileExitsTwoWithOneLine(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown field":         "basic_auth:\n  username: ops\n  pasword_file: password\n",
		"missing password file": "basic_auth:\n  username: ops\n  password_file: no-such-file\n",
		"missing CA":            "tls_config:\n  ca_file: no-such-ca.pem\n",
		"not YAML":              "{{{\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".yml")
			require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
			res := exporter(t, "", "--once", "--command", "true", "--push.url", "http://"+freeAddr(t), "--push.config.file", path)
			assert.Equal(t, 2, res.exit, res.stderr)
			assert.Contains(t, res.stderr, "--push.config.file "+path)
			assert.Equal(t, 1, strings.Count(strings.TrimSpace(res.stderr), "\n")+1, "one line: %q", res.stderr)
		})
	}
	t.Run("credentials in both", func(t *testing.T) {
		path := filepath.Join(dir, "auth.yml")
		require.NoError(t, os.WriteFile(filepath.Join(dir, "pw"), []byte("x"), 0o600))
		require.NoError(t, os.WriteFile(path, []byte("basic_auth:\n  username: ops\n  password_file: pw\n"), 0o600))
		res := exporter(t, "", "--once", "--command", "true", "--push.url", "http://ops:x@"+freeAddr(t), "--push.config.file", path)
		assert.Equal(t, 2, res.exit, res.stderr)
		assert.Contains(t, res.stderr, "credentials in both")
	})
}

func TestCredentialsInThePushURLStillWorkWithAWarning(t *testing.T) {
	res := exporter(t, "", "--once", "--command", "true", "--push.url", "http://ops:hunter2@"+freeAddr(t), "--push.timeout", "500ms")
	assert.Equal(t, 1, res.exit, "nobody listens there")
	assert.Contains(t, res.stderr, "the password in --push.url can be read by every local user")
	assert.NotContains(t, res.stderr, "hunter2")
}
