"""The kit's tables: Markdown and CSV for the notebooks' results, the comparison and the study.

Each function turns results read from ``runs/`` into text or a pandas DataFrame (nothing here
trains or draws); :mod:`dplib.experiments.publish` writes them.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

import pandas as pd

from . import compare, stages, study
from .compare import dirichlet_margins, settling_summary, summarise
from .experiment import FIXED, GLOBAL

Results = dict[str, dict[str, Any]]  # {setup name: its rows, bases, settling, ...}
StudyResults = dict[str, dict[str, list[dict[str, Any]]]]  # {setup: {"screened", "finals"}}

# The notebooks' results table ---------------------------------------------------------------
RESULTS_COLUMNS = tuple(
    "network dataset widths criterion error error_pruned params macs speedup params_ratio "
    "macs_ratio accuracy accuracy_pruned profile budget seconds".split()
)


def results_table(tables: list[dict[str, Any]]) -> pd.DataFrame:
    """Per ``table.json`` (:func:`stages.table`), its base then every pruned network (error %)."""
    records, copied = [], ("widths", "criterion", "params", "macs")
    for table in tables:
        base = table["base"]
        unpruned = {"criterion": stages.BASE_CRITERION, "allocation": FIXED, "speedup": 1.0}
        unpruned |= {"pruned_test": base["test"], "finetuned_test": base["test"]}
        unpruned |= {name: base[name] for name in ("widths", "params", "macs")}
        for row in [unpruned, *table["rows"]]:
            records.append(
                {
                    **{name: table[name] for name in ("network", "dataset", "profile")},
                    **{name: row[name] for name in copied},
                    "error": 100 * (1 - row["finetuned_test"]),
                    "error_pruned": 100 * (1 - row["pruned_test"]),
                    "speedup": row.get("speedup"),
                    "params_ratio": base["params"] / row["params"],
                    "macs_ratio": base["macs"] / row["macs"],
                    "accuracy": row["finetuned_test"],
                    "accuracy_pruned": row["pruned_test"],
                    "budget": None if row["allocation"] == FIXED else f"macs {row['budget']} fewer",
                    "seconds": row.get("seconds"),
                }
            )
    return pd.DataFrame(records, columns=RESULTS_COLUMNS)


RESULTS_FORMATS = {"error": "{:.2f}", "error_pruned": "{:.2f}", "params": "{:,.0f}"}
RESULTS_FORMATS |= {"macs": "{:,.0f}", "speedup": "{:.2f}x"}


def results_markdown(frame: pd.DataFrame) -> str:
    """The results table as Markdown (numbers rounded for reading)."""
    shown = frame[list(RESULTS_COLUMNS[:9])].copy()  # the columns network to speedup
    for column, form in RESULTS_FORMATS.items():
        shown[column] = shown[column].map(form.format)
    headers = (
        "error % (fine-tuned)|error % (just pruned)|params|MACs|deployed speed-up (CPU, batch 64)"
    )
    shown.columns = [*shown.columns[:4], *headers.split("|")]
    return frame_markdown(shown) + "\n"


# The comparison at a MAC budget ------------------------------------------------------------
RULES = ("greedy", "measured")  # Dirichlet's allocation rules, in order


def setups_with_rules(results: Results) -> Results:
    """The setups where a rule besides the greedy one ran: the pooled counts read only these (a
    setup run before the other rules would skew them with its greedy rows alone)."""
    return {
        name: result
        for name, result in results.items()
        if {row["allocation"] for row in result["rows"]} & set(RULES[1:])
    }


def goals_table(results: Results, skip: Iterable[str] = ("2x",)) -> str:
    """Each Dirichlet allocation rule against the best peer per setup and budget: its lead in
    points after pruning / after fine-tuning, with L1 under the same rule (the control)."""
    columns = ["setup", "budget", "best peer after pruning / after fine-tune"]
    columns += [f"Dirichlet {rule}" for rule in RULES]
    columns += [f"L1 {rule} (control)" for rule in RULES[1:]]
    rows = []
    for name, result in results.items():
        summary = summarise(result["rows"])
        by_rule = {r: {m["budget"]: m for m in dirichlet_margins(summary, r)} for r in RULES}
        for budget, greedy in by_rule["greedy"].items():
            if budget in skip:
                continue
            peer = " / ".join(
                f"{greedy[f'{m}_best_other']} {100 * greedy[f'{m}_other'][0]:.2f}"
                for m in ("pruned_val", "finetuned_val")
            )
            leads = [_lead(by_rule[rule].get(budget)) for rule in RULES]
            leads += [_lead(by_rule[rule].get(budget), "_control") for rule in RULES[1:]]
            rows.append([name, budget, peer, *leads])
    return frame_markdown(pd.DataFrame(rows, columns=columns)) + "\n"


def _summaries(results: Results, skip: Iterable[str]) -> pd.DataFrame:
    """:func:`summarise` of every setup, one frame with a ``setup`` column, budgets in ``skip``
    left out."""
    frames = [
        pd.DataFrame(summarise(result["rows"])).assign(setup=name, epoch=_epoch_seconds(result))
        for name, result in results.items()
    ]
    if not frames:
        return pd.DataFrame()
    summary = pd.concat(frames, ignore_index=True)
    return summary[~summary["budget"].isin(list(skip))]


def _epoch_seconds(result: dict[str, Any]) -> float:
    """The seconds of one training epoch of the setup's base networks (median; NaN if unknown)."""
    seconds = [base.get("seconds_per_epoch") for base in result.get("bases", [])]
    seconds = [s for s in seconds if s]
    return statistics.median(seconds) if seconds else float("nan")


