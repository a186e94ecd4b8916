"""Per-image rows -> summary statistics (means, halting accuracy, KARL vs search) and the
markdown tables laid out like the paper's."""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from karl.eval.regimes import Task, fmt_eps


ORACLE_ORDER = ("prefix_binary", "prefix_linear", "iterative")  # the oracle KC-hat, best first
HALT_MARGINS = (0.0, 0.01, 0.02, 0.03)


def halting_accuracy(l1: Iterable[float], epsilon: float, margins: Iterable[float] = HALT_MARGINS) -> dict:
    """Table 3: share of images whose L1 exceeds epsilon (by more than each margin), and the
    mean L1 (and mean excess over epsilon) of the images that exceed it."""
    err = np.asarray(list(l1), dtype=np.float64)
    over = err > epsilon
    return {"epsilon": epsilon, "n": int(err.size),
            "exceed": {f"{m:g}": float(np.mean(err > epsilon + m)) if err.size else None for m in margins},
            "mean_l1_exceeding": float(err[over].mean()) if over.any() else None,
            "mean_excess": float((err[over] - epsilon).mean()) if over.any() else None}


def _num(v: str | None) -> float | None:
    return None if v in (None, "") else float(v)


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _stats(rows: list[dict]) -> dict:
    out: dict[str, Any] = {"n": len(rows)}
    for name in ("tokens", "l1", "psnr", "ssim", "lpips", "encoder_runs", "decoder_runs", "time_s"):
        out[name] = _mean(_num(r[name]) for r in rows)
    toks = [float(r["tokens"]) for r in rows]
    out["tokens_std"] = float(np.std(toks)) if toks else None
    reached = [r["reached"] for r in rows if r["reached"] != ""]
    out["reached"] = float(np.mean([x == "1" for x in reached])) if reached else None
    return out


def _compare(karl: list[dict], other: list[dict]) -> dict:
    """KARL's single-pass rows vs a search's rows for the same images and epsilon."""
    by_id = {r["image_id"]: r for r in karl}
    pairs = [(by_id[r["image_id"]], r) for r in other if r["image_id"] in by_id]
    if not pairs:
        return {}
    kt = np.array([float(a["tokens"]) for a, _ in pairs])
    st = np.array([float(b["tokens"]) for _, b in pairs])
    ktime = np.mean([float(a["time_s"]) for a, _ in pairs])
    stime = np.mean([float(b["time_s"]) for _, b in pairs])
    return {"n_paired": len(pairs), "karl_tokens": float(kt.mean()), "search_tokens": float(st.mean()),
            "token_ratio": float(kt.mean() / st.mean()) if st.mean() > 0 else None,
            "speedup_vs_karl": float(stime / ktime) if ktime > 0 else None,
            "share_karl_more": float(np.mean(kt > st)), "share_karl_fewer": float(np.mean(kt < st)),
            "mean_abs_diff": float(np.abs(kt - st).mean())}


def summarize(rows: list[dict], tasks: list[Task], image_ids: Iterable[str] | None = None,
              margins: Iterable[float] = HALT_MARGINS) -> dict:
    """Per-task means, halting accuracy and the single-pass-vs-search comparison.

    ``rows`` are CSV rows (strings); only rows of ``tasks`` (and of ``image_ids`` if given) count.
    """
    wanted = None if image_ids is None else set(image_ids)
    groups: dict[tuple, list[dict]] = {t.key: [] for t in tasks}
    for r in rows:
        key = (r["regime"], r["epsilon"], r["budget"])
        if key in groups and (wanted is None or r["image_id"] in wanted):
            groups[key].append(r)
    out: dict[str, Any] = {"num_images": len({r["image_id"] for g in groups.values() for r in g}),
                           "fixed": [], "variable": [], "halting": [], "search": [], "single_pass_vs_search": []}
    for t in tasks:
        g = groups[t.key]
        if not g:
            continue
        if t.regime == "fixed":
            out["fixed"].append({"k": t.budget, **_stats(g)})
        elif t.regime == "variable":
            out["variable"].append({"epsilon": t.epsilon, "budget": t.budget, **_stats(g)})
            out["halting"].append(halting_accuracy([float(r["l1"]) for r in g], t.epsilon, margins))
        else:
            karl = groups.get(("variable", fmt_eps(t.epsilon), str(t.budget)), [])
            out["search"].append({"method": t.regime, "epsilon": t.epsilon, "budget": t.budget,
                                  **_stats(g), "vs_karl": _compare(karl, g)})
    for v in out["variable"]:
        found = {s["method"]: s for s in out["search"] if s["epsilon"] == v["epsilon"]}
        oracle = next((m for m in ORACLE_ORDER if m in found), None)
        if oracle is None:
            continue
        cmp = found[oracle]["vs_karl"]
        out["single_pass_vs_search"].append({
            "epsilon": v["epsilon"], "karl_tokens": cmp.get("karl_tokens"), "oracle": oracle,
            "oracle_tokens": cmp.get("search_tokens"), "oracle_reached": found[oracle]["reached"],
            "token_ratio": cmp.get("token_ratio"),
            "speedup_vs_search": {m: s["vs_karl"].get("speedup_vs_karl") for m, s in found.items()}})
    return out


