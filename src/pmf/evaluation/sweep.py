"""A sweep of evaluations (spec section 7): every setting of a grid (guidance scale x interval x EMA) scored, the
best one (lowest metric) chosen on rank 0 and shared with every rank, and the chosen setting evaluated with the
full image count unless the sweep already did. Writes sweep.json, sweep.md and sweep.png on rank 0. ``pmf eval``
only parses its flags into a ``Sweep`` and prints the result."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..extras import MissingExtra
from ..folder_layout import SampleFolder
from ..parallel.process import broadcast_object, rank_world
from ..sampling_setting import SamplingSetting
from .evaluate import EvalSettings, best_row, evaluate, plot, progress_bar, table


@dataclass
class Scoring:
    """How one setting is scored: ``mode`` "inception", "offline" or "metrics" with its network or plan
    (``net``), reference statistics (``ref``) and offline data set; the sample counts and seed; what the final
    evaluation keeps (``save_png``, ``save_npz``)."""

    mode: str
    net: object = None  # the Inception network ("inception") or the metrics' plan ("metrics")
    ref: str | None = None
    dataset: str = "mnist-5k"
    seed: int = 0
    batch_size: int = 64
    save_png: bool = False
    save_npz: bool = False
    progress: bool = True


@dataclass
class SweepResult:
    """The chosen setting (a row of ``grid``), its metrics (rank 0; None elsewhere) and the sweep's record
    (None for one setting)."""

    chosen: dict
    metrics: dict | None
    record: dict | None
    weights: dict | None


class Sweep:
    """Scores settings of a grid with one sampler (``pmf.sampler_loading.Sampler``, or anything with ``model``,
    ``noise_scale``, ``options.precision``, ``ema`` and ``with_ema``), switching to another EMA's weights when a
    setting asks for it. ``base``: the setting the rows' fields replace (its steps and prediction stay)."""

    def __init__(self, sampler, base: SamplingSetting, scoring: Scoring, device, out: Path):
        self.sampler, self.base, self.scoring, self.device, self.out = sampler, base, scoring, device, Path(out)
        self.rank = rank_world()[0]

    def settings(self, row: dict, n: int) -> EvalSettings:
        setting = dataclasses.replace(self.base, omega=row["omega"], t_min=row["t_min"], t_max=row["t_max"],
                                      ema=row["ema"])
        s = self.scoring
        return EvalSettings(num_images=n, seed=s.seed, setting=setting, noise_scale=self.sampler.options.noise_scale,
                            batch_size=s.batch_size, precision=self.sampler.options.precision)

    def score(self, row: dict, n: int, final: bool) -> dict | None:
        """The metrics of one setting with ``n`` images (rank 0; None elsewhere)."""
        if row["ema"] != self.sampler.ema:
            self.sampler = self.sampler.with_ema(row["ema"])
        s, out = self.scoring, self.out
        return evaluate(self.sampler.model, self.settings(row, n), mode=s.mode, ref=s.ref, dataset=s.dataset,
                        inception=s.net if s.mode == "inception" else None,
                        plan=s.net if s.mode == "metrics" else None, device=self.device, out_dir=out,
                        png_dir=SampleFolder(out).pngs if final and s.save_png else None,
                        npz_path=SampleFolder(out).npz if final and s.save_npz and self.rank == 0 else None,
                        progress=s.progress)

    def rows(self, grid: list[dict], n: int, metric: str) -> tuple[list, list]:
        """Every setting scored with ``n`` images: (table rows, full metrics) on rank 0 (empty elsewhere);
        writes sweep.json, sweep.md and sweep.png."""
        rows, full = [], []
        bar = progress_bar(len(grid), f"sweep ({n} images each)", self.scoring.progress)
        for row in grid:
            m = self.score(row, n, final=False)
            if self.rank == 0:
                full.append(m)
                rows.append({**row, **{k: v for k, v in m.items() if isinstance(v, float)}})
            bar.update(1)
        bar.close()
        if self.rank == 0 and rows:
            self.write(rows, n, metric)
        return rows, full

    def write(self, rows: list[dict], n: int, metric: str) -> None:
        out, md = self.out, table(rows, metric)
        (out / "sweep.json").write_text(json.dumps({"metric": metric, "num_images": n, "rows": rows}, indent=2))
        (out / "sweep.md").write_text(md + "\n")
        try:
            plot(rows, metric, out / "sweep.png")
        except MissingExtra as err:  # the figure is optional: the sweep's results are in sweep.json and sweep.md
            print(f"sweep.png not written: {err}")
        print(md)

    def run(self, grid: list[dict], num_images: int, metric: str, fast: int | None = None) -> SweepResult:
        """The best setting of ``grid`` by ``metric`` (lowest), each scored with ``fast`` images when given
        (then the best again with ``num_images``), else with ``num_images``; one setting is just evaluated."""
        if len(grid) == 1:
            metrics = self.score(grid[0], num_images, final=True)
            return SweepResult(grid[0], metrics, None, self.sampler_weights())
        search = fast or num_images
        if self.rank == 0 and not fast and (self.scoring.save_png or self.scoring.save_npz):
            print("note: a sweep without --fast keeps no images (--save-png/--save-npz apply to a final run)")
        rows, full = self.rows(grid, search, metric)
        best = broadcast_object(rows.index(best_row(rows, metric)) if self.rank == 0 else None)
        if fast:
            metrics = self.score(grid[best], num_images, final=True)
        else:  # the sweep already evaluated every setting with the full count
            metrics = full[best] if self.rank == 0 else None
        record = {"metric": metric, "num_images": search, "settings": len(grid)}
        return SweepResult(grid[best], metrics, record, self.sampler_weights())

    def sampler_weights(self) -> dict | None:
        return getattr(self.sampler, "weights", None)