def _tally(values: pd.Series) -> str:
    """``3 / 7``: the values above / below zero."""
    return f"{int((values > 0).sum())} / {int((values < 0).sum())}"


def paired_gains(results: Results, skip: Iterable[str] = ("2x",)) -> pd.DataFrame:
    """Each rule minus the greedy one of the same criterion, paired over the cases
    (setup, budget): mean ± standard error in points, and wins / losses, per metric."""
    summary = _summaries(results, skip)
    if summary.empty:
        return pd.DataFrame()
    keys, metrics = ["setup", "criterion", "budget"], list(STAGE_NAMES)
    greedy = summary[summary["allocation"] == "greedy"][keys + metrics]
    rules = summary[~summary["allocation"].isin(["greedy", "uniform", FIXED, GLOBAL])]
    paired = rules.merge(greedy, on=keys, suffixes=("", "_greedy"), how="inner")
    gains = pd.concat(
        paired[["criterion", "allocation"]].assign(
            metric=metric, gain=100 * (paired[metric] - paired[f"{metric}_greedy"])
        )
        for metric in metrics
    )
    grouped = gains.groupby(["criterion", "allocation", "metric"])["gain"]
    table = grouped.agg(["size", "mean", "sem", _tally]).reset_index()
    table["gain"] = [  # one case: no standard error, shown as 0
        f"{mean:+.2f} ± {sem:.2f}" for mean, sem in zip(table["mean"], table["sem"].fillna(0.0))
    ]
    table["metric"] = table["metric"].map(STAGE_NAMES)
    shown = ["criterion", "allocation", "size", "metric", "gain", "_tally"]
    names = {"allocation": "rule", "size": "cases", "gain": "gain over greedy (points)"}
    return table[shown].rename(columns=names | {"_tally": "wins / losses"})


def frame_markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table, a missing value as ``-`` (pandas' own needs the tabulate
    package)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    shown = frame.astype(object).where(frame.notna(), "-")
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


def _lead(margin: dict[str, Any] | None, suffix: str = "") -> str:
    """``+1.20 / -0.30``: the lead after pruning / after fine-tuning, in points; - if not run."""
    if margin is None or margin[f"pruned_val{suffix}"] is None:
        return "-"
    pruned, tuned = (margin[f"{m}{suffix}"] for m in ("pruned_val", "finetuned_val"))
    return f"{100 * pruned:+.2f} / {100 * tuned:+.2f}"


