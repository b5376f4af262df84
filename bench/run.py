#!/usr/bin/env python3
"""Data-path benchmark: the same loads, on loopback, direct and through tunnels.

Rows: direct (the baseline of this run), mailslot over QUIC, mailslot over HTTP/2,
and, when installed, rathole over TLS (also, when asked for, with TCP_NODELAY forced on
every socket by bench/nodelay.c) and bore (plain TCP). For each row:
  bulk   a 100 MiB download and a 100 MiB upload with curl (MiB/s, median of 3)
  req    wrk -t2 -c50 -d10s on a 1 KiB body (req/s, p50, p99)
  cpu    the connector's and the edge's CPU seconds during the row (all its loads), and
         per load: one bulk transfer each way and the wrk run
  rss    the connector's and the edge's peak RSS (VmHWM) after the row
Every figure is also given as a ratio to direct. Everything binds 127.0.0.1, runs for
a bounded time and is stopped at the end.

The mailslot rows run the release build (opt-level 3, what an edge and a workstation
run); one more row runs the connector as boards get it (cross/build.sh's static musl
build at opt-level z, no default features) against the same edge.

With --rounds N the rows run N times, interleaved (every row once, then every row
again, ...), and each figure is the median over the rounds (peak RSS: the largest).
On a small shared machine one run is one sample; interleaved medians are what to compare.

Usage: python3 bench/run.py [--quick] [--rounds N] [--rows quic,http2,device,rathole,rathole-nodelay,bore]
       (needs nginx, wrk, curl; builds --release; --help lists the options)
"""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("quic", "http2", "device", "rathole", "rathole-nodelay", "bore")
# rathole-nodelay (rathole with TCP_NODELAY forced on all its sockets) runs when asked for.
DEFAULT_ROWS = tuple(r for r in ROWS if r != "rathole-nodelay")


def parse_args(argv=None):
    import argparse
    ap = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Data-path benchmark on loopback: direct, mailslot (QUIC, HTTP/2, device build), "
                    "rathole (TLS) and bore (plain TCP) when installed.")
    ap.add_argument("--quick", action="store_true", help="20 MiB bulk and 3 s of wrk instead of 100 MiB and 10 s")
    ap.add_argument("--rounds", type=int, default=1, metavar="N",
                    help="run every row N times, interleaved, and print medians (1-20; default 1)")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), metavar="LIST",
                    help="comma-separated rows to run besides direct, from: " + ", ".join(ROWS)
                         + " (default: all but rathole-nodelay, which needs a C compiler)")
    ap.add_argument("--edge-b", metavar="PATH",
                    help="add a row 'quic, edge B': the QUIC row with this mailslot-edge binary instead "
                         "(an A/B comparison of two edges in interleaved rounds)")
    ap.add_argument("--workers", metavar="N",
                    help="`workers: N` in the edge.yml of every mailslot row (default: the edge's own, "
                         "`auto`, one thread per CPU)")
    ap.add_argument("--workers-b", metavar="N",
                    help="add a row 'quic, N workers': the QUIC row with `workers: N` in its edge.yml "
                         "(an A/B comparison of the edge's thread count in interleaved rounds)")
    args = ap.parse_args(argv)
    for opt in ("workers", "workers_b"):
        v = getattr(args, opt)
        if v is not None and v != "auto" and not (v.isdigit() and 1 <= int(v) <= 256):
            ap.error(f"--{opt.replace('_', '-')} takes auto or a count from 1 to 256")
    if not 1 <= args.rounds <= 20:
        ap.error("--rounds takes a count from 1 to 20")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"--rows: unknown row {', '.join(unknown)} (known: {', '.join(ROWS)})")
    args.rows = set(rows)
    return args


