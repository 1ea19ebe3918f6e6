# Sourced by the gateway benchmarks: the upstream they all proxy to, an nginx worker answering
# a fixed 1 KiB body with keep-alive. `upstream_conf DIR PORT` writes its config to DIR/up.conf
# (pid and error log in DIR); start it with `nginx -p DIR -c DIR/up.conf -g 'daemon off;'`.
upstream_conf() { # dir port
  local body
  body=$(head -c 1024 /dev/zero | tr '\0' 'x')
  cat > "$1/up.conf" <<CONF
worker_processes 1; pid $1/up.pid; error_log $1/up.err;
events { worker_connections 10240; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$2; location / { return 200 "$body"; } } }
CONF
}