def verdict(results: Results, skip: Iterable[str] = ("2x",)) -> pd.DataFrame:
    """Per Dirichlet rule (and the L1 controls): in how many cases (setup, budget) it is at least
    as high as the best peer on validation after fine-tuning and right after pruning, its mean
    lead, and the allocation's median cost per network in seconds and in training epochs of its
    base."""
    leads = []  # (criterion, rule, lead after fine-tune, lead after pruning)
    for result in results.values():
        summary = summarise(result["rows"])
        for rule in RULES:
            for m in dirichlet_margins(summary, rule):
                if m["budget"] in skip:
                    continue
                leads.append(("dirichlet", rule, m["finetuned_val"], m["pruned_val"]))
                if m["pruned_val_control"] is not None:
                    control = (m["finetuned_val_control"], m["pruned_val_control"])
                    leads.append(("l1", rule, *control))
    if not leads:
        return pd.DataFrame()
    frame = pd.DataFrame(leads, columns=["criterion", "allocation", "tuned", "pruned"])
    table = frame.groupby(["criterion", "allocation"], sort=False).agg(
        **{
            "cases": ("tuned", "size"),
            "at least the best peer after fine-tune": ("tuned", _ahead),
            "after pruning": ("pruned", _ahead),
            "mean lead after fine-tune (points)": ("tuned", lambda v: round(100 * v.mean(), 2)),
            "mean lead after pruning (points)": ("pruned", lambda v: round(100 * v.mean(), 2)),
        }
    )
    summary = _summaries(results, ())
    summary["allocation_epochs"] = summary["allocation_seconds"] / summary["epoch"]
    cost = summary.groupby(["criterion", "allocation"])
    table["allocation seconds (median)"] = cost["allocation_seconds"].median().round(2)
    table["allocation in training epochs (median)"] = cost["allocation_epochs"].median().round(3)
    return table.reset_index()


def _ahead(leads: pd.Series) -> int:
    """The cases at least as high as the best peer: a lead of zero or more."""
    return int((leads >= 0).sum())


STAGE_NAMES = {"finetuned_val": "after fine-tune", "pruned_val": "after pruning"}


def same_widths_leads(results: Results, skip: Iterable[str] = ("2x",)) -> pd.DataFrame:
    """Each criterion against the best of the others pruned to the same widths (``uniform``),
    over the cases of :func:`verdict`: the ranking inside each layer alone, without the
    allocation. Per criterion and metric, the cases where it is at least as high, and its mean
    and worst lead. The best of five noisy peers sits above any one of them on average, so
    after fine-tuning, where every criterion is within about a point, every lead is negative."""
    summary = _summaries(results, skip)
    if summary.empty:
        return pd.DataFrame()
    same = summary[summary["allocation"] == "uniform"]
    same = same[same.groupby(["setup", "budget"])["criterion"].transform("size") >= 2]
    leads = []
    for metric, name in STAGE_NAMES.items():
        values = same.groupby(["setup", "budget"], sort=False)[metric]
        best = values.transform("max")
        runner_up = values.transform(lambda v: v.nlargest(2).iloc[-1])
        best_other = best.where(same[metric] < best, runner_up)
        lead = (100 * (same[metric] - best_other)).round(6)
        leads.append(same[["criterion"]].assign(metric=name, lead=lead))
    grouped = pd.concat(leads).groupby(["criterion", "metric"], sort=False)["lead"]
    return grouped.agg(
        **{
            "cases": "size",
            "at least the best other": _ahead,
            "mean lead (points)": lambda v: round(v.mean(), 2),
            "worst lead (points)": lambda v: round(v.min(), 2),
        }
    ).reset_index()


def same_widths_verdict(results: Results, skip: Iterable[str] = ("2x",)) -> pd.DataFrame:
    """Dirichlet's rows of :func:`same_widths_leads`, one per metric."""
    leads = same_widths_leads(results, skip)
    if not len(leads):
        return leads
    return leads[leads["criterion"] == "dirichlet"].drop(columns="criterion").reset_index(drop=True)


