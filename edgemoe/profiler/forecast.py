"""The timing model: replay a workload's steps on a device profile, with the overlap the runtime gets.

Per step, on one compute thread and ``io_threads`` I/O threads, as the engine runs it:

    for each layer: dense graph (host seconds x host/device ``ort`` throughput, at least the layer's
    weights over the memory bandwidth) -> the policy's overhead -> its reads queue on the I/O threads
    (latency + bytes / storage bandwidth + bytes / sha256 bandwidth each; the storage transfers one
    read at a time) -> each expert computes, in the plan's order, as soon as its chunks have landed
    (host seconds x host/device ``planes`` throughput, at least its bytes over the memory bandwidth),
    slowed by ``contention`` x the read time overlapping it -> the prefetch reads queue.

Time the compute thread spends waiting for a read is the stall (the "bubbles"). On ``host`` the
measured timings are used as they are (read line and contention fitted from the recorded run); on
another board compute is scaled by the throughput ratios and I/O comes from the profile alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgemoe.devices import HOST, DeviceProfile, parse_profile
from edgemoe.profiler.simulate import simulate

# compute seconds of a planes call at bits b relative to 8 bits, where a level was never observed
# (measured here with the demo model's experts: 2 bits 0.59x, 4 bits 0.91x of the 8-bit time)
DEFAULT_BITS_COST = {2: 0.59, 4: 0.91, 8: 1.0}
MIN_READS = 20          # fewer reads than this in the recorded run: time reads from the profile


@dataclass
class Model:
    """Per-operation costs on the target device, derived once per (workload, device)."""

    dense_layers: dict            # layer -> seconds at decode
    dense_slope: float
    overhead: float
    overhead_per_read: float
    overhead_slope: float
    compute: dict                 # bits -> seconds of a 1-token call
    compute_slope: float
    latency: float
    bandwidth: float | None       # bytes/s of the storage transfer (None: no term)
    verify: float | None          # bytes/s of the sha256 check
    contention: float
    io_threads: int
    dispatch: float = 0.0         # delay before a layer's first demand read starts
    sizes: dict = field(default_factory=dict)   # bytes -> measured seconds of a read (host)
    notes: list = field(default_factory=list)     # (bits or None, text)

    def read(self, nbytes: int) -> tuple[float, float]:
        """(latency part, transfer part) of one read."""
        if nbytes in self.sizes:                     # measured on this machine: all of it per thread
            return self.sizes[nbytes], 0.0
        xfer = (nbytes / self.bandwidth if self.bandwidth else 0.0) + \
            (nbytes / self.verify if self.verify else 0.0)
        return self.latency, xfer

    def expert(self, bits: int, tokens: int) -> float:
        return self.compute[bits] + self.compute_slope * max(tokens - 1, 0)


def _bits_cost(host: DeviceProfile, bits: int) -> float:
    per_level = dict(host.compute)      # optional planes_<bits> entries (edgemoe calibrate writes them)
    if f"planes_{bits}" in per_level:
        return per_level["planes"] / per_level[f"planes_{bits}"]
    return DEFAULT_BITS_COST.get(bits, bits / 8)


def build_model(workload, device: DeviceProfile) -> Model:
    """Costs on ``device`` from the workload's host timings (see module docstring)."""
    t, f = workload.timing, workload.facts
    host = parse_profile(workload.host, "recorded host profile")
    same = device.name == HOST
    notes = []
    r_ort = 1.0 if same else host.throughput("ort") / device.throughput("ort")
    r_pl = 1.0 if same else host.throughput("planes") / device.throughput("planes")
    n_layers = f["num_layers"]
    layer_bytes = f["dense_bytes"] / max(n_layers + 2, 1)
    mem_bw = device.memory_bandwidth
    dense = {int(k): max(v * r_ort, 0 if same else layer_bytes / mem_bw)
             for k, v in t["dense_decode_layers"].items()}
    observed = {int(b): s for b, s in t["compute"].items()}
    ladder = f["ladder"]
    compute = {}
    for b in ladder:
        if b in observed:
            host_s = observed[b]
        else:
            ref = max(observed) if observed else None
            host_s = observed[ref] * _bits_cost(host, b) / _bits_cost(host, ref) if ref else \
                f["expert_flops"] / (host.throughput("planes") * 1e9) * _bits_cost(host, b)
            notes.append((b, f"{b}-bit expert compute never ran in the recorded run: scaled from "
                             f"{ref}-bit" if ref else f"{b}-bit expert compute modelled from FLOPs"))
        prefix = sum(f["chunk_bytes"][: ladder.index(b) + 1])
        compute[b] = max(host_s * r_pl, 0 if same else prefix / mem_bw)
    measured = same and t.get("read_latency") is not None and t.get("reads", 0) >= MIN_READS
    sizes = {int(k): v for k, v in t.get("read_sizes", {}).items()} if measured else {}
    if measured:
        latency, bandwidth, verify = t["read_latency"], t["read_bandwidth"], None
    else:
        if same:
            notes.append((None, "too few reads in the recorded run to time them: used the host "
                                "profile's storage numbers"))
        s = (host if same else device).storage          # on host: the recorded machine's profile
        latency, bandwidth, verify = s.read_latency, s.read_bandwidth, s.verify_bandwidth
    contention = t["contention"] if same and t.get("contention") is not None else \
        (host if same else device).io_contention
    if same and t.get("contention") is None:
        notes.append((None, "too little read/compute overlap in the recorded run to measure "
                            "contention: used the host profile's cpu.io_contention"))
    return Model(dense, t["dense_slope"] * r_ort, t["overhead_decode"] * r_pl,
                 t.get("overhead_per_read", 0.0) * r_pl, t["overhead_slope"] * r_pl, compute,
                 t["compute_slope"] * r_pl, latency, bandwidth, verify, contention,
                 int(t.get("io_threads", 2)),
                 dispatch=t.get("read_dispatch", 0.0) * r_pl, sizes=sizes, notes=notes)


