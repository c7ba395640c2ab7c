#!/usr/bin/env python3
"""What an operator's tools put on the admin port while a benchmark runs: one `/metrics`
scrape per second (as Prometheus would) and one `/admin/stream` WebSocket held open (as an open
dashboard would), whose frames are read and dropped. Stops on SIGTERM; prints how many scrapes
and stream bytes it got, and the scrapes' median and worst time.

Usage: benches/admin_load.py ADMIN_ADDR [TOKEN]   (e.g. 127.0.0.1:9090)
Standard library only: a raw socket is enough to hold a WebSocket open and read it."""
import base64, os, signal, socket, statistics, sys, threading, time

addr = sys.argv[1]
token = sys.argv[2] if len(sys.argv) > 2 else None
host, port = addr.rsplit(":", 1)
auth = f"Authorization: Bearer {token}\r\n" if token else ""
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stream_bytes = 0


def hold_stream():
    global stream_bytes
    s = socket.create_connection((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /admin/stream HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n").encode())
    s.settimeout(0.5)
    while not stop.is_set():
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        stream_bytes += len(chunk)
    s.close()


def scrape():
    s = socket.create_connection((host, int(port)))
    s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n".encode())
    while s.recv(65536):
        pass
    s.close()


t = threading.Thread(target=hold_stream, daemon=True)
t.start()
times = []
next_at = time.monotonic()
while not stop.is_set():
    started = time.monotonic()
    scrape()
    times.append(time.monotonic() - started)
    next_at += 1.0
    stop.wait(max(0.0, next_at - time.monotonic()))
t.join(timeout=2)
med = statistics.median(times) * 1e3 if times else 0
worst = max(times) * 1e3 if times else 0
print(f"admin load: {len(times)} scrapes (median {med:.2f} ms, max {worst:.2f} ms), {stream_bytes} stream bytes",
      file=sys.stderr)