def what_the_kit_found(results: Results, link: str = "compare.md") -> str:
    """The course's verdict, computed from the comparison's rows (so it cannot drift from
    them): Dirichlet at the same widths and with its allocations against the other criteria,
    right after pruning and after fine-tuning, with the number of cases and seeds. ``link``
    points to the comparison's table from where the text is shown."""
    results = setups_with_rules(results)
    same = same_widths_verdict(results).set_index("metric")
    rules = verdict(results).set_index(["criterion", "allocation"])
    seeds = max(len(r["bases"]) for r in results.values())
    cases = int(same.loc["after pruning", "cases"])
    lines = [
        f"**What the kit found** ([the comparison]({link}): {cases} cases, the LeNet setups at "
        f"4x, 10x and 20x fewer MACs, mean over {seeds} seeds, validation accuracy)",
        "",
    ]
    moments = {"after pruning": "right after pruning", "after fine-tune": "after fine-tuning"}
    for metric, when in moments.items():
        row = same.loc[metric]
        lines.append(
            f"- Pruned to the same widths as every other criterion (the ranking alone), {when}:"
            f" Dirichlet is at least as high as the best of them in "
            f"{int(row['at least the best other'])} of {cases} cases, "
            f"{row['mean lead (points)']:+.2f} points on average, "
            f"{row['worst lead (points)']:+.2f} at worst."
        )
    for rule, name in (("greedy", "the greedy allocation"), ("measured", "the measured rule")):
        if ("dirichlet", rule) in rules.index:
            row = rules.loc[("dirichlet", rule)]
            lines.append(
                f"- With {name}, against the best other criterion (its greedy allocation or "
                f"Torch-Pruning's global pruning): at "
                f"least as high in {int(row['after pruning'])} of {int(row['cases'])} cases right "
                f"after pruning, {int(row['at least the best peer after fine-tune'])} after "
                "fine-tuning."
            )
    return "\n".join(lines)


def setup_section(name: str, result: dict[str, Any]) -> str:
    """The Markdown section of one setup: its table, base network, margins and settling."""
    dataset, _, model = name.partition("-")
    summary, bases = summarise(result["rows"]), result["bases"]
    epochs = result["rows"][0]["finetune_epochs"] if result["rows"] else 0
    section = markdown_table(summary, f"{model} on {dataset} ({len(bases)} seeds)")
    section += (
        f"\nBase network: {100 * statistics.mean(b['val'] for b in bases):.2f}% validation "
        f"accuracy (mean over seeds), {bases[0]['params']:,} params, {bases[0]['macs']:,} MACs; "
        f"fine-tuning {epochs:g} epoch(s) at lr {compare.FINETUNING.lr:g}, "
        f"{compare.FINETUNING.schedule}. {_importance_cost(result, bases[0])}\n\n"
        "Dirichlet (greedy allocation) minus the best other criterion, validation, points:\n\n"
    )
    for m in dirichlet_margins(summary):
        section += (
            f"- {m['budget']}: after pruning {100 * m['pruned_val']:+.2f} (best other: "
            f"{m['pruned_val_best_other']}), after fine-tuning {100 * m['finetuned_val']:+.2f} "
            f"(best other: {m['finetuned_val_best_other']})\n"
        )
    if result["settling"]:
        per_layer = [
            f"{layer} " + " / ".join(f"{v:.2f}" for v in means.values())
            for layer, means in settling_summary(result["settling"]).items()
        ]
        section += (
            "\nKendall tau with the final ranking (mean over seeds) at 10%, 25%, 50% of "
            f"importance learning: {'; '.join(per_layer)}\n"
        )
    return section


