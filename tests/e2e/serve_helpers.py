"""Start ``edgemoe serve`` as a real process on 127.0.0.1 (a free port) and stop it."""
from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.request


class ServerProcess:
    def __init__(self, package, *args, timeout: float = 120.0):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "edgemoe.cli", "serve", str(package),
                                      "--port", "0", *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.log, self.port = [], None
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError("the server exited: " + "".join(self.log))
                continue
            self.log.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.stop()
            raise RuntimeError("the server did not start: " + "".join(self.log))
        self.url = f"http://127.0.0.1:{self.port}"
        while time.time() < deadline:      # /health is 503 until the model is loaded
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("the server exited: " + "".join(self.log)) from None
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("the server never became ready: " + "".join(self.log))

    def metrics(self, headers=None) -> dict:
        """/metrics as {name or name{labels}: value}."""
        req = urllib.request.Request(self.url + "/metrics", headers=headers or {})
        text = urllib.request.urlopen(req, timeout=10).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status_code, self.headers, self.content = status, {k.lower(): v for k, v in headers}, body

    def json(self):
        return json.loads(self.content)


def request(url: str, method: str, path: str, body=None, headers=None, raw: bytes | None = None) -> Reply:
    """One plain HTTP request (the openai client would hide the wire format)."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})} if data is not None else dict(headers or {})
    try:
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        return Reply(r.status, r.getheaders(), r.read())
    finally:
        conn.close()
