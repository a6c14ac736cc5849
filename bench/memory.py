"""Memory per entry (issue 7, target 5): loads the same N keys with the same 100-byte values
into a tiercache instance (L1 only) and into a Redis server, then prints the instance's RSS
growth per entry and Redis's `used_memory` growth per key. Standard library only; loopback only.

usage: python3 memory.py TIERCACHE_URL TIERCACHE_PID REDIS_PORT N
prints: "tiercache_rss_per_entry B", "redis_used_memory_per_key B", "entries N" (one per line)
"""

import base64
import http.client
import json
import random
import socket
import sys
import time

CHUNK = 10_000


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def values(n):
    """N (key, string) pairs, the same on every run: a 98-character string is a 100-byte JSON
    value, the bytes tiercache stores and Redis is given."""
    rng = random.Random(7)
    for idx in range(n):
        yield f"key:{idx:07d}", base64.b64encode(rng.randbytes(75)).decode()[:98]


def http_json(host, port, method, path, body=None):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if response.status != 200:
        raise SystemExit(f"{method} {path}: {response.status} {data[:200]!r}")
    return json.loads(data)


class Redis:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.file = self.sock.makefile("rb")

    def send(self, commands):
        out = bytearray()
        for args in commands:
            out += b"*%d\r\n" % len(args)
            for arg in args:
                arg = arg.encode() if isinstance(arg, str) else arg
                out += b"$%d\r\n%s\r\n" % (len(arg), arg)
        self.sock.sendall(out)
        return [self.reply() for _ in commands]

    def reply(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.file.read(size + 2)[:-2]
        if kind == b"-":
            raise SystemExit(f"redis: {rest.decode()}")
        return rest

    def used_memory(self):
        info = self.send([["INFO", "memory"]])[0].decode()
        return int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("used_memory:")))


def main():
    url, pid, redis_port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    host, port = url.removeprefix("http://").split(":")
    port = int(port)

    rss_before = rss_bytes(pid)
    pairs = list(values(n))
    for start in range(0, n, CHUNK):
        entries = [{"key": key, "value": value, "ttl": 86400} for key, value in pairs[start:start + CHUNK]]
        http_json(host, port, "POST", "/api/cache/batch/set", json.dumps({"entries": entries}))
    time.sleep(1)
    rss_after = rss_bytes(pid)
    entries = http_json(host, port, "GET", "/api/cache/metrics")["l1_size"]
    if entries != n:
        raise SystemExit(f"tiercache holds {entries} entries, not {n}: raise l1.max_entries / max_bytes")

    redis = Redis(redis_port)
    used_before = redis.used_memory()
    for start in range(0, n, CHUNK):
        redis.send([["SET", key, f'"{value}"'] for key, value in pairs[start:start + CHUNK]])
    used_after = redis.used_memory()
    keys = int(redis.send([["DBSIZE"]])[0])
    if keys != n:
        raise SystemExit(f"redis holds {keys} keys, not {n}")

    print(f"tiercache_rss_per_entry {(rss_after - rss_before) / n:.0f}")
    print(f"redis_used_memory_per_key {(used_after - used_before) / n:.0f}")
    print(f"entries {n}")


if __name__ == "__main__":
    main()