def markdown_table(summary: list[dict[str, Any]], title: str = "") -> str:
    """The summary as a Markdown table (accuracies in %, mean ± std over seeds)."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| budget | allocation | criterion | val after pruning | val after fine-tune "
        "| test after fine-tune | MACs | params | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    metrics = ("pruned_val", "finetuned_val", "finetuned_test")
    for entry in summary:
        accuracies = " | ".join(
            f"{100 * entry[m]:.2f} ± {100 * entry[f'{m}_std']:.2f}" for m in metrics
        )
        lines.append(
            f"| {entry['budget']} | {entry['allocation']} | {entry['criterion']} | {accuracies} "
            f"| {entry['macs']:,.0f} | {entry['params']:,.0f} | {entry['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def margins_table(summary: list[dict[str, Any]], allocation: str = "greedy") -> Any:
    """:func:`dirichlet_margins` as a pandas DataFrame, in points of validation accuracy."""
    return pd.DataFrame(
        [
            {
                "budget": m["budget"],
                "Dirichlet after pruning": round(100 * m["pruned_val_dirichlet"][0], 2),
                "best other": m["pruned_val_best_other"],
                "lead after pruning": round(100 * m["pruned_val"], 2),
                "Dirichlet after fine-tune": round(100 * m["finetuned_val_dirichlet"][0], 2),
                "best other ": m["finetuned_val_best_other"],
                "lead after fine-tune": round(100 * m["finetuned_val"], 2),
            }
            for m in dirichlet_margins(summary, allocation)
        ]
    )


def comparison_markdown(results: Results) -> str:
    """``compare.md``: the goals table and every setup's full table."""
    header = (
        "# Criteria compared at a MAC budget\n\n"
        "Validation accuracy, mean over seeds. The best peer: the other criterion, with its own "
        "allocation or Torch-Pruning's global pruning, with the highest mean. Each cell: the "
        "lead over it in points, right after pruning / after fine-tuning (negative: behind); "
        "the L1 columns apply the same rule to L1 scores, to tell the allocation's share from "
        "the posterior's.\n\n"
    )
    pooled = setups_with_rules(results)
    ruled = frame_markdown(verdict(pooled))
    ruled += (
        "\n\nEach rule against the greedy rule of the same criterion, paired over the "
        "same cases, validation (± one standard error):\n\n"
    ) + frame_markdown(paired_gains(pooled))
    ruled += (
        "\n\nAt the same widths (`uniform`: every criterion pruned to one set of widths), "
        "each criterion against the best of the others, over the same cases, validation. "
        "After fine-tuning no criterion reaches the best of the others on average: when five "
        "criteria lie within noise of each other, the best of them sits above any one.\n\n"
    ) + frame_markdown(same_widths_leads(pooled).sort_values(["metric", "criterion"]))
    sections = [setup_section(name, result) for name, result in results.items()]
    return (
        header + goals_table(results) + "\nCases at least as high as the best peer (4x, 10x "
        "and 20x):\n\n" + ruled + "\n\n" + "\n".join(sections)
    )