ARGS = parse_args(None if __name__ == "__main__" else [])
QUICK = ARGS.quick
ROUNDS = ARGS.rounds
BULK_MIB = 20 if QUICK else 100
WRK_SECS = 3 if QUICK else 10
BULK_RUNS = 3
HOST = "bench.example.com"
HOST_LINE = ""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    """A child process whose output lines are scanned for readiness. Every one started
    is listed in `Proc.live`, so that main stops them all, even those of a setup that
    failed half way."""

    live = []

    def __init__(self, args, env=None):
        self.p = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        Proc.live.append(self)
        self.lines = []
        self.buf = b""

    def wait_line(self, pattern, timeout=30):
        deadline = time.time() + timeout
        rx = re.compile(pattern)
        fd = self.p.stdout.fileno()
        os.set_blocking(fd, False)
        while time.time() < deadline:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                line = line.decode(errors="replace")
                self.lines.append(line)
                m = rx.search(line)
                if m:
                    return m
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                chunk = None
            if chunk:
                self.buf += chunk
            elif chunk == b"" or self.p.poll() is not None:
                break
            else:
                time.sleep(0.02)
        raise RuntimeError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines[-30:]))

    def cpu(self):
        """User + system CPU seconds."""
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick

    def hwm_kib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def nginx(tmp):
    port = free_port()
    www = os.path.join(tmp, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "1k"), "wb") as f:
        f.write(b"x" * 1024)
    with open(os.path.join(www, "bulk"), "wb") as f:
        f.write(os.urandom(1 << 20) * BULK_MIB)
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log stderr;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 1g;
    root {www};
    location = /upload {{ client_body_buffer_size 1m; return 200 "ok\\n"; }}
  }}
}}
""")
    p = Proc(["nginx", "-c", conf, "-e", "stderr"])
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start")


def curl_speed(url, host, upload=None):
    args = ["curl", "-sS", "--max-time", "120", "-o", "/dev/null", "-H", f"Host: {host}"]
    if upload:
        args += ["-T", upload, "-w", "%{speed_upload}", url + "upload"]
    else:
        args += ["-w", "%{speed_download}", url + "bulk"]
    out = run(args).stdout
    return float(out) / (1 << 20)


def wrk(url, host):
    out = run(["wrk", "-t2", "-c50", f"-d{WRK_SECS}s", "--latency", "-H", f"Host: {host}", url + "1k"],
              timeout=WRK_SECS + 30).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no request rate for {url}:\n{out}")
    rps = float(found.group(1))

    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if m is None:
            raise RuntimeError(f"wrk printed no p{label} latency for {url}:\n{out}")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    count = re.search(r"(\d+) requests in", out)
    return rps, ms("50"), ms("99"), int(errors.group(1)) if errors else 0, int(count.group(1)) if count else 0


def measure(name, url, host, tmp, procs):
    """Runs the loads against url; procs maps role -> Proc for CPU and RSS."""
    upload = os.path.join(tmp, "www", "bulk")
    cpu = lambda: {k: p.cpu() for k, p in procs.items()}
    since = lambda before, after: {k: after[k] - before[k] for k in before}
    cpu0 = cpu()
    # The median of three: one transfer lasts well under a second here, and a single
    # one swings with whatever else the two cores were doing at that moment.
    down = statistics.median(curl_speed(url, host) for _ in range(BULK_RUNS))
    cpu1 = cpu()
    up = statistics.median(curl_speed(url, host, upload=upload) for _ in range(BULK_RUNS))
    cpu2 = cpu()
    rps, p50, p99, errs, requests = wrk(url, host)
    cpu3 = cpu()
    hwm = {k: p.hwm_kib() for k, p in procs.items()}
    # Per load: CPU seconds of one bulk transfer (the mean of the three) and of the wrk run.
    per_load = {
        "down": {k: v / BULK_RUNS for k, v in since(cpu0, cpu1).items()},
        "up": {k: v / BULK_RUNS for k, v in since(cpu1, cpu2).items()},
        "req": since(cpu2, cpu3),
    }
    # Both ends' CPU per request under wrk, in microseconds.
    us_per_req = sum(per_load["req"].values()) / requests * 1e6 if requests and procs else None
    # The edge's (the tunnel server's) alone: the figure the goal compares.
    edge_us = per_load["req"]["edge"] / requests * 1e6 if requests and "edge" in procs else None
    return dict(name=name, down=down, up=up, rps=rps, p50=p50, p99=p99, errors=errs,
                cpu=since(cpu0, cpu3), load_cpu=per_load, us_per_req=us_per_req, edge_us=edge_us, hwm=hwm)


def combine(runs):
    """One row from its rounds: medians; peak RSS the largest; errors summed."""
    med = lambda key: statistics.median(r[key] for r in runs)
    roles = runs[0]["cpu"].keys()
    return dict(name=runs[0]["name"], down=med("down"), up=med("up"), rps=med("rps"), p50=med("p50"),
                p99=med("p99"), errors=sum(r["errors"] for r in runs),
                us_per_req=statistics.median(r["us_per_req"] for r in runs) if runs[0]["us_per_req"] else None,
                edge_us=statistics.median(r["edge_us"] for r in runs) if runs[0]["edge_us"] else None,
                cpu={k: statistics.median(r["cpu"][k] for r in runs) for k in roles},
                load_cpu={load: {k: statistics.median(r["load_cpu"][load][k] for r in runs) for k in roles}
                          for load in ("down", "up", "req")},
                hwm={k: max(r["hwm"][k] for r in runs) for k in roles})


def host_line():
    """The host, date and commit every figure is given with."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
    except OSError:
        pass
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return (f"host: {model}, {os.cpu_count()} cores, Linux {os.uname().release}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {git('rev-parse', '--short', 'HEAD')}{dirty}; "
            f"load average {os.getloadavg()[0]:.2f} at the start")