class Timeline:
    """The device's clock across steps: the compute thread, the I/O threads and the storage."""

    def __init__(self, m: Model):
        self.m = m
        self.t = 0.0
        self.io_free = [0.0] * max(m.io_threads, 1)
        self.dev_free = 0.0                          # the storage transfers one read at a time
        self.ready: dict = {}                        # key -> time its latest chunk lands
        self.busy: list = []                         # (t0, t1) of reads, for contention
        self.segments: list | None = None            # (lane, kind, t0, t1, label) when recording

    def _seg(self, lane, kind, t0, t1, label=""):
        if self.segments is not None and t1 > t0:
            self.segments.append((lane, kind, t0, t1, label))

    def read(self, key, nbytes: int, not_before: float = 0.0):
        lat, xfer = self.m.read(nbytes)
        i = min(range(len(self.io_free)), key=self.io_free.__getitem__)
        start = max(self.t, self.io_free[i], not_before)
        x0 = max(start + lat, self.dev_free)
        end = x0 + xfer
        self.dev_free = end
        self.io_free[i] = end
        self.ready[key] = max(self.ready.get(key, 0.0), end)
        self.busy.append((start, end))
        self._seg(f"I/O {i + 1}", "read", start, end, f"L{key[0]}E{key[1]}")
        o = self.m.overhead_per_read                 # the compute thread's bookkeeping of a read
        self._seg("compute", "overhead", self.t, self.t + o)
        self.t += o

    def _contended(self, t0: float, dur: float) -> float:
        if not self.m.contention:
            return dur
        ov = sum(max(0.0, min(b, t0 + dur) - max(a, t0)) for a, b in self.busy[-64:])
        return dur + self.m.contention * ov

    def step(self, sp, layers: list[int], moe: set) -> dict:
        """Advance through one ``StepPlan``; returns its duration, stall and bytes."""
        m, t_start, stall, nbytes, hits = self.m, self.t, 0.0, 0, []
        by_layer = {lp.layer: lp for lp in sp.layers}
        n_moe = max(len(moe), 1)
        extra = max(sp.tokens - 1, 0)
        for layer in layers:
            d = m.dense_layers.get(layer, 0.0) + m.dense_slope * extra / max(len(layers), 1)
            self._seg("compute", "dense", self.t, self.t + d, f"L{layer}")
            self.t += d
            lp = by_layer.get(layer)
            if layer not in moe or lp is None:
                continue
            o = (m.overhead + m.overhead_slope * extra) / n_moe
            self._seg("compute", "overhead", self.t, self.t + o)
            self.t += o
            first = self.t + m.dispatch
            for key, _, n in lp.reads:
                self.read(key, n, first)
                nbytes += n
            for e, bits, tokens, _ in lp.compute:
                start = max(self.t, self.ready.get((layer, e), 0.0))
                hits.append(start <= self.t)                 # the runtime's hit: nothing waited
                if start > self.t:
                    self._seg("compute", "wait", self.t, start, f"L{layer}E{e}")
                    stall += start - self.t
                dur = self._contended(start, m.expert(bits, tokens))
                self._seg("compute", "expert", start, start + dur, f"L{layer}E{e}@{bits}")
                self.t = start + dur
            for key, _, n in lp.prefetch:
                self.read(key, n)
                nbytes += n
        if len(self.busy) > 256:
            self.busy = self.busy[-64:]
        return {"seconds": self.t - t_start, "stall": stall, "bytes": nbytes, "t0": t_start,
                "hits": hits}


