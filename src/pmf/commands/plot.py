"""``pmf plot``: draw the loss curves of one or more runs (their metrics.jsonl) to a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PMFError
from ..extras import pyplot
from ..folder_layout import RunFolder
from ._args import add_out


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw loss curves of training runs to PNG",
                       description="Reads RUN/metrics.jsonl (or the given .jsonl files) and plots each key.")
    p.add_argument("runs", nargs="+", help="run folders or metrics.jsonl files")
    add_out(p, default="losses.png", help="output PNG (default losses.png)")
    p.add_argument("--keys", default="loss_u,loss_v", help="comma-separated metrics (default loss_u,loss_v)")
    p.add_argument("--log-y", action="store_true", help="logarithmic y axis")
    p.set_defaults(func=run)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = RunFolder(path).metrics
    if not path.is_file():
        raise PMFError(f"no metrics file at {str(path)!r}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise PMFError(f"{str(path)!r} line {n} is not JSON") from None
    return rows


def plot_runs(runs: list[str], out: str | Path, keys: list[str], log_y: bool = False) -> Path:
    """One panel per key, one curve per run; returns the PNG path."""
    plt = pyplot()
    data = {str(r): read_metrics(r) for r in runs}
    known = sorted({k for rows in data.values() for row in rows for k, v in row.items()
                    if k != "step" and isinstance(v, (int, float))})
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise PMFError(f"no metric {', '.join(map(repr, unknown))} in {', '.join(data)}; known keys: "
                       f"{', '.join(known) or '(none: the metrics files are empty)'}")
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, rows in data.items():
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=Path(name).name if Path(name).is_dir() else name)
        ax.set_xlabel("step")
        ax.set_title(key)
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    from ._args import output_file

    out = output_file(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def run(args) -> int:
    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    if not keys:
        raise PMFError("--keys needs at least one metric name")
    print(f"wrote {plot_runs(args.runs, args.out, keys, args.log_y)}")
    return 0
