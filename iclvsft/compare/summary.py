"""The terminal summary of a comparison: accuracy per k and per n on every split, with k* and n* marked."""

from __future__ import annotations

from iclvsft.compare.records import Settings, curve, knob, ordered, select_best, split_rank


def summary_table(settings: Settings) -> str:
    """A fixed-width table for the terminal: accuracy per k (ICL) and per n (FT); * marks k* and n*."""
    if not settings:
        return "no results"
    shots = sorted({int(r["shots"]) for r in settings if r.get("condition") == "icl"})
    # FT columns: one per milestone, per recipe when the run fine-tuned with several.
    samples = sorted({(r.get("recipe") or "", int(r["ft_samples"])) for r in settings if r.get("condition") == "ft"})
    several = len({recipe for recipe, _ in samples}) > 1
    models = ordered(str(r["model"]) for r in settings)
    tasks = ordered(str(r["task"]) for r in settings)
    splits = sorted({str(r["split"]) for r in settings}, key=split_rank)
    ft_names = [f"{recipe} n={n} " if several else f"n={n} " for recipe, n in samples]
    header = ["task", "split"] + [f"k={k} " for k in shots] + ["|"] + ft_names + ["|", "k*", "n*"]
    rows = []
    for m in models:
        for t in tasks:
            best = {c: select_best(settings, c, t, m) for c in ("icl", "ft")}
            for s in splits:
                cells = []
                for cond, values in (("icl", [("", k) for k in shots]), ("ft", samples)):
                    for recipe, v in values:
                        only = {"recipe": recipe or None} if several else {}
                        accuracy = {p.x: p.accuracy for p in curve(settings, cond, t, m, s, **only)}
                        chosen = best[cond] is not None and knob(best[cond]) == v
                        chosen = chosen and (not several or (best[cond].get("recipe") or "") == recipe)
                        # A blank where others have "*" keeps the decimal points aligned.
                        cells.append(f"{accuracy[v]:.3f}{'*' if chosen else ' '}" if v in accuracy else "- ")
                    cells.append("|")
                if not any(c not in ("- ", "|") for c in cells):
                    continue
                k = str(knob(best["icl"])) if best["icl"] else "-"
                n = str(knob(best["ft"])) if best["ft"] else "-"
                if several and best["ft"] and best["ft"].get("recipe"):
                    n += f" ({best['ft']['recipe']})"
                rows.append((m, [t, s] + cells + [k, n]))
    widths = [max([len(header[i])] + [len(r[i]) for _, r in rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = []
    for m in models:
        model_rows = [r for mm, r in rows if mm == m]
        if not model_rows:
            continue
        out += [f"model: {m}   (* = chosen on validation)", fmt(header)] + [fmt(r) for r in model_rows]
    return "\n".join(out)
