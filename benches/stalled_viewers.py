#!/usr/bin/env python3
"""Open N viewer connections to a roomcast ws address, join ROOM on each, then never read
again (a viewer whose app froze): what benches/slow_consumers.sh measures the server
against. Holds them until killed. Standard library only.

Usage: benches/stalled_viewers.py HOST:PORT N ROOM [READY_FILE]
(READY_FILE is created once every viewer has joined.)"""
import base64, json, os, signal, socket, sys, time

addr, n, room = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ready = sys.argv[4] if len(sys.argv) > 4 else None
host, port = addr.rsplit(":", 1)


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


socks = []
for i in range(n):
    s = socket.create_connection((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws?user=stalled{i} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    s.sendall(masked_text(json.dumps({"op": "join", "room": room}).encode()))
    socks.append(s)
print(f"{n} stalled viewers in {room}", file=sys.stderr)
if ready:
    open(ready, "w").close()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(3600)
