"""The main job: cfg_10 CNN x several normalizers, a table and ``figures/quickstart.png``."""

from __future__ import annotations

import os

import numpy as np

from sigprop.analyses.analyze import analyze
from sigprop.core.results import LayerMetrics
from sigprop.nn import cnn
from sigprop.util.progress import Progress

DEFAULT_NORMS = ("batchnorm", "layernorm", "groupnorm", "instancenorm", "frn", "none")


def summarize(results: dict[str, LayerMetrics]) -> list[dict]:
    """Per normalizer: final-layer cosine similarity and stable rank, and the early/late gradient
    ratio ``grad_norm[first conv] / grad_norm[last conv]`` (mean and std over seeds)."""
    rows = []
    for name, r in results.items():
        cos = np.asarray(r.cosine_similarity)[:, -1]
        rank = np.asarray(r.stable_rank)[:, -1]
        g = np.asarray(r.grad_norm)
        ratio = g[:, 0] / g[:, -1]
        rows.append(dict(norm=name, cosine=cos.mean(), cosine_std=cos.std(), stable_rank=rank.mean(),
                         stable_rank_std=rank.std(), grad_ratio=ratio.mean(), grad_ratio_std=ratio.std()))
    return rows


def format_table(rows: list[dict], seeds: int) -> str:
    head = (f"{'normalizer':<14}{'final cosine':>16}{'final stable rank':>20}"
            f"{'grad first/last':>18}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['norm']:<14}{r['cosine']:>9.3f} ± {r['cosine_std']:.3f}"
                     f"{r['stable_rank']:>13.2f} ± {r['stable_rank_std']:.2f}"
                     f"{r['grad_ratio']:>11.2f} ± {r['grad_ratio_std']:.2f}")
    lines.append(f"(mean ± std over {seeds} seeds)")
    return "\n".join(lines)


def run(norms=DEFAULT_NORMS, *, seeds: int = 3, batch: int = 32, image: int = 32,
        out: str | None = os.path.join("figures", "quickstart.png"), key: int = 0,
        verbose: bool = True) -> tuple[dict[str, LayerMetrics], str]:
    """Analyse [BB]'s cfg_10 CNN with each normalizer on N(0, 1) inputs; print a table and save a
    figure. Returns ``(results, table)``."""
    results = {}
    with Progress(len(norms), "normalizers") as bar:
        for name in norms:
            model = cnn("cfg_10", norm=name, n_classes=100)
            results[name] = analyze(model, (batch, image, image, 3), seeds=seeds, key=key)
            bar.advance(name)
    table = format_table(summarize(results), seeds)
    if verbose:
        print(f"cnn cfg_10, inputs N(0,1) [{batch}, {image}, {image}, 3], 100 random labels")
        print(table)
    if out:
        from sigprop.paper.plot import compare

        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        fig = compare(results, title=f"cnn cfg_10 at initialization ({seeds} seeds, batch {batch})")
        fig.savefig(out, dpi=120)
        if verbose:
            print(f"wrote {out}")
    return results, table