def build_release():
    """Builds the release binaries (symbols kept, for callgrind and perf; the code is the
    same as a stripped build's) and returns (edge, mailslot) paths."""
    print("building release binaries ...", flush=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bins"], cwd=ROOT, check=True,
                   env={**os.environ, "CARGO_PROFILE_RELEASE_STRIP": "false"})
    return (os.path.join(ROOT, "target/release/mailslot-edge"), os.path.join(ROOT, "target/release/mailslot"))


def mailslot(protocol, tmp, origin_port, binaries, connector_bin=None, edge_wrap=(), timeout=30, workers=None):
    """A mailslot tunnel to the origin; `edge_wrap` prefixes the edge's command (valgrind);
    `workers`: the edge's `workers:` setting (None: --workers, else the edge's default)."""
    edge_bin, mailslot_bin = binaries
    connector_bin = connector_bin or mailslot_bin
    d = tempfile.mkdtemp(dir=tmp)
    run([edge_bin, "init", "--dir", d, "--hostname", "127.0.0.1"])
    yml = os.path.join(d, "edge.yml")
    text = open(yml).read()
    text = re.sub(r"^(tunnel-listen|http-listen|https-listen):.*$",
                  lambda m: f"{m.group(1)}: " + ("none" if m.group(1) == "https-listen" else "127.0.0.1:0"),
                  text, flags=re.M)
    text += "limits:\n  max-conns-per-ip: 10000\n"
    workers = workers or ARGS.workers
    if workers:
        text += f"workers: {workers}\n"
    open(yml, "w").write(text)
    edge = Proc([*edge_wrap, edge_bin, "serve", "--config", yml], env={"RUST_LOG": "warn,mailslot::edge=info"})
    tunnel = edge.wait_line(r"tunnel listener on udp (\S+)", timeout).group(1)
    http = edge.wait_line(r": HTTP on (\S+)", timeout).group(1)
    token = run([edge_bin, "token", "--config", yml, "--tunnel", "bench", "--allow", HOST]).stdout.strip()
    cfg = os.path.join(d, "config.yml")
    with open(cfg, "w") as f:
        f.write(f"tunnel: bench\ntoken: {token}\nedge: [\"{tunnel}\"]\nedge-ca: {d}/ca.pem\n"
                f"protocol: {protocol}\nha-connections: 2\ningress:\n"
                f"  - hostname: {HOST}\n    service: http://127.0.0.1:{origin_port}\n  - service: http_status:404\n")
    run([mailslot_bin, "config", "compile", cfg, "--output", os.path.join(d, "config.bin")])
    conn = Proc([connector_bin, "run", "--config", os.path.join(d, "config.bin")], env={"RUST_LOG": "info"})
    for _ in range(2):
        conn.wait_line("registered: tunnel", timeout)
    return f"http://{http}/", {"connector": conn, "edge": edge}


def nodelay_shim(tmp):
    """bench/nodelay.c built into tmp: an LD_PRELOAD library that sets TCP_NODELAY on every
    TCP socket a process accepts or connects."""
    out = os.path.join(tmp, "nodelay.so")
    if not os.path.exists(out):
        run(["cc", "-O2", "-shared", "-fPIC", "-o", out, os.path.join(ROOT, "bench", "nodelay.c"), "-ldl"])
    return out


