# Shell helpers shared by .ci/cross.sh (end-to-end smoke) and cross/footprint.sh: a real
# x86_64 edge, a real origin and a (possibly cross-built, qemu-run) connector on
# loopback. Every listener binds port 0; readiness and addresses are read from the
# processes' own log lines, with bounded waits. Source it, then call `ms_init WORKDIR`;
# everything started is killed by `ms_cleanup` (install it in an EXIT trap).
#
# Needs: EDGE_BIN (host mailslot-edge), HOST_MAILSLOT (host mailslot, for
# `config compile`), python3, curl.

MS_PIDS=()
MS_DIR=

ms_init() {
    MS_DIR=$1
    mkdir -p "$MS_DIR"
}

ms_cleanup() {
    local pid
    for pid in "${MS_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${MS_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    MS_PIDS=()
}

# ms_wait_line FILE NEEDLE SECONDS [COUNT]: waits until FILE holds COUNT (default 1)
# lines containing NEEDLE; prints the last such line. Fails (and shows FILE) on timeout.
ms_wait_line() {
    local file=$1 needle=$2 secs=$3 count=${4:-1} deadline n
    deadline=$((SECONDS + secs))
    while :; do
        n=$(grep -cF -- "$needle" "$file" 2>/dev/null || true)
        if [ "${n:-0}" -ge "$count" ]; then
            grep -F -- "$needle" "$file" | sed -n "${count}p"
            return 0
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "timeout: no $count line(s) with '$needle' in $file within ${secs}s; log:" >&2
            sed 's/^/    /' "$file" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

# The address after MARKER in LINE (first word).
ms_addr_after() {
    local rest=${1#*"$2"}
    echo "${rest%% *}"
}

# ms_start_edge: init + serve an edge in $MS_DIR/edge; sets EDGE_TUNNEL, EDGE_HTTP.
ms_start_edge() {
    local d=$MS_DIR/edge line
    "$EDGE_BIN" init --dir "$d" --hostname 127.0.0.1 --hostname localhost \
        --hostname dev42.example.com --hostname '*.dev42.example.com' >"$MS_DIR/edge-init.log" 2>&1 ||
        { cat "$MS_DIR/edge-init.log" >&2; return 1; }
    sed -i -e 's/^tunnel-listen:.*/tunnel-listen: 127.0.0.1:0/' \
        -e 's/^http-listen:.*/http-listen: 127.0.0.1:0/' \
        -e 's/^https-listen:.*/https-listen: 127.0.0.1:0/' "$d/edge.yml"
    RUST_LOG=info "$EDGE_BIN" serve --config "$d/edge.yml" </dev/null >"$MS_DIR/edge.log" 2>&1 &
    MS_PIDS+=($!)
    line=$(ms_wait_line "$MS_DIR/edge.log" "tunnel listener on udp " 20) || return 1
    EDGE_TUNNEL=$(ms_addr_after "$line" "tunnel listener on udp ")
    line=$(ms_wait_line "$MS_DIR/edge.log" ": HTTP on " 20) || return 1
    EDGE_HTTP=$(ms_addr_after "$line" ": HTTP on ")
}

# ms_start_origin: an HTTP origin on 127.0.0.1:0; sets ORIGIN_ADDR. It answers
# /bytes/N with N bytes and anything else with "hello from the origin".
ms_start_origin() {
    python3 -u - >"$MS_DIR/origin.log" 2>&1 <<'EOF' &
import http.server, socketserver, sys

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/bytes/"):
            body = b"x" * min(int(self.path[7:] or 0), 1 << 20)
        else:
            body = b"hello from the origin\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 128

s = S(("127.0.0.1", 0), H)
print("origin on 127.0.0.1:%d" % s.server_address[1], flush=True)
s.serve_forever()
EOF
    MS_PIDS+=($!)
    local line
    line=$(ms_wait_line "$MS_DIR/origin.log" "origin on " 10) || return 1
    ORIGIN_ADDR=$(ms_addr_after "$line" "origin on ")
}

# ms_start_connector NAME HA RUNNER... BINARY: compiles a device config for the running
# edge and origin (host mailslot), starts `BINARY run` (under RUNNER, e.g.
# qemu-aarch64-static, or nothing) and waits for HA registrations; sets CONNECTOR_PID
# (for qemu-user, the qemu process is the emulated program).
ms_start_connector() {
    local name=$1 ha=$2 token
    shift 2
    token=$("$EDGE_BIN" token --config "$MS_DIR/edge/edge.yml" --tunnel dev42 \
        --allow dev42.example.com --expires 1d) || return 1
    cat >"$MS_DIR/$name.yml" <<EOF
tunnel: dev42
token: $token
edge: ["$EDGE_TUNNEL"]
edge-ca: $MS_DIR/edge/ca.pem
protocol: quic
ha-connections: $ha
ingress:
  - hostname: dev42.example.com
    service: http://$ORIGIN_ADDR
  - service: http_status:404
EOF
    "$HOST_MAILSLOT" config compile "$MS_DIR/$name.yml" --output "$MS_DIR/$name.bin" >/dev/null || return 1
    RUST_LOG=info "$@" run --config "$MS_DIR/$name.bin" </dev/null >"$MS_DIR/$name.log" 2>&1 &
    CONNECTOR_PID=$!
    MS_PIDS+=($CONNECTOR_PID)
    ms_wait_line "$MS_DIR/$name.log" "registered: tunnel" 60 "$ha" >/dev/null
}

# The qemu-user command for a target ("" for the host's own).
ms_runner() {
    case "$1" in
        aarch64-*) echo qemu-aarch64-static ;;
        armv7-*) echo qemu-arm-static ;;
        arm-*) echo "qemu-arm-static -cpu arm1176" ;;
        x86_64-*) echo "" ;;
        *) return 1 ;;
    esac
}
