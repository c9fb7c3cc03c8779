"""nginx (Debian's) in front of a real throttlexd through auth_request, as in docs/api.md."""
import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from harness import Node

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONF = """
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream throttlexd {{ server 127.0.0.1:{tx_port}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{app_port};
    location / {{ return 200 "app says hello\\n"; }}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_throttlex;
      auth_request_set $tx_ratelimit        $upstream_http_ratelimit;
      auth_request_set $tx_ratelimit_policy $upstream_http_ratelimit_policy;
      auth_request_set $tx_retry_after      $upstream_http_retry_after;
      add_header RateLimit        $tx_ratelimit always;
      add_header RateLimit-Policy $tx_ratelimit_policy always;
      error_page 403 = @ratelimited;
      proxy_pass http://127.0.0.1:{app_port};
    }}
    location = /_throttlex {{
      internal;
      proxy_pass http://throttlexd/v1/auth?rule=per-client;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-RateLimit-Key $http_x_client;
    }}
    location @ratelimited {{
      add_header RateLimit        $tx_ratelimit always;
      add_header RateLimit-Policy $tx_ratelimit_policy always;
      add_header Retry-After      $tx_retry_after always;
      default_type application/problem+json;
      return 429 '{{"title":"Too Many Requests","status":429}}';
    }}
  }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@unittest.skipUnless(os.path.exists(NGINX), "nginx is not installed")
class NginxAuthRequestTest(unittest.TestCase):
    def setUp(self):
        self.node = Node(rules="rules:\n  - {name: per-client, limit: 3, period: 1m}\n")
        self.tmp = tempfile.TemporaryDirectory(prefix="throttlex-nginx-")
        self.port = free_port()
        conf = os.path.join(self.tmp.name, "nginx.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(tmp=self.tmp.name, tx_port=self.node.http_port,
                                app_port=free_port(), port=self.port))
        self.nginx = subprocess.Popen([NGINX, "-p", self.tmp.name, "-c", conf, "-g", "daemon off;"],
                                      stderr=subprocess.PIPE, text=True)
        # nginx says nothing when it is up: poll its port (bounded) until it accepts.
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.nginx.poll() is not None:
                    self.fail("nginx failed to start: " + self.nginx.stderr.read())
                if time.monotonic() > deadline:
                    self.fail("nginx did not open its port within 10 s")
                time.sleep(0.02)

    def tearDown(self):
        self.nginx.terminate()
        self.nginx.wait(10)
        self.node.stop()
        self.tmp.cleanup()

    def get(self, client):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/page", headers={"X-Client": client})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
        finally:
            conn.close()

    def test_requests_over_the_limit_get_429_with_ratelimit_headers(self):
        for i in range(3):
            status, headers, body = self.get("alice")
            self.assertEqual(status, 200, body)
            self.assertEqual(body, "app says hello\n")
            # t: until the bucket is full again, 20 s per spent unit at 3 per minute.
            self.assertEqual(headers["ratelimit"], f'"per-client";r={2 - i};t={20 * (i + 1)}')
            self.assertEqual(headers["ratelimit-policy"], '"per-client";q=3;w=60')
        status, headers, body = self.get("alice")
        self.assertEqual(status, 429)
        self.assertEqual(headers["retry-after"], "20")
        self.assertTrue(headers["ratelimit"].startswith('"per-client";r=0'))
        # Another client has its own budget.
        self.assertEqual(self.get("bob")[0], 200)


if __name__ == "__main__":
    unittest.main()