def rathole(tmp, origin_port, force_nodelay=False):
    """rathole over TLS; `force_nodelay`: with bench/nodelay.c preloaded into both ends."""
    if not shutil.which("rathole"):
        return None
    env = {"LD_PRELOAD": nodelay_shim(tmp)} if force_nodelay else None
    d = tempfile.mkdtemp(dir=tmp)
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{d}/key.pem", "-out",
         f"{d}/cert.pem", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
    run(["openssl", "pkcs12", "-export", "-out", f"{d}/id.p12", "-inkey", f"{d}/key.pem", "-in",
         f"{d}/cert.pem", "-passout", "pass:bench"])
    ctl, vis = free_port(), free_port()
    # rathole's documented settings for latency (bench/README.md, "The peers"): TCP_NODELAY
    # on the transport's sockets (its default since 0.4, written out here) and on each
    # service's data channels (unset, a service leaves the transport's choice alone).
    open(f"{d}/server.toml", "w").write(f"""[server]
bind_addr = "127.0.0.1:{ctl}"
[server.transport]
type = "tls"
[server.transport.tcp]
nodelay = true
[server.transport.tls]
pkcs12 = "{d}/id.p12"
pkcs12_password = "bench"
[server.services.web]
token = "bench"
bind_addr = "127.0.0.1:{vis}"
nodelay = true
""")
    open(f"{d}/client.toml", "w").write(f"""[client]
remote_addr = "localhost:{ctl}"
[client.transport]
type = "tls"
[client.transport.tcp]
nodelay = true
[client.transport.tls]
trusted_root = "{d}/cert.pem"
hostname = "localhost"
[client.services.web]
token = "bench"
local_addr = "127.0.0.1:{origin_port}"
nodelay = true
""")
    server = Proc(["rathole", "-s", f"{d}/server.toml"], env=env)
    client = Proc(["rathole", "-c", f"{d}/client.toml"], env=env)
    client.wait_line(r"Control channel established", timeout=20)
    return f"http://127.0.0.1:{vis}/", {"connector": client, "edge": server}


def bore(tmp, origin_port):
    if not shutil.which("bore"):
        return None
    server = Proc(["bore", "server", "--min-port", "20000", "--max-port", "29999"], env={"RUST_LOG": "info"})
    server.wait_line("server listening")
    client = Proc(["bore", "local", str(origin_port), "--to", "127.0.0.1"], env={"RUST_LOG": "info"})
    port = client.wait_line(r"listening at 127\.0\.0\.1:(\d+)").group(1)
    return f"http://127.0.0.1:{port}/", {"connector": client, "edge": server}


def device_build():
    """The connector as boards get it: cross/build.sh's static musl build for this
    machine's architecture (opt-level z, no default features) when its rustup target is
    installed, else the same build against the host's libc."""
    arch = os.uname().machine
    target = f"{arch}-unknown-linux-musl"
    installed = subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True,
                               text=True).stdout.split() if shutil.which("rustup") else []
    if target in installed:
        subprocess.run(["bash", "cross/build.sh", target], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return os.path.join(ROOT, "target", target, "release", "mailslot"), "quic, device (musl)"
    print(f"(device row: rustup target {target} not installed; using the host libc build)")
    device_dir = os.path.join(ROOT, "target", "bench-device")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--no-default-features", "--bin", "mailslot",
                    "--target-dir", device_dir], cwd=ROOT, check=True,
                   env={**os.environ, "CARGO_PROFILE_RELEASE_OPT_LEVEL": "z"})
    return os.path.join(device_dir, "release", "mailslot"), "quic, device (libc)"


