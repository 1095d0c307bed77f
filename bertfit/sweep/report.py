"""What a sweep leaves for its user: `trials.csv` (every trial), `best/` (the winner's run folder, as `bertfit
train` writes one), `best.yaml` (its recipe), and `README.md`: the best result beside the base recipe's, the
configurations over seeds, the trial table, parameter importances and plots (Optuna's own, drawn by
matplotlib)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from bertfit.records import markdown_table


def _rows(sweep, study) -> tuple[list[str], list[list]]:
    from bertfit.sweep.study import _kind

    keys = [d.key for d in sweep.space]
    columns = ["number", "kind", "state", *keys, "seed", sweep.metric, "steps", "seconds", "verdict", "folder"]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if "folder" not in trial.user_attrs:
            continue  # a surplus trial: nothing ran
        attrs = trial.user_attrs
        state = trial.state.name.lower()
        if "retry_of" in attrs:
            state += f" (retry of {attrs['retry_of']})"
        rows.append(
            [
                trial.number,
                _kind(trial) + (f" of {attrs['confirms']}" if "confirms" in attrs else ""),
                state,
                *(trial.params.get(k, "") for k in keys),
                attrs.get("seed", ""),
                "" if trial.value is None else round(trial.value, 6),
                attrs.get("steps", ""),
                attrs.get("seconds", ""),
                attrs.get("verdict", "") + (f"; pruned at {attrs['pruned_at']}" if "pruned_at" in attrs else ""),
                attrs["folder"],
            ]
        )
    return columns, rows


def _csv(columns: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def _plots(study, folder: Path) -> list[str]:
    from bertfit.sweep.study import write_owned

    """Optimisation history, parallel coordinates and the metric against each parameter, from Optuna's matplotlib
    plots; a plot Optuna cannot draw for this study (too few finished trials) is left out."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    drawn = []
    for name, draw in (
        ("history", optuna_plots.plot_optimization_history),
        ("parallel", optuna_plots.plot_parallel_coordinate),
        ("slice", optuna_plots.plot_slice),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks these plots experimental
                axes = draw(study)
        except (ValueError, RuntimeError):
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(max(7, figure.get_size_inches()[0]), 4.5)
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        write_owned(folder, f"plots/{name}.png", png.getvalue())
        drawn.append(f"plots/{name}.png")
    return drawn


def _importances(study) -> dict[str, float]:
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):  # fewer than two finished trials, or a parameter that never varied
        return {}


def _base_score(sweep, study) -> str:
    """The base recipe's own score: the first trial runs it when its values lie in the space."""
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("base"):
            value = "no score" if trial.value is None else f"{sweep.metric} {trial.value:.4f}"
            return f"{value} (trial {trial.number}, {trial.state.name.lower()})"
    return "not run (its values lie outside the space)"


def write_outputs(sweep, study, best, configurations) -> None:
    from bertfit.sweep.study import best_recipe, copy_run, write_owned

    folder = sweep.folder
    columns, rows = _rows(sweep, study)
    write_owned(folder, "trials.csv", _csv(columns, rows))
    write_owned(folder, "best.yaml", best_recipe(sweep, best))
    copy_run(folder / best.trials[0].user_attrs["folder"], folder / "best")
    plots = _plots(study, folder)
    importances = _importances(study)
    states = [row[2].split(" ")[0] for row in rows]
    shown = [
        [
            ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in c.params.items()),
            str(len(c.values)),
            f"{c.mean:.4f}" + (f" ± {c.std:.4f}" if len(c.values) > 1 else ""),
            f"{c.trials[0].value:.4f} (trial {c.trials[0].number})",
        ]
        for c in configurations[:10]
    ]
    lines = [
        f"# Sweep: {sweep.study_name}",
        "",
        f"{len(rows)} trials of `{sweep.base.model}` on `{sweep.base.data}`, optimising validation "
        f"{sweep.metric} ({sweep.direction}): {states.count('complete')} complete, {states.count('pruned')} pruned by "
        f"the {sweep.pruner} pruner, {states.count('fail')} failed.",
        "",
        "## Best",
        "",
        f"- Winner: trial {best.trials[0].number}, {sweep.metric} **{best.mean:.4f}**"
        + (f" ± {best.std:.4f} (mean ± std over {len(best.values)} seeds)" if len(best.values) > 1 else " (one seed)"),
        "- Its recipe: `best.yaml` (`bertfit train best.yaml`); its run folder: `best/` (pipeline(), `bertfit eval`, "
        "`predict`, `serve`, `push` read it)",
        f"- The base recipe: {_base_score(sweep, study)}",
        "",
        "## Configurations",
        "",
        "The best first"
        + (
            ", chosen by the mean over seeds: one seed's score is noise on small data (Dodge et al. 2020)."
            if sweep.confirm
            else "."
        ),
        "",
        markdown_table(["Parameters", "Seeds", f"{sweep.metric}", "Search trial"], shown),
        "",
        "## Search space",
        "",
        *(f"- {d.describe()}" for d in sweep.space),
        "",
    ]
    if importances:
        lines += [
            "## Parameter importances",
            "",
            "fANOVA over the finished trials (Optuna's `get_param_importances`): the share of the metric's variance "
            "each parameter explains.",
            "",
            markdown_table(["Parameter", "Importance"], [[k, f"{v:.3f}"] for k, v in importances.items()]),
            "",
        ]
    lines += ["## Trials", "", "Every trial, with the doctor's verdict on its run (`trials.csv` has them all).", ""]
    lines += [markdown_table([str(c) for c in columns], [[str(v) for v in row] for row in rows]), ""]
    if plots:
        lines += ["## Plots", "", *(f"![{Path(p).stem}]({p})" for p in plots), ""]
    lines += [
        "The study is in "
        + (f"`{sweep.storage}`" if sweep.storage else "`study.journal`")
        + f" (study name `{sweep.study_name}`): `optuna-dashboard` opens it as it is, and running the same "
        "`bertfit sweep` again continues it.",
        "",
    ]
    write_owned(folder, "README.md", "\n".join(lines))
