#!/usr/bin/env python3
"""The edge-to-edge hop's cost: the same requests through the edge a device is connected
to (A, direct) and through another edge of the cluster that forwards them to A (B), in
the same run, on loopback.

Two edges share one redis-server (unix socket); one connector is connected to A only;
nginx serves a 1 KiB file as the origin. For each edge, interleaved over the rounds:
  latency   wrk -t1 -c1 --latency: one request at a time (p50, p99, req/s): what the hop
            adds to one request, without queueing
  load      wrk -t2 -c50 --latency: 50 connections (req/s, p50, p99): what it costs
            under load (B's and A's CPU both serve each forwarded request)
Figures are medians over the rounds, printed with the ratio B/A and the hop's added
median latency (B's p50 - A's p50). Every load is bounded in time (--secs), so the number
of requests is bounded too (printed).

Usage: python3 bench/hop.py [--rounds N] [--secs S] [--debug]
       (needs nginx, wrk, curl, redis-server; builds --release unless --debug)
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (the data-path harness: nginx, wrk, Proc, host line)

HOST = bench.HOST
SECRET = "0123456789abcdef0123456789abcdef-bench"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, metavar="N", help="interleaved rounds (1-20), default 3")
    ap.add_argument("--secs", type=int, default=5, metavar="S", help="seconds of each wrk run (1-60), default 5")
    ap.add_argument("--debug", action="store_true",
                    help="use the debug build (a smoke test of the harness: no meaningful figures)")
    a = ap.parse_args()
    if not 1 <= a.rounds <= 20 or not 1 <= a.secs <= 60:
        ap.error("--rounds 1-20, --secs 1-60")
    return a


def edge(binary, tmp, name, redis_sock, signing_key=None):
    """An edge of the cluster; its folder, HTTP address and member address."""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    bench.run([binary, "init", "--dir", d, "--hostname", "127.0.0.1"])
    yml = os.path.join(d, "edge.yml")
    text = open(yml).read()
    import re
    text = re.sub(r"^(tunnel-listen|http-listen|https-listen):.*$",
                  lambda m: f"{m.group(1)}: " + ("none" if m.group(1) == "https-listen" else "127.0.0.1:0"),
                  text, flags=re.M)
    if signing_key:
        text = re.sub(r"^signing-key:.*$", f"signing-key: {signing_key}", text, flags=re.M)
    text += ("limits:\n  max-conns-per-ip: 10000\n"
             f"cluster:\n  redis: {redis_sock}\n  secret: {SECRET}\n  member: 127.0.0.1:0\n")
    open(yml, "w").write(text)
    p = bench.Proc([binary, "serve", "--config", yml], env={"RUST_LOG": "warn,mailslot::edge=info"})
    tunnel = p.wait_line(r"tunnel listener on udp (\S+)").group(1)
    http = p.wait_line(r": HTTP on (\S+)").group(1)
    member = p.wait_line(r"cluster: peers on udp \S+ as member (\S+)").group(1)
    p.wait_line(r"cluster: following fleet changes")
    return dict(dir=d, yml=yml, proc=p, tunnel=tunnel, http=http, member=member)


def wrk(url, threads, conns, secs):
    out = bench.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--latency", "-H", f"Host: {HOST}",
                     url + "1k"], timeout=secs + 30).stdout
    import re
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    count = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return dict(rps=rps, p50=ms("50"), p99=ms("99"), count=count, errors=int(errors.group(1)) if errors else 0)


def main():
    args = parse_args()
    for tool in ("nginx", "wrk", "curl", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is required (apt-get install nginx wrk curl redis-server)")
    host_line = bench.host_line()
    if args.debug:
        binaries = (os.path.join(bench.ROOT, "target/debug/mailslot-edge"),
                    os.path.join(bench.ROOT, "target/debug/mailslot"))
    else:
        binaries = bench.build_release()
    edge_bin, mailslot_bin = binaries
    tmp = tempfile.mkdtemp(prefix="mailslot-hop-")
    os.chmod(tmp, 0o755)  # nginx workers run as another user
    bench.BULK_MIB = 1  # nginx() writes a bulk file too: unused here
    results = {"A": {"latency": [], "load": []}, "B": {"latency": [], "load": []}}
    try:
        _, origin_port = bench.nginx(tmp)
        sock = os.path.join(tmp, "redis.sock")
        redis = bench.Proc(["redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
                            "--appendonly", "no", "--dir", tmp])
        redis.wait_line(r"eady to accept connections")
        a = edge(edge_bin, tmp, "a", sock)
        b = edge(edge_bin, tmp, "b", sock)
        token = bench.run([edge_bin, "token", "--config", a["yml"], "--tunnel", "bench",
                           "--allow", HOST]).stdout.strip()
        cfg = os.path.join(tmp, "device.yml")
        with open(cfg, "w") as f:
            f.write(f"tunnel: bench\ntoken: {token}\nedge: [\"{a['tunnel']}\"]\nedge-ca: {a['dir']}/ca.pem\n"
                    f"protocol: quic\nha-connections: 2\ningress:\n"
                    f"  - hostname: {HOST}\n    service: http://127.0.0.1:{origin_port}\n"
                    f"  - service: http_status:404\n")
        binf = os.path.join(tmp, "config.bin")
        bench.run([mailslot_bin, "config", "compile", cfg, "--output", binf])
        conn = bench.Proc([mailslot_bin, "run", "--config", binf], env={"RUST_LOG": "info"})
        for _ in range(2):
            conn.wait_line("registered: tunnel")
        urls = {"A": f"http://{a['http']}/", "B": f"http://{b['http']}/"}
        for key, url in urls.items():
            out = bench.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {HOST}",
                             url + "1k"]).stdout
            if out != "200":
                sys.exit(f"bench: warm-up request through edge {key} answered {out}")
        for n in range(args.rounds):
            print(f"round {n + 1} of {args.rounds} ...", flush=True)
            for key, url in urls.items():
                results[key]["latency"].append(wrk(url, 1, 1, args.secs))
                results[key]["load"].append(wrk(url, 2, 50, args.secs))
    finally:
        for p in bench.Proc.live:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    med = lambda runs, k: statistics.median(r[k] for r in runs)
    print()
    print(host_line)
    print("command: python3 bench/hop.py " + " ".join(sys.argv[1:]))
    print(f"wrk on a 1 KiB file from nginx, {args.secs} s per run, medians of {args.rounds} interleaved rounds; "
          f"A = the edge the device is connected to (direct), B = another edge forwarding to A (one hop)"
          + ("; DEBUG BUILD: not meaningful" if args.debug else ""))
    hdr = f"{'load':<28}{'edge':<14}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}{'errors':>8}"
    print(hdr)
    print("-" * len(hdr))
    for load, label in (("latency", "one connection (-c1)"), ("load", "50 connections (-c50)")):
        for key, name in (("A", "A direct"), ("B", "B forwarded")):
            runs = results[key][load]
            print(f"{label:<28}{name:<14}{med(runs, 'rps'):10.0f}{med(runs, 'p50'):9.3f}{med(runs, 'p99'):9.3f}"
                  f"{sum(r['count'] for r in runs):10d}{sum(r['errors'] for r in runs):8d}")
        ra, rb = results["A"][load], results["B"][load]
        print(f"{'':<28}{'B / A':<14}{med(rb, 'rps') / med(ra, 'rps'):9.2f}x"
              f"{med(rb, 'p50') / med(ra, 'p50'):8.2f}x{med(rb, 'p99') / med(ra, 'p99'):8.2f}x")
    la, lb = results["A"]["latency"], results["B"]["latency"]
    added = med(lb, "p50") - med(la, "p50")
    print()
    print(f"the hop adds {added:.3f} ms at the median, one request at a time (goal: <= 0.5 ms)")


if __name__ == "__main__":
    main()
