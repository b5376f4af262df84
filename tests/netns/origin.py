"""The device's origin in the scenarios: serves files from a folder and answers POSTs.

usage: origin.py PORT DIRECTORY

HTTP/1.1 with keep-alive, so the edge pools tunnel streams; a request whose query
contains `close` is answered with `Connection: close`, so the edge's next request on
that tunnel connection opens a new stream. Every request is logged on stderr as
`"METHOD PATH HTTP/1.1" STATUS` (http.server's format), which the tests count: a POST
replayed by the edge would show twice. Binds 127.0.0.1 only.
"""
import functools
import http.server
import sys

# A POST body larger than this is refused: the tests send a few bytes.
MAX_POST = 1 << 20


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def end_headers(self):
        if "close" in self.path.partition("?")[2]:
            self.send_header("Connection", "close")
            self.close_connection = True
        super().end_headers()

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_POST:
            self.send_error(413)
            return
        body = self.rfile.read(n)
        reply = f"posted {len(body)} bytes to {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


def main():
    port, directory = int(sys.argv[1]), sys.argv[2]
    handler = functools.partial(Handler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    print(f"Serving HTTP on 127.0.0.1 port {port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