# The study ---------------------------------------------------------------------------------
def summary_table(results: StudyResults) -> str:
    """Markdown: per setup, the screened configurations and the fine-tuned finals."""
    lines = ["# What makes Dirichlet importance work: the study", ""]
    for setup, entry in results.items():
        if not entry["screened"]:
            continue
        lines += [
            f"## {setup}",
            "",
            "Screening (validation, right after pruning, mean over the "
            "three width settings; Spearman with the oracle, mean over layers):",
            "",
            "| configuration | accuracy after pruning | Spearman | seconds |",
            "|---|---|---|---|",
        ]
        for result in sorted(entry["screened"], key=study.screen_value, reverse=True):
            rho = statistics.mean(result["spearman"].values())
            lines.append(
                f"| {result['key']} | {100 * study.screen_value(result):.1f} | {rho:.2f} | "
                f"{result['seconds']:.1f} |"
            )
        finals = entry["finals"]
        if finals:
            # mild to aggressive (the stored JSON has its keys sorted as text)
            widths = sorted(finals[0]["pruned"], key=lambda w: -sum(map(int, w.split("-"))))
            lines += [
                "",
                "Finals: validation accuracy right after pruning / after fine-tuning "
                "[test after fine-tuning], %:",
                "",
                "| criterion | " + " | ".join(widths) + " | mean fine-tuned (val) |",
                "|---" * (len(widths) + 2) + "|",
            ]
            for result in sorted(finals, key=study.finetuned_value, reverse=True):
                cells = [
                    f"{100 * result['pruned'][w]:.1f} / {100 * result['finetuned'][w]:.2f}"
                    f" [{100 * result['finetuned_test'][w]:.2f}]"
                    for w in widths
                ]
                lines.append(
                    f"| {study.label(result)} | "
                    + " | ".join(cells)
                    + f" | {100 * study.finetuned_value(result):.2f} |"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def recommendation(
    results: StudyResults, max_cost_epochs: float = 1.0
) -> tuple[dict[str, Any] | None, str]:
    """The Dirichlet configuration fine-tuned on every setup with the best mean validation
    accuracy after fine-tuning, among those whose importance learning costs at most
    ``max_cost_epochs`` passes over the data (the paper's promise: one epoch), and a Markdown
    table of it against the best of L1 and Taylor at every width setting."""
    finals = {setup: entry["finals"] for setup, entry in results.items() if entry["finals"]}
    if not finals:
        return None, "no fine-tuned results yet"
    keys = None
    for entries in finals.values():
        ours = [r for r in entries if r["criterion"] == "dirichlet"]
        cheap = {r["key"] for r in ours if study.cost_in_epochs(r["config"]) <= max_cost_epochs}
        keys = cheap if keys is None else keys & cheap
    if not keys:
        return None, "no configuration was fine-tuned on every setup"
    best_key = max(keys, key=lambda key: _mean_finetuned(finals, key))
    lines = [
        "| setup | widths | Dirichlet (chosen) val / test | best of L1, Taylor val / test "
        "| Dirichlet - best (val) | after pruning: Dirichlet / best (val) |",
        "|---|---|---|---|---|---|",
    ]
    config = None
    for setup, entries in finals.items():
        chosen = next(r for r in entries if r["key"] == best_key)
        config = chosen["config"]
        peers = [r for r in entries if r["criterion"] in ("l1", "taylor")]
        for widths in chosen["finetuned"]:
            best = max(peers, key=lambda r, w=widths: r["finetuned"][w])
            best_pruned = max(r["pruned"][widths] for r in peers)
            lines.append(
                f"| {setup} | {widths} | {100 * chosen['finetuned'][widths]:.2f} / "
                f"{100 * chosen['finetuned_test'][widths]:.2f} | {best['criterion']} "
                f"{100 * best['finetuned'][widths]:.2f} / "
                f"{100 * best['finetuned_test'][widths]:.2f} | "
                f"{100 * (chosen['finetuned'][widths] - best['finetuned'][widths]):+.2f} | "
                f"{100 * chosen['pruned'][widths]:.1f} / {100 * best_pruned:.1f} |"
            )
    header = (
        f"Chosen on validation data among configurations that cost at most {max_cost_epochs:g} "
        f"epoch(s) of learning: **{study.label({'config': config})}** (mean validation accuracy "
        f"after fine-tuning over the setups: {100 * _mean_finetuned(finals, best_key):.2f}%).\n\n"
    )
    return config, header + "\n".join(lines) + "\n"


def _mean_finetuned(finals: dict[str, list[dict[str, Any]]], key: str) -> float:
    """Configuration ``key``'s validation accuracy after fine-tuning, mean over the setups."""
    return statistics.mean(
        study.finetuned_value(next(r for r in entries if r["key"] == key))
        for entries in finals.values()
    )


# CIFAR-10 ------------------------------------------------------------------------------------
CIFAR_COLUMNS = tuple(
    "model criterion allocation budget widths params macs base_test_accuracy "
    "test_accuracy_pruned test_accuracy_finetuned val_accuracy_pruned val_accuracy_finetuned "
    "finetune_epochs speedup seed data_source".split()
)
ACCURACIES = tuple(c for c in CIFAR_COLUMNS if c.startswith(("test_accuracy", "val_accuracy")))


def cifar_rows(results: Results) -> list[dict[str, Any]]:
    """One row per network, criterion, allocation, budget and seed; accuracies in %. The CIFAR
    setups' fixed widths are the reference code's: their budget reads ``reference``."""
    rows, copied = [], ("criterion", "allocation", "widths", "params", "macs")
    for result in results.values():
        bases = {base["seed"]: base for base in result["bases"]}
        for row in result["rows"]:
            base = bases[row["seed"]]
            rows.append(
                {
                    "model": row["setup"].split("-", 1)[1],
                    **{name: row[name] for name in copied},
                    "budget": "reference" if row["allocation"] == "fixed" else row["budget"],
                    "base_test_accuracy": 100 * base["test"],
                    "test_accuracy_pruned": 100 * row["pruned_test"],
                    "test_accuracy_finetuned": 100 * row["finetuned_test"],
                    "val_accuracy_pruned": 100 * row["pruned_val"],
                    "val_accuracy_finetuned": 100 * row["finetuned_val"],
                    "finetune_epochs": row["finetune_epochs"],
                    "speedup": row.get("speedup"),
                    "seed": row["seed"],
                    "data_source": base.get("data_source", ""),
                }
            )
    return rows


def cifar_markdown(results: Results, where: str = "the CPU") -> str:
    """``cifar.md``: per network, its base network and every pruned network's row; ``where``
    they were trained goes into the title."""
    lines = [f"# CIFAR-10: the paper's networks pruned on {where}", ""]
    for name, result in results.items():
        base = result["bases"][0]
        lines += [
            f"## {name.split('-', 1)[1]} ({base.get('data_source', '')})",
            "",
            f"Base network: {100 * base['test']:.2f}% test, {100 * base['val']:.2f}% validation "
            f"accuracy, {base['params']:,} params, {base['macs']:,} MACs, "
            f"{base.get('seconds_per_epoch', 0):.1f} s per training epoch"
            + (f" on {result['device']}. " if result.get("device") else ". ")
            + _importance_cost(result, base),
            "",
            "| criterion | allocation | budget | params | MACs | test after pruning | val / test "
            "after fine-tune | deployed speed-up | seeds |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in _seed_means(cifar_rows({name: result})):
            speed = f"{row['speedup']:.2f}x" if pd.notna(row["speedup"]) else "-"
            # fixed widths (cifar_rows names them) are too long for a cell: they are in cifar.csv
            budget = row["budget"] + (" widths" if row["allocation"] == "fixed" else "")
            budget += f" ({base['macs'] / row['macs']:.2f}x fewer MACs)"
            lines.append(
                f"| {row['criterion']} | {row['allocation']} | {budget} | "
                f"{row['params']:,.0f} | {row['macs']:,.0f} | {row['test_accuracy_pruned']} | "
                f"{row['val_accuracy_finetuned']} / {row['test_accuracy_finetuned']} | "
                f"{speed} | {row['seeds']} |"
            )
        if dirichlet_margins(summarise(result["rows"])):  # budgets ran, not only fixed widths
            lines += [
                "",
                "Leads over the best peer (validation, as in compare.md):",
                "",
                goals_table({name: result}, skip=()),
                frame_markdown(verdict({name: result}, skip=())),
            ]
            same = same_widths_verdict({name: result}, skip=())
            if len(same):
                lines += [
                    "",
                    "At the same widths, Dirichlet against the best other criterion (validation):",
                    "",
                    frame_markdown(same),
                ]
        lines.append("")
    return "\n".join(lines) + "\n"


def _seed_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (criterion, allocation, budget), in the order first seen: accuracies as mean
    (± std over seeds), sizes and speed-up averaged; ``seeds``: how many."""
    frame = pd.DataFrame(rows).astype({"speedup": float})  # a row without a speed-up: NaN
    grouped = frame.groupby(["criterion", "allocation", "budget"], sort=False)
    merged, seeds = grouped[["params", "macs", "speedup"]].mean(), grouped.size()
    mean, std = grouped[list(ACCURACIES)].mean(), grouped[list(ACCURACIES)].std()
    for column in ACCURACIES:
        merged[column] = [
            f"{m:.2f}" + (f" ± {s:.2f}" if n > 1 else "")
            for m, s, n in zip(mean[column], std[column], seeds)
        ]
    return merged.assign(seeds=seeds).reset_index().to_dict("records")


def _importance_cost(result: dict[str, Any], base: dict[str, Any]) -> str:
    seconds = [
        t["seconds"] for t in result.get("importance_seconds", []) if t["criterion"] == "dirichlet"
    ]
    if not seconds or not base.get("seconds_per_epoch"):
        return ""
    median = statistics.median(seconds)  # a run slowed by a busy machine moves it least
    return (
        f"Dirichlet importance: {median:.1f} s, {median / base['seconds_per_epoch']:.2f} training "
        "epochs (median over seeds)."
    )
