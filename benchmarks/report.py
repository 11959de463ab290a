"""The benchmark's report: throughput, paired ratios and roofline fractions per row, the table and the targets.

:func:`summarise` adds the derived numbers to one configuration's result (from :func:`benchmarks.bench.run_config`);
:func:`format_table` prints every row of every configuration as Markdown; :func:`format_targets` checks the
issue's targets (fnn against the fastest peer, PyTorch and the roofline; manual against autodiff; compile time;
that all rows trained the same thing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks.workload import Config

__all__ = ["LOSS_RTOL_EPOCH1", "LOSS_RTOL_FINAL", "TARGETS", "format_table", "format_targets", "summarise"]

#: Agreement of the rows' full training losses (relative to fnn's manual row). After one epoch they agree to
#: float32 rounding; over hundreds of thousands of SGD steps the trajectories drift apart by rounding alone
#: (different summation orders in different GEMM libraries), so the final check is looser.
LOSS_RTOL_EPOCH1, LOSS_RTOL_FINAL = 1e-3, 3e-2

TARGETS = (
    ("small/10", "fnn fit, manual", "paired_vs_fastest_peer", 1.5, "≥ 1.5× the fastest peer"),
    ("small/128", "fnn fit, manual", "paired_vs_fastest_peer", 1.2, "≥ 1.2× the fastest peer"),
    ("wide/256", "fnn fit, manual", "paired_vs_torch", 2.0, "≥ 2× PyTorch eager"),
    ("wide/256", "fnn fit, manual", "roofline", 0.85, "≥ 85% of the GEMM roofline"),
)


def summarise(res: dict) -> None:
    """Add throughput, paired ratios and roofline fractions to each row of one configuration's result."""
    cfg = Config(**res["config"])
    samples = cfg.samples
    roof = np.asarray(res["gemm"]["per_round_best"])
    rows = res["rows"]
    for r in rows.values():
        if "error" in r:
            continue
        timed = np.asarray(r["times"][1:] or r["times"])  # epoch 1 is the warm-up
        r["epoch_s"] = float(np.median(timed))
        r["samples_per_s"] = samples / r["epoch_s"]
        r["flops"] = 6.0 * cfg.n_params * r["samples_per_s"]
        if r["in_process"]:
            r["roofline"] = float(np.median(6.0 * cfg.n_params * samples / timed / roof[-len(timed):]))
        else:
            r["roofline"] = r["flops"] / float(np.median(roof))
        r["rss_epoch2"] = r["rss"][1] if len(r["rss"]) > 1 else r["rss"][0]
        r["rss_last"] = r["rss"][-1]
    peers = [k for k, r in rows.items() if not k.startswith("fnn") and "error" not in r]
    fastest = max(peers, key=lambda k: rows[k]["samples_per_s"]) if peers else None
    res["fastest_peer"] = fastest
    # Rows that train the same function (a dropout row trains another one: its loss is not comparable).
    ran = [r for k, r in rows.items() if "error" not in r and "dropout" not in k]
    ref_loss = rows["fnn fit, manual"]["final_loss"]
    res["loss_spread"] = max(abs(r["final_loss"] - ref_loss) / abs(ref_loss) for r in ran)
    ref1 = rows["fnn fit, manual"]["loss_epoch1"]
    res["loss_spread_epoch1"] = max(abs(r["loss_epoch1"] - ref1) / abs(ref1) for r in ran)
    for r in (r for r in rows.values() if "error" not in r):
        if fastest is None:
            continue
        r["vs_fastest_peer"] = r["samples_per_s"] / rows[fastest]["samples_per_s"]
        for peer_name, key in ((fastest, "paired_vs_fastest_peer"), ("PyTorch eager", "paired_vs_torch"),
                               ("fnn fit, autodiff", "paired_vs_autodiff"), ("fnn fit, manual", "paired_vs_mlp")):
            peer = rows.get(peer_name)
            if peer is None or "error" in peer:
                continue
            if r["in_process"] and peer["in_process"]:
                r[key] = float(np.median(np.asarray(peer["times"][1:]) / np.asarray(r["times"][1:])))
            else:
                r[key] = r["samples_per_s"] / peer["samples_per_s"]


def _fmt(v, spec):
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def format_table(results: Sequence[dict]) -> str:
    """The results as a Markdown table (one line per row and configuration)."""
    head = ("| config | row | samples/s | × fastest peer (paired) | epoch ms | compile s | % GEMM roofline | "
            "train loss after epoch 1 → last | peak RSS MiB | RSS MiB epoch 2 → last |")
    lines = [head, "|" + "|".join(["---"] * 10) + "|"]
    for res in results:
        cfg = res["config"]
        for name, r in res["rows"].items():
            if "error" in r:
                lines.append(f"| {cfg['name']} | {name} | skipped: {r['error']} | | | | | | | |")
                continue
            marker = " ◆" if name == res["fastest_peer"] else ""
            ratio = r.get("paired_vs_fastest_peer", r.get("vs_fastest_peer"))
            lines.append(
                f"| {cfg['name']} | {name}{marker} | {r['samples_per_s']:,.0f} | {_fmt(ratio, '.2f')} | "
                f"{r['epoch_s'] * 1e3:,.0f} | {_fmt(r['compile_s'], '.2f')} | {100 * r['roofline']:.1f} | "
                f"{r['loss_epoch1']:.5f} → {r['final_loss']:.5f} | {r['peak']:,.0f} | "
                f"{r['rss_epoch2']:,.0f} → {r['rss_last']:,.0f} |"
            )
    return "\n".join(lines)


def format_targets(results: Sequence[dict]) -> str:
    """One line per target of the issue: the measured value and whether it is met."""
    by_name = {res["config"]["name"]: res for res in results}
    out = []
    for cfg_name, row, key, goal, text in TARGETS:
        r = by_name.get(cfg_name, {}).get("rows", {}).get(row, {})
        if key not in r:
            out.append(f"- {cfg_name}: {text}: not measured")
            continue
        v = r[key]
        shown = f"{100 * v:.1f}%" if key == "roofline" else f"{v:.2f}×"
        out.append(f"- {cfg_name}: {text}: {shown} — {'met' if v >= goal else 'MISSED'}")
    for res in results:
        name = res["config"]["name"]
        m = res["rows"].get("fnn fit, manual", {})
        if "paired_vs_autodiff" in m:
            v = m["paired_vs_autodiff"]
            out.append(f"- {name}: manual ≥ 0.97 × autodiff: {v:.3f} — {'met' if v >= 0.97 else 'MISSED'}")
        serial = res["rows"].get("fnn fit, serial", {})
        if "paired_vs_mlp" in serial:
            v = serial["paired_vs_mlp"]
            out.append(f"- {name}: fnn.serial of Dense within 3% of fnn.mlp: {v:.3f} — "
                       f"{'met' if v >= 0.97 else 'MISSED'}")
        if m.get("compile_s") is not None:
            c = m["compile_s"]
            out.append(f"- {name}: compiling an epoch < 1 s: {c:.2f} s — {'met' if c < 1 else 'MISSED'}")
        ok = res["loss_spread_epoch1"] < LOSS_RTOL_EPOCH1 and res["loss_spread"] < LOSS_RTOL_FINAL
        out.append(f"- {name}: all rows train the same thing: training loss spread "
                   f"{res['loss_spread_epoch1']:.1e} after epoch 1 (< {LOSS_RTOL_EPOCH1:.0e}), "
                   f"{res['loss_spread']:.1e} at the end (< {LOSS_RTOL_FINAL:.0e}) — {'yes' if ok else 'NO'}")
    return "\n".join(out)