def forecast(workload, device: DeviceProfile, capacity: int, policy: str | None = None,
             level="recorded", timeline_step: int | None = None) -> dict:
    """Forecast the workload's run with an expert cache of ``capacity`` bytes on ``device``.

    Returns decode and prefill tokens/s, time to first token, stall share, hit rate, bytes read per
    decode token, the level mix, the cache peak, and (if ``timeline_step`` is given, an index among
    the decode steps) that step's timeline segments.
    """
    plans = simulate(workload, capacity, policy, level)
    m = build_model(workload, device)
    f = workload.facts
    layers = list(range(f["num_layers"]))
    moe = set(f["moe_layers"])
    tl = Timeline(m)
    dec_s = dec_n = pre_s = pre_n = stall = dec_bytes = 0.0
    ttft, hits, calls, mix, seg = [], 0, 0, {}, None
    n_dec = 0
    for sp in plans:
        record = sp.kind == "decode" and timeline_step is not None and n_dec == timeline_step
        if record:
            tl.segments = []
        r = tl.step(sp, layers, moe)
        if record:
            seg = [(lane, kind, a - r["t0"], b - r["t0"], lab) for lane, kind, a, b, lab in tl.segments]
            tl.segments = None
        calls += len(r["hits"])
        hits += sum(r["hits"])
        for lp in sp.layers:
            for _, bits, tokens, _ in lp.compute:
                mix[bits] = mix.get(bits, 0) + tokens
        if sp.kind == "decode":
            n_dec += 1
            dec_s += r["seconds"]
            dec_n += sp.tokens
            stall += r["stall"]
            dec_bytes += r["bytes"]
        else:
            pre_s += r["seconds"]
            pre_n += sp.tokens
            ttft.append(r["seconds"])
    peak = max((sp.cache_used for sp in plans), default=0)
    return {"decode_tokens_per_s": dec_n / dec_s if dec_s else None,
            "prefill_tokens_per_s": pre_n / pre_s if pre_s else None,
            "time_to_first_token_s": sum(ttft) / len(ttft) if ttft else None,
            "stall_share": stall / dec_s if dec_s else 0.0,
            "hit_rate": hits / calls if calls else None,
            "bytes_per_token": dec_bytes / dec_n if dec_n else 0.0,
            "level_mix": {str(b): n for b, n in sorted(mix.items())},
            "cache_end_bytes": peak, "decode_steps": int(dec_n), "timeline": seg,
            "notes": [n for b, n in m.notes if b is None or b in mix]}