def main():
    for tool in ("nginx", "wrk", "curl"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is required (apt-get install nginx wrk curl)")
    global HOST_LINE
    HOST_LINE = host_line()
    binaries = build_release()
    device_bin, device_label = device_build() if "device" in ARGS.rows else (None, None)
    tmp = tempfile.mkdtemp(prefix="mailslot-bench-")
    os.chmod(tmp, 0o755)  # nginx workers run as another user
    results = {}  # row key -> one measurement per round, in row order
    try:
        _, origin_port = nginx(tmp)
        direct = f"http://127.0.0.1:{origin_port}/"
        setups = [
            ("direct", "direct", None),
            ("quic", "mailslot quic", lambda: mailslot("quic", tmp, origin_port, binaries)),
            ("quic-b", "quic, edge B", lambda: mailslot("quic", tmp, origin_port,
                                                         (os.path.abspath(ARGS.edge_b or ""), binaries[1]))),
            ("quic-w", f"quic, {ARGS.workers_b} workers", lambda: mailslot("quic", tmp, origin_port, binaries,
                                                                         workers=ARGS.workers_b)),
            ("http2", "mailslot http2", lambda: mailslot("http2", tmp, origin_port, binaries)),
            ("device", device_label, lambda: mailslot("quic", tmp, origin_port, binaries, device_bin)),
            ("rathole", "rathole tls", lambda: rathole(tmp, origin_port)),
            ("rathole-nodelay", "rathole, nodelay", lambda: rathole(tmp, origin_port, force_nodelay=True)),
            ("bore", "bore (plain tcp)", lambda: bore(tmp, origin_port)),
        ]
        setups = [row for row in setups
                  if row[0] == "direct" or row[0] in ARGS.rows or (row[0] == "quic-b" and ARGS.edge_b)
                  or (row[0] == "quic-w" and ARGS.workers_b)]
        for n in range(ROUNDS):
            if ROUNDS > 1:
                print(f"round {n + 1} of {ROUNDS} ...", flush=True)
            # Every other round runs the rows after direct in reverse order: a row's place
            # in the round moves its figures (bench/README.md, "Results", 2026-12-06).
            order = setups if n % 2 == 0 else setups[:1] + setups[:0:-1]
            for key, label, setup in order:
                if setup is None:
                    results.setdefault(key, []).append(measure(label, direct, HOST, tmp, {}))
                    continue
                got = setup()
                if got is None:
                    if n == 0:
                        print(f"({label}: not installed, skipped)")
                    continue
                url, procs = got
                results.setdefault(key, []).append(measure(label, url, HOST, tmp, procs))
                for p in procs.values():
                    p.stop()
    finally:
        for p in Proc.live:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    by_key = {key: combine(runs) for key, runs in results.items()}
    rows = list(by_key.values())

    base = rows[0]
    print()
    print(HOST_LINE)
    print("command: python3 bench/run.py " + " ".join(sys.argv[1:]))
    rounds = f"; medians of {ROUNDS} interleaved rounds" if ROUNDS > 1 else ""
    print(f"bulk {BULK_MIB} MiB (median of {BULK_RUNS}), wrk -t2 -c50 -d{WRK_SECS}s on 1 KiB{rounds}; "
          "ratios are to direct in this run")
    hdr = (f"{'row':<20}{'down MiB/s':>16}{'up MiB/s':>16}{'req/s':>16}{'p50 ms':>9}{'p99 ms':>9}"
           f"{'conn cpu s':>11}{'conn peak':>11}{'edge cpu s':>11}{'edge peak':>11}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        def rel(key):
            return f"{r[key]:8.1f} {r[key] / base[key]:5.2f}x"
        c, e = r["cpu"].get("connector"), r["cpu"].get("edge")
        ch, eh = r["hwm"].get("connector"), r["hwm"].get("edge")
        fmt_cpu = lambda v: f"{v:11.2f}" if v is not None else f"{'-':>11}"
        fmt_mem = lambda v: f"{v / 1024:8.1f}MiB" if v is not None else f"{'-':>11}"
        print(f"{r['name']:<20}{rel('down'):>16}{rel('up'):>16}{rel('rps'):>16}{r['p50']:9.2f}{r['p99']:9.2f}"
              f"{fmt_cpu(c)}{fmt_mem(ch)}{fmt_cpu(e)}{fmt_mem(eh)}")
        if r["errors"]:
            print(f"  ! {r['errors']} non-2xx responses")
    print()
    print(f"CPU seconds per load: one {BULK_MIB} MiB transfer (down, up) and the whole wrk run (req)")
    hdr2 = f"{'row':<20}" + "".join(f"{h:>11}" for h in ("conn down", "conn up", "conn req", "edge down",
                                                             "edge up", "edge req", "sum down", "sum up", "us/req",
                                                             "edge us/req"))
    print(hdr2)
    print("-" * len(hdr2))
    for r in rows[1:]:
        lc = r["load_cpu"]
        cells = [lc[load].get(role) for role in ("connector", "edge") for load in ("down", "up", "req")]
        cells += [sum(lc[load].values()) for load in ("down", "up")]
        us, eus = r["us_per_req"], r["edge_us"]
        print(f"{r['name']:<20}" + "".join(f"{v:11.3f}" if v is not None else f"{'-':>11}" for v in cells)
              + "".join(f"{v:11.1f}" if v is not None else f"{'-':>11}" for v in (us, eus)))
    rathole_row = by_key.get("rathole")
    if rathole_row is not None:
        print()
        print("against rathole tls (goals: req/s >= 1.5x, bulk >= 1.2x, p99 no worse, edge CPU/req no higher):")
        for key in ("quic", "quic-b", "quic-w", "http2", "device"):
            r = by_key.get(key)
            if r is None:
                continue
            ratio = lambda key: r[key] / rathole_row[key] if rathole_row[key] else float("nan")
            eus = (f"  edge CPU/req {r['edge_us']:.1f} vs {rathole_row['edge_us']:.1f} us"
                   if r["edge_us"] and rathole_row["edge_us"] else "")
            print(f"  {r['name']:<20} down {ratio('down'):5.2f}x  up {ratio('up'):5.2f}x  "
                  f"req/s {ratio('rps'):5.2f}x  p99 {r['p99']:.2f} vs {rathole_row['p99']:.2f} ms{eus}")


if __name__ == "__main__":
    main()
