#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/.

Seeds are small valid (and a few nearly valid) inputs, so a short run starts from the
deep paths: a real config.bin, a signed token, a WebSocket upgrade. The `decode` and
`device_yaml` seeds need the `mailslot` binary with YAML support (`cargo build`); tokens
are signed with the fuzz harness's test key (the Ed25519 seed of 32 bytes 0x07), which
needs python3-cryptography. Run from anywhere: python3 fuzz/seeds/make.py [MAILSLOT]
"""
import base64
import os
import struct
import subprocess
import sys
import tempfile

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MAILSLOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/mailslot")


def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


# --- config.bin and the device YAML -------------------------------------------------
CA_DER = bytes([0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02])
CA_PEM = ("-----BEGIN CERTIFICATE-----\n" + base64.b64encode(CA_DER).decode()
          + "\n-----END CERTIFICATE-----\n")
YAML = {
    "minimal": """tunnel: dev42
token: mst1.payload.signature
edge: edge.example.com:7844
ingress:
  - service: http_status:404
""",
    "readme": """tunnel: dev42
token-file: token
edge: ["edge.example.com:7844", "edge2.example.com:7844"]
edge-ca: ca.pem
ingress:
  - hostname: dev42.example.com
    service: http://localhost:8080
  - hostname: api.dev42.example.com
    path: ^/v1/
    service: http://localhost:9000
  - hostname: secure.dev42.example.com
    service: https://localhost:8443
    origin-request: { no-tls-verify: true }
  - service: http_status:404
""",
    "full": """tunnel: dev42
token: mst1.payload.signature
edge:
  - "[2001:db8::1]:7844"
  - 192.0.2.1:7844
protocol: http2
ha-connections: 2
keepalive: 1m30s
idle-timeout: 2m
grace-period: 10s
originRequest:
  connectTimeout: 1500ms
ingress:
  - hostname: "*.dev42.example.com"
    path: ^/(api|v2)/
    service: unix:/run/app.sock
  - hostname: ssh.dev42.example.com
    service: tcp://localhost:22
  - hostname: db.dev42.example.com
    service: https://127.0.0.1:5432
    origin-request:
      http-host-header: db.internal
      origin-server-name: db.internal
      ca-pool: ca.der
  - hostname: web.dev42.example.com
    service: https://localhost:8443
    origin-request:
      ca-pool: |
""" + "".join("        " + l + "\n" for l in CA_PEM.splitlines()) + """  - service: http_status:503
""",
}
with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, "ca.pem"), "w") as f:
        f.write(CA_PEM)
    with open(os.path.join(tmp, "ca.der"), "wb") as f:
        f.write(CA_DER)
    with open(os.path.join(tmp, "token"), "w") as f:
        f.write("mst1.payload.signature\n")
    for name, text in YAML.items():
        put("device_yaml", name + ".yml", text)
        src, out = os.path.join(tmp, name + ".yml"), os.path.join(tmp, name + ".bin")
        with open(src, "w") as f:
            f.write(text)
        subprocess.run([MAILSLOT, "config", "compile", src, "--output", out], check=True,
                       stdout=subprocess.DEVNULL)
        with open(out, "rb") as f:
            file = f.read()
        put("decode", name + ".bin", file)
        put("device_yaml", name + ".bin", file)
        # decode's built mode: a first byte of 0 (no field wrong), then the payload.
        put("decode", name + ".payload", b"\0" + file[10:-4])
    # A file with a version from the future, and one cut short.
    put("decode", "newer-version.bin", file[:4] + struct.pack("<H", 2) + file[6:])
    put("decode", "truncated.bin", file[:-9])

put("pem", "ca.pem", CA_PEM)
put("pem", "base64", "Zm9v\r\nYmFy\n")
put("pem", "padding", "Zg==")

# --- wire and WebSocket frames ------------------------------------------------------
# frames: byte 0 picks the case (6: frames a client sends the edge, 7: frames the edge
# sends a client, 8: the bytes written through a WebSocket and read back).
mask = b"\x01\x02\x03\x04"
masked = lambda p: bytes(b ^ mask[i % 4] for i, b in enumerate(p))
put("frames", "ws-client", b"\x06" + b"\x89\x82" + mask + masked(b"xy")
    + b"\x82\x82" + mask + masked(b"hi") + b"\x88\x80" + mask)
put("frames", "ws-server", b"\x07" + b"\x82\x7e\x00\x80" + bytes(128) + b"\x8a\x00" + b"\x88\x02\x03\xe8")
put("frames", "ws-both", b"\x08" + bytes([1, 2, 3, 255, 0, 7, 9, 4]) + bytes(range(256)) * 4)

# --- the access client's WebSocket handshake ----------------------------------------
# byte 0: read size (0: unlimited); byte 1: credential length; credential; the answer.
UPGRADE = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
cred = b"msa1.payload.signature"
put("ws_handshake", "upgrade", bytes([0, len(cred)]) + cred + UPGRADE.encode()
    + b"\x82\x02hi\x88\x02\x03\xe8")
put("ws_handshake", "upgrade-small-reads", bytes([7, 0]) + UPGRADE.encode() + b"\x82\x03ssh")
put("ws_handshake", "refused", bytes([0, 0]) + b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 42"
    b"\r\n\r\n401 Unauthorized\n\nmailslot edge: no token\n")
put("ws_handshake", "not-an-upgrade", bytes([3, 0]) + b"HTTP/1.1 101 OK\r\nUpgrade: h2c\r\n\r\n")

# --- tokens ---------------------------------------------------------------------------
key = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def pstr(s):
    return varint(len(s)) + s.encode()


def token(prefix, payload):
    signed = prefix + "." + base64.urlsafe_b64encode(payload).decode().rstrip("=")
    sig = base64.urlsafe_b64encode(key.sign(signed.encode())).decode().rstrip("=")
    return signed + "." + sig


ISSUED, EXPIRES = 1_699_990_000, 4_000_000_000
tunnel_claims = (pstr("dev42") + bytes(range(16)) + varint(2) + pstr("dev42.example.com")
                 + pstr("*.dev42.example.com") + varint(ISSUED) + varint(EXPIRES))
access_claims = (pstr("alice") + varint(2) + pstr("*.example.com") + pstr("db.internal")
                 + varint(ISSUED) + varint(EXPIRES))
expired_claims = pstr("ops") + varint(1) + pstr("*") + varint(1) + varint(2)
# Raw text (first byte even).
put("token", "tunnel", b"\0" + token("mst1", tunnel_claims).encode())
put("token", "access", b"\0" + token("msa1", access_claims).encode())
put("token", "access-expired", b"\0" + token("msa1", expired_claims).encode())
put("token", "garbage", b"\0mst1.bm90.c2ln")
# Claims the harness signs (first byte odd; then 0 tunnel, 1 access, 2 another kind).
put("token", "signed-tunnel", b"\x01\x00" + tunnel_claims)
put("token", "signed-access", b"\x01\x01" + access_claims)

# --- edge.yml ---------------------------------------------------------------------------
put("edge_config", "minimal.yml", """cert: edge.crt
key: edge.key
signing-key: signing.key
""")
put("edge_config", "readme.yml", """name: edge-1
tunnel-listen: 0.0.0.0:7844
http-listen: none
https-listen: "[::]:443"
cert: edge.crt
key: edge.key
certs:
  - { cert: other.crt, key: other.key }
