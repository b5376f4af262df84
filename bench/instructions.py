#!/usr/bin/env python3
"""The edge's instructions per proxied request, counted by callgrind: a figure that does
not move with the machine's load, for catching regressions in the request path.

The release edge (the same build as bench/run.py's, symbols kept) runs under
`valgrind --tool=callgrind`; the connector (release build, not under valgrind) and nginx
run as usual. After a warm-up the counters are zeroed, a fixed number of requests for a
1 KiB file go through the tunnel on a fixed number of keep-alive connections, and the
counters are dumped; then the counters are zeroed again and the edge is left idle for the
same wall time (timers, tunnel keep-alives) and dumped. The figure is

    (instructions under load - instructions idle) / requests

and the top functions of the load dump (callgrind_annotate, self cost) follow, each as
instructions per request, so a developer sees where the edge spends.

Usage: python3 bench/instructions.py [--requests N] [--concurrency C] [--protocol quic|http2]
                                     [--top K] [--keep DIR]
Needs valgrind (callgrind_control, callgrind_annotate), nginx and curl.
"""

import argparse
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (bench/run.py: nginx, the mailslot setup, Proc)


def parse_args():
    ap = argparse.ArgumentParser(prog="bench/instructions.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests counted (default 2000)")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="keep-alive connections, one request in flight on each (default 1: the steadiest "
                         "figure, within 1%% between runs; with more, how requests batch per wake-up varies)")
    ap.add_argument("--warmup", type=int, default=400, help="requests before counting (default 400)")
    ap.add_argument("--protocol", choices=("quic", "http2"), default="quic", help="tunnel transport (default quic)")
    ap.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    ap.add_argument("--keep", metavar="DIR", help="copy the callgrind dumps into DIR")
    ap.add_argument("--edge", metavar="PATH",
                    help="run this mailslot-edge binary instead of the release build's (an A/B comparison)")
    args = ap.parse_args()
    if not 1 <= args.concurrency <= 256 or args.requests < args.concurrency:
        ap.error("--concurrency takes 1-256, and --requests at least that many")
    return args


def load(host, port, requests, concurrency):
    """Sends `requests` GETs for /1k over `concurrency` keep-alive connections, each
    connection its share in turn (one request in flight per connection). Returns the
    wall seconds; raises on any response other than 200 with a 1 KiB body."""
    share = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    req = f"GET /1k HTTP/1.1\r\nHost: {bench.HOST}\r\n\r\n".encode()
    errors = []

    def client(n):
        try:
            s = socket.create_connection((host, port), timeout=120)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            for _ in range(n):
                s.sendall(req)
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise RuntimeError("connection closed mid-response")
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                status = head.split(b" ", 2)[1]
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if status != b"200" or m is None:
                    raise RuntimeError(f"unexpected response: {head[:200]!r}")
                length = int(m.group(1))
                while len(buf) < length:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise RuntimeError("connection closed mid-body")
                    buf += chunk
                buf = buf[length:]
            s.close()
        except Exception as e:  # reported once all threads are done
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in share]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} load connections failed; first: {errors[0]}")
    return secs


def callgrind_control(pid, *args):
    bench.run(["callgrind_control", *args, str(pid)], timeout=120)


def dump(pid, out_dir, label, seen):
    """Asks callgrind for a dump and returns the new file's path and its total Ir."""
    callgrind_control(pid, "-d", label)
    deadline = time.time() + 60
    while time.time() < deadline:
        new = [f for f in glob.glob(os.path.join(out_dir, "callgrind.out*")) if f not in seen]
        for f in new:
            text = open(f, errors="replace").read()
            m = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
            # The totals line comes last: a dump without it is still being written.
            if m:
                seen.add(f)
                return f, int(m.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no dump for {label}")


def top_functions(path, requests, k):
    """(Ir per request, share %, function) for the k functions with the most self cost."""
    out = bench.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path]).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)$", line)
        if m is None:
            continue
        name = m.group(3).strip()
        # Thread entry points: callgrind reports the whole run under them.
        if name.startswith("PROGRAM TOTALS") or "file:function" in name or float(m.group(2)) > 99.5:
            continue
        name = re.sub(r"\s+\[[^\]]*\]$", "", name)  # the object file
        rows.append((int(m.group(1).replace(",", "")) / requests, float(m.group(2)), name))
        if len(rows) == k:
            break
    return rows


def main():
    args = parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "nginx", "curl"):
        if not shutil.which(tool):
            sys.exit(f"instructions: {tool} is required (apt-get install valgrind nginx curl)")
    host_info = bench.host_line()
    binaries = bench.build_release()
    if args.edge:
        binaries = (os.path.abspath(args.edge), binaries[1])
    tmp = tempfile.mkdtemp(prefix="mailslot-instr-")
    os.chmod(tmp, 0o755)  # nginx workers run as another user
    out_dir = os.path.join(tmp, "callgrind")
    os.makedirs(out_dir)
    wrap = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--collect-jumps=no",
            f"--callgrind-out-file={out_dir}/callgrind.out"]
    try:
        _, origin_port = bench.nginx(tmp)
        url, procs = bench.mailslot(args.protocol, tmp, origin_port, binaries, edge_wrap=wrap, timeout=180)
        edge = procs["edge"].p.pid
        m = re.match(r"http://([\d.]+):(\d+)/", url)
        host, port = m.group(1), int(m.group(2))
        load(host, port, args.warmup, args.concurrency)
        seen = set(glob.glob(os.path.join(out_dir, "callgrind.out*")))
        callgrind_control(edge, "-z")
        secs = load(host, port, args.requests, args.concurrency)
        load_file, load_ir = dump(edge, out_dir, "load", seen)
        callgrind_control(edge, "-z")
        time.sleep(secs)
        idle_file, idle_ir = dump(edge, out_dir, "idle", seen)
        top = top_functions(load_file, args.requests, args.top)
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            shutil.copy(load_file, os.path.join(args.keep, "callgrind.load"))
            shutil.copy(idle_file, os.path.join(args.keep, "callgrind.idle"))
    finally:
        for p in bench.Proc.live:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    per_req = (load_ir - idle_ir) / args.requests
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=bench.ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=bench.ROOT,
                           capture_output=True, text=True).stdout.strip()
    print()
    print(host_info)
    print("command: python3 bench/instructions.py " + " ".join(sys.argv[1:]))
    edge_label = f"edge {args.edge}" if args.edge else f"commit {commit}{' + changes' if dirty else ''}"
    print(f"edge instructions per proxied request ({args.protocol}, {args.requests} GETs of 1 KiB on "
          f"{args.concurrency} keep-alive connection{'s' if args.concurrency > 1 else ''}, after {args.warmup}; "
          f"{edge_label})")
    print(f"  under load {load_ir:,} Ir in {secs:.1f} s; idle for as long {idle_ir:,} Ir")
    print(f"  per request: {per_req:,.0f} instructions")
    print()
    print(f"top {len(top)} functions by self cost under load (instructions per request, share):")
    for ir, share, name in top:
        print(f"  {ir:10,.0f}  {share:5.1f}%  {name[:150]}")


if __name__ == "__main__":
    main()
