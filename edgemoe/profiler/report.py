"""The profile as a table: rich in a terminal when rich is installed, plain text otherwise."""
from __future__ import annotations

from edgemoe.runtime.budget import fmt_size

MEASURED = [("decode tok/s", "decode_tokens_per_s", "{:.2f}"),
            ("prefill tok/s", "prefill_tokens_per_s", "{:.1f}"),
            ("TTFT s", "time_to_first_token_s", "{:.3f}"),
            ("runtime peak", "runtime_peak_bytes", "size"),
            ("RSS peak", "peak_rss_bytes", "size"),
            ("stall", "stall_share", "{:.0%}"),
            ("hit", "hit_rate", "{:.0%}"),
            ("KiB/tok", "bytes_per_token", "kib"),
            ("levels", "level_mix", "mix"),
            ("ppl", "perplexity", "{:.2f}")]
FORECAST = [("decode tok/s", "decode_tokens_per_s", "{:.2f}"),
            ("prefill tok/s", "prefill_tokens_per_s", "{:.1f}"),
            ("TTFT s", "time_to_first_token_s", "{:.3f}"),
            ("runtime peak", "runtime_peak_bytes", "size"),
            ("RSS peak (est.)", "peak_rss_bytes_estimate", "size"),
            ("stall", "stall_share", "{:.0%}"),
            ("hit", "hit_rate", "{:.0%}"),
            ("KiB/tok", "bytes_per_token", "kib"),
            ("levels", "level_mix", "mix"),
            ("fits", "fits_device_memory", "yn"),
            ("ppl", "perplexity", "{:.2f}")]


def _fmt(v, how: str) -> str:
    if v is None:
        return "-"
    if how == "size":
        return fmt_size(int(v))
    if how == "kib":
        return f"{v / 1024:.1f}"
    if how == "yn":
        return "yes" if v else "NO"
    if how == "mix":
        total = sum(v.values()) or 1
        return " ".join(f"{b}b:{100 * n / total:.0f}%" for b, n in v.items())
    return how.format(v)


def rows_for(report: dict) -> tuple[list[str], list[list[str]], str]:
    """(header, cells, title) of the report's main table."""
    dev = report["device"]["name"]
    measured = report["mode"] == "measured" and dev == "host"
    cols = MEASURED if measured else FORECAST
    header = ["policy", "budget", "budget bytes"] + [c[0] for c in cols]
    if report["mode"] == "measured" and not measured:
        header.insert(3, "host tok/s")
    cells = []
    for r in report["rows"]:
        src = r["measured"] if measured else r["forecast"]
        if not measured and r.get("measured"):        # quality does not depend on the board
            src = {**src, "perplexity": r["measured"].get("perplexity")}
        row = [r["policy"], str(r["budget"]), _fmt(src.get("budget_bytes"), "size")]
        if report["mode"] == "measured" and not measured:
            row.append(_fmt(r["measured"]["decode_tokens_per_s"], "{:.2f}"))
        row += [_fmt(src.get(key), how) for _, key, how in cols]
        cells.append(row)
    kind = "measured on this machine" if measured else f"FORECAST for {dev}"
    return header, cells, f"edgemoe profile: {kind}"


def table_text(report: dict) -> str:
    header, cells, title = rows_for(report)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(header)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))   # noqa: E731
    out = [title, line(header), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    out += _footer(report)
    return "\n".join(out)


def _footer(report: dict) -> list[str]:
    out = [f"note: {n}" for n in report.get("notes", [])]
    rec = report.get("recommendation")
    if rec:
        out.append(f"target {rec['target_tokens_per_s']:g} tok/s: {rec['message']}")
    if report.get("files"):
        out.append(f"wrote {len(report['files'])} files, e.g. "
                   f"{next((f for f in report['files'] if f.endswith('report.json')), report['files'][0])}")
    return out


def print_report(report: dict, echo) -> None:
    """Print the table with rich when available (and a terminal), else as text via ``echo``."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        echo(table_text(report))
        return
    header, cells, title = rows_for(report)
    t = Table(title=title)
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i < 2 else "right")
    for c in cells:
        t.add_row(*c)
    console = Console(width=max(160, sum(len(h) + 3 for h in header)))
    with console.capture() as cap:
        console.print(t)
    echo(cap.get().rstrip("\n"))
    for line in _footer(report):
        echo(line)