signing-key: signing.key
verify-keys: [old.pub]
keepalive: 15s
idle-timeout: 1m
origin-response-timeout: 100
limits:
  tls-handshake-timeout: 10s
  request-head-timeout: 10s
  body-timeout: 10s
  body-idle-timeout: 30s
  body-buffer: 64KiB
  max-head-bytes: 32KiB
  max-headers: 100
  max-url-bytes: 8KiB
  max-body-bytes: 100MiB
  max-conns: 16384
  max-conns-per-ip: 256
  max-streams-per-tunnel: 512
  queue-timeout: 5s
rate-limits:
  - rate: 100/s
  - hostname: '*.dev42.example.com'
    path: ^/login
    rate: 10/m
    burst: 5
hosts:
  - hostname: dev42.example.com
    max-body-bytes: 1MiB
    hsts: max-age=31536000
    nosniff: true
    frame-options: DENY
    referrer-policy: no-referrer
    headers: { Permissions-Policy: "camera=()" }
trusted-proxies: [10.0.0.0/8, "2001:db8::/32"]
admin-listen: 127.0.0.1:7845
service-tokens:
  - id: ci
    secret-file: ci.secret
  - { id: deploy, secret: "0123456789abcdef0123" }
access:
  - hostname: "ssh.*.example.com"
    allow: [signed, service-token]
    users: [alice, bob]
    ip-allow: [203.0.113.0/24, "2001:db8::/32"]
  - hostname: grafana.dev42.example.com
    allow: signed
  - hostname: status.dev42.example.com
    allow: public
    ip-allow: [10.0.0.0/8]
tcp-ports:
  - listen: 0.0.0.0:2222
    hostname: ssh.dev42.example.com
    ip-allow: [198.51.100.7/32]
revoked-tunnels: ["000102030405060708090a0b0c0d0e0f"]
revoked-access-tokens: ["ffeeddccbbaa99887766554433221100"]
""")

# --- address ranges and X-Forwarded-For ------------------------------------------------
# cidr: byte 0 even + 4 bytes (IPv4 probe) or odd + 16 bytes (IPv6 probe), then the text.
put("cidr", "v4", b"\0" + bytes([10, 1, 2, 3]) + b"10.0.0.0/8")
put("cidr", "v6", b"\1" + bytes([0x20, 0x01, 0x0d, 0xb8] + [0] * 11 + [1]) + b"2001:db8::/32")
put("cidr", "mapped", b"\1" + bytes([0] * 10 + [0xff, 0xff, 192, 0, 2, 1]) + b"192.0.2.0/24")
put("cidr", "bare", b"\0" + bytes([127, 0, 0, 1]) + b" 127.0.0.1 ")
# forwarded_for: byte 0 picks the peer (0: a trusted 10.1.2.3, 1: an untrusted one).
put("forwarded_for", "trusted-chain", b"\0203.0.113.9, 10.0.0.2")
put("forwarded_for", "untrusted", b"\x01203.0.113.9")
put("forwarded_for", "v6-chain", b"\x02 2001:db9::7 ,2001:db8::2, 10.9.9.9")