def _f(v: float | None, spec: str = ".3f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown_tables(summary: dict) -> str:
    """The summary as Markdown tables laid out like the paper's Tables 1-3, plus the search table."""
    cfg = summary.get("config", {})
    lines = ["# KARL evaluation", "",
             f"Model `{cfg.get('checkpoint', '?')}`, data `{cfg.get('data', '?')}`: "
             f"{summary.get('num_images', 0)} images at {cfg.get('image_size', '?')} px "
             f"(shorter side bicubic + centre crop), LPIPS {cfg.get('lpips_net') or 'off'}, "
             f"device {cfg.get('device', '?')} x {cfg.get('world_size', 1)}. "
             "Times are wall-clock per image (batch time / batch size).", ""]
    if summary["fixed"]:
        lines += ["## Fixed token count (paper Table 1)", "",
                  "| tokens | L1 x10 | PSNR | SSIM | LPIPS | ms / image | images |", "|---|---|---|---|---|---|---|"]
        for r in summary["fixed"]:
            lines.append(f"| {r['k']} | {_f(r['l1'], '.3f', 10)} | {_f(r['psnr'], '.2f')} | {_f(r['ssim'])} | "
                         f"{_f(r['lpips'])} | {_f(r['time_s'], '.2f', 1e3)} | {r['n']} |")
        lines.append("")
    if summary["variable"]:
        lines += ["## Variable token count, single pass (paper Table 2)", "",
                  "| epsilon | tokens (std) | L1 x10 | PSNR | SSIM | LPIPS | runs | ms / image | images |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in summary["variable"]:
            lines.append(f"| {fmt_eps(r['epsilon'])} | {_f(r['tokens'], '.1f')} ({_f(r['tokens_std'], '.1f')}) | "
                         f"{_f(r['l1'], '.3f', 10)} | {_f(r['psnr'], '.2f')} | {_f(r['ssim'])} | {_f(r['lpips'])} | "
                         f"1 + 1 | {_f(r['time_s'], '.2f', 1e3)} | {r['n']} |")
        lines.append("")
    if summary["halting"]:
        margins = list(summary["halting"][0]["exceed"])
        head = " | ".join("L1 > eps" if m == "0" else f"> eps + {m}" for m in margins)
        lines += ["## Halting accuracy (paper Table 3)", "",
                  f"| epsilon | {head} | mean L1 of those over | mean excess |",
                  "|---" * (len(margins) + 3) + "|"]
        for r in summary["halting"]:
            cells = " | ".join(_pct(r["exceed"][m]) for m in margins)
            lines.append(f"| {fmt_eps(r['epsilon'])} | {cells} | {_f(r['mean_l1_exceeding'], '.4f')} | "
                         f"{_f(r['mean_excess'], '.4f')} |")
        lines.append("")
    if summary["search"]:
        lines += ["## Single pass vs search on the same model", "",
                  "Target: L1 <= epsilon. `time vs KARL` = search time / single-pass time; "
                  "`KARL / this` = KARL's mean tokens / the method's mean tokens (on the same images).", "",
                  "| method | epsilon | tokens | reached | encoder runs | decoder runs | ms / image | time vs KARL "
                  "| KARL / this | L1 x10 | LPIPS |", "|---" * 11 + "|"]
        for v in summary["variable"]:
            lines.append(f"| KARL (single pass) | {fmt_eps(v['epsilon'])} | {_f(v['tokens'], '.1f')} | "
                         f"{_pct(v['reached'])} | 1 | 1 | {_f(v['time_s'], '.2f', 1e3)} | 1.00 | 1.00 | "
                         f"{_f(v['l1'], '.3f', 10)} | {_f(v['lpips'])} |")
            for s in (s for s in summary["search"] if s["epsilon"] == v["epsilon"]):
                c = s["vs_karl"]
                lines.append(f"| {s['method']} | {fmt_eps(s['epsilon'])} | {_f(s['tokens'], '.1f')} | "
                             f"{_pct(s['reached'])} | {_f(s['encoder_runs'], '.2f')} | {_f(s['decoder_runs'], '.2f')} | "
                             f"{_f(s['time_s'], '.2f', 1e3)} | {_f(c.get('speedup_vs_karl'), '.2f')} | "
                             f"{_f(c.get('token_ratio'), '.2f')} | {_f(s['l1'], '.3f', 10)} | {_f(s['lpips'])} |")
        lines.append("")
    if summary.get("rfid"):
        lines += ["## rFID", "", "| setting | rFID | images | reliable (>= 2048) |", "|---|---|---|---|"]
        for name, r in summary["rfid"].items():
            lines.append(f"| {name} | {_f(r.get('fid'), '.2f')} | {r.get('n', '-')} | {r.get('reliable', '-')} |"
                         if "error" not in r else f"| {name} | - | - | {r['error']} |")
        lines.append("")
    return "\n".join(lines)
