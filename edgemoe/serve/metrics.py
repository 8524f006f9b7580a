"""/metrics in the Prometheus text format, written by hand (prometheus_client costs ~10 MiB).

llama.cpp's ``llamacpp:`` names where the meaning is the same (dashboards scrape them), and
``edgemoe:`` names for the budget: the expert cache, flash reads and the KV cache reservation.
"""
from __future__ import annotations


def _line(out: list, name: str, kind: str, help_: str, value, labels: dict | None = None):
    if not any(l.startswith(f"# TYPE {name} ") for l in out[-3:]):
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
    lab = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    out.append(f"{name}{lab} {value}")


def render(scheduler) -> str:
    m, s = scheduler.metrics, scheduler.snapshot()
    out: list[str] = []
    L = lambda *a, **k: _line(out, *a, **k)  # noqa: E731
    L("llamacpp:prompt_tokens_total", "counter", "prompt tokens processed", m.prompt_tokens)
    L("llamacpp:prompt_tokens_cached_total", "counter", "prompt tokens whose KV was reused",
      m.prompt_tokens_cached)
    L("llamacpp:tokens_predicted_total", "counter", "tokens generated", m.tokens_predicted)
    L("llamacpp:prompt_seconds_total", "counter", "seconds of steps that carried a prompt chunk",
      f"{m.prompt_seconds:.6f}")
    L("llamacpp:tokens_predicted_seconds_total", "counter", "seconds of decode-only steps",
      f"{m.decode_seconds:.6f}")
    L("llamacpp:n_decode_total", "counter", "engine steps", m.steps)
    L("llamacpp:requests_processing", "gauge", "requests running", s["requests_running"])
    L("llamacpp:requests_deferred", "gauge", "requests waiting in the queue", s["requests_waiting"])
    for status, n in m.requests.items():
        L("edgemoe:requests_total", "counter", "requests ended, by outcome", n, {"status": status})
    for reason, n in m.rejected.items():
        L("edgemoe:requests_rejected_total", "counter", "requests refused at admission", n,
          {"reason": reason})
    name = "edgemoe:time_to_first_token_seconds"
    out += [f"# HELP {name} seconds from a request's arrival to its first token",
            f"# TYPE {name} histogram"]
    for b, n in m.ttft_buckets.items():
        out.append(f'{name}_bucket{{le="{b}"}} {n}')
    out += [f'{name}_bucket{{le="+Inf"}} {m.ttft_count}', f"{name}_sum {m.ttft_sum:.6f}",
            f"{name}_count {m.ttft_count}"]
    L("edgemoe:kv_reserved_bytes", "gauge", "KV cache reserved by running requests (prompt + max_tokens)",
      s["kv_reserved_bytes"])
    L("edgemoe:kv_pool_bytes", "gauge", "KV cache the budget reserved (slots x context)", s["kv_pool_bytes"])
    L("edgemoe:kv_tokens_held", "gauge", "positions held in the KV cache (running and idle prefixes)",
      s["kv_tokens_held"])
    L("edgemoe:kv_slots", "gauge", "KV cache slots (--parallel)", s["kv_slots"])
    L("edgemoe:kv_slots_idle_prefix", "gauge", "slots holding a finished request's prefix for reuse",
      s["kv_slots_idle_prefix"])
    L("edgemoe:batch_cap", "gauge", "sequences run together at most (slots, and the expert cache)",
      s["batch_cap"])
    L("edgemoe:flash_bytes_read_total", "counter", "expert bytes read from storage", s["expert_bytes_read"])
    if "budget_bytes" in s:
        L("edgemoe:budget_bytes", "gauge", "the memory budget", s["budget_bytes"])
        L("edgemoe:expert_cache_bytes", "gauge", "bytes held by the expert cache", s["expert_cache_bytes"])
        L("edgemoe:expert_cache_capacity_bytes", "gauge", "the expert cache's share of the budget",
          s["expert_cache_capacity_bytes"])
        L("edgemoe:expert_cache_hits_total", "counter", "expert computations whose level was in cache",
          s["expert_cache_hits"])
        L("edgemoe:expert_cache_misses_total", "counter", "expert computations that waited for a read",
          s["expert_cache_misses"])
    L("edgemoe:process_resident_bytes", "gauge", "resident set size of the server process", s["rss_bytes"])
    L("edgemoe:process_peak_resident_bytes", "gauge", "peak resident set size (VmHWM)", s["peak_rss_bytes"])
    L("edgemoe:process_baseline_bytes", "gauge", "resident size after Python and the libraries started "
      "(what the budget does not cover)", scheduler.baseline_bytes)
    return "\n".join(out) + "\n"
