"""Start-up of ``edgemoe serve``: measure the HTTP stack, load the model inside what is left of the
budget, bind the socket, serve until Ctrl-C / SIGTERM, then stop the engine.

The budget covers everything the server process holds above its baseline (Python, numpy,
onnxruntime and tokenizers started, as for ``edgemoe run``): the HTTP stack and the chat template
engine are imported and measured first, and the runtime gets the budget minus that
(``Runtime(held_outside=...)``), plus ``PER_CONNECTION`` for each connection uvicorn may hold.
"""
from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgemoe.errors import ConfigError, PackageError

# what uvicorn holds per open connection (h11 state, buffers, the handler's task and queue);
# measured ~40 KiB with 32 concurrent SSE clients on the demo model, rounded up
PER_CONNECTION = 64 * 1024


@dataclass(frozen=True)
class ServeConfig:
    package: str
    host: str = "127.0.0.1"
    port: int = 8080
    parallel: int = 4
    ctx_size: int = 2048
    budget: str | None = None
    level: int | str | None = None
    policy: str = "hebf"
    max_queue: int = 64
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    alias: tuple[str, ...] = ()
    kv_dtype: str = "f16"
    backend: str | None = None
    threads: int = 1

    def __post_init__(self):
        if self.parallel < 1:
            raise ConfigError(f"--parallel must be >= 1, got {self.parallel}")
        if self.ctx_size < 2:
            raise ConfigError(f"--ctx-size must be >= 2 tokens, got {self.ctx_size}")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue must be >= 0, got {self.max_queue}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port must be in 0..65535, got {self.port}")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or "
                          f"--host, or stop what is using it") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _say(msg: str):
    print(f"edgemoe serve: {msg}", file=sys.stderr, flush=True)


def serve(cfg: ServeConfig, ready=None):
    """Run the server (blocks). ``ready(port)`` is called once it accepts connections."""
    from edgemoe.runtime.memory import pin_malloc_mmap_threshold, rss_bytes, start_libraries

    if cfg.budget is not None:
        pin_malloc_mmap_threshold()
    start_libraries()
    baseline = rss_bytes()
    try:
        import uvicorn

        from edgemoe.serve.app import ServerState, build_app
    except ImportError as e:
        raise ConfigError(f"the server needs its extra: pip install 'edgemoe[serve]' ({e})") from None
    from edgemoe.package.reader import Package
    from edgemoe.runtime.chat_template import ChatTemplate
    from edgemoe.runtime.engine import Runtime
    from edgemoe.serve.scheduler import Scheduler

    pkg = Package(cfg.package)
    if pkg.tokenizer_file is None:
        raise PackageError(f"{pkg.root} has no tokenizer, which the server needs for text; "
                           f"re-export from a checkpoint folder that has tokenizer.json")
    template = ChatTemplate.of_package(pkg)
    if cfg.ctx_size > pkg.arch.max_position:
        _say(f"--ctx-size {cfg.ctx_size} is more than the model's {pkg.arch.max_position} positions; "
             f"using {pkg.arch.max_position}")
        from dataclasses import replace
        cfg = replace(cfg, ctx_size=pkg.arch.max_position)
    connections = cfg.parallel + cfg.max_queue + 8
    outside = max(rss_bytes() - baseline, 0) + connections * PER_CONNECTION
    model_id = cfg.alias[0] if cfg.alias else Path(cfg.package).resolve().name
    state = ServerState(template, model_id, cfg.alias[1:], cfg.api_key, int(time.time()))
    app = build_app(state, list(cfg.cors_origins))
    sock = _bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", http="h11", loop="asyncio",
                            timeout_keep_alive=5, limit_concurrency=connections + 32)
    server = uvicorn.Server(config)
    # HTTP on its own thread (503 "loading" until the model is in); the engine loop here, in the
    # thread that loads and warms the model, so that its steps reuse the heap the warm-up measured
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="edgemoe-http", daemon=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    http.start()
    _say(f"listening on http://{cfg.host}:{port}/v1" + (" (API key required)" if cfg.api_key else "")
         + "; loading the model")
    rt = None
    try:
        t0 = time.perf_counter()
        rt = Runtime(pkg, level=cfg.level, budget=cfg.budget, policy=cfg.policy, context=cfg.ctx_size,
                     kv_dtype=cfg.kv_dtype, max_batch=cfg.parallel, backend=cfg.backend,
                     threads=cfg.threads, held_outside=outside if cfg.budget is not None else 0)
        rt.tokenizer  # noqa: B018  (loaded now, not on the first request)
        sched = Scheduler(rt, cfg.ctx_size, cfg.max_queue)
        sched.baseline_bytes = baseline
        meta = {"package_id": rt.package_id, "fingerprint": rt.package_id[:16], "n_ctx": cfg.ctx_size,
                "parallel": cfg.parallel, "level": rt.level or "auto", "kv_dtype": rt.kv_dtype,
                "budget_bytes": rt.budget_plan.budget if rt.budget_plan else None,
                "chat_template": "fallback" if template.is_fallback else "package"}
        from edgemoe.runtime.budget import fmt_size
        mem = (f"budget {fmt_size(rt.budget_plan.budget)} (server {fmt_size(outside)}, experts "
               f"{fmt_size(rt.budget_plan.experts)}, KV {fmt_size(rt.budget_plan.kv_cache)}), batch cap "
               f"{sched.cap}" if rt.budget_plan else "all experts resident")
        if template.is_fallback:
            _say("the package has no chat template: chat requests use the plain fallback "
                 "(System:/User:/Assistant: turns; see edgemoe.runtime.chat_template)")
        state.attach(sched, meta)
        _say(f"{model_id}: {cfg.parallel} slots x {cfg.ctx_size} tokens, {mem}; loaded in "
             f"{time.perf_counter() - t0:.1f} s; ready")
        if ready is not None:
            ready(port)
        sched.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.should_exit = True
        if state.ready:
            state.scheduler.close()
        http.join(10)
        if rt is not None:
            rt.close()
        _say("stopped")


def _interrupt(signum, frame):
    raise KeyboardInterrupt
