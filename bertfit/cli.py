"""The `bertfit` command: parse, call, print. Users' mistakes end in one line and exit code 2."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from bertfit.errors import BertfitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune BERT-family encoders fast, reproducibly, with honest reports.")
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

Opt = typer.Option


class TaskKind(str, Enum):
    auto = "auto"
    classification = "classification"
    regression = "regression"
    token = "token"


# Set by `--nproc` for its workers: the folder where a worker leaves its one-line error for the launcher.
WORKER_ERRORS = "BERTFIT_WORKER_ERRORS"


@app.command()
def train(
    recipe: Optional[str] = typer.Argument(None, help="YAML recipe; options and --set override it"),
    model: Optional[str] = Opt(None, help="hub id, local folder, or 'minilm' [default: bert-base-uncased]"),
    data: Optional[str] = Opt(None, help="hub id, BERTFIT_DATA_DIR mirror name, folder of split files, or a file"),
    output: Optional[str] = Opt(None, "--output", "-o", help="run folder to write"),
    task: Optional[str] = Opt(None, help="auto | classification | regression | token"),
    text_column: Optional[List[str]] = Opt(None, "--text-column", "--text-columns", help="text column(s); twice for pairs"),
    label_column: Optional[str] = Opt(None, help="label (or tag) column"),
    label_names: Optional[str] = Opt(None, help="comma-separated names for integer labels"),
    epochs: Optional[float] = Opt(None, help="epochs [default: 3]"),
    max_steps: Optional[int] = Opt(None, help="optimizer steps; overrides --epochs"),
    lr: Optional[float] = Opt(None, help="peak learning rate [default: 5e-5]"),
    batch_size: Optional[int] = Opt(None, help="training batch size per device [default: 16]"),
    eval_batch_size: Optional[int] = Opt(None, help="evaluation batch size [default: max(64, 2×batch)]"),
    seed: Optional[int] = Opt(None, help="seed for data order, subsets and initialisation [default: 42]"),
    adam_beta1: Optional[float] = Opt(None), adam_beta2: Optional[float] = Opt(None),
    adam_epsilon: Optional[float] = Opt(None),
    weight_decay: Optional[float] = Opt(None),
    scheduler: Optional[str] = Opt(None, help="linear | constant | cosine"),
    warmup_ratio: Optional[float] = Opt(None), warmup_steps: Optional[int] = Opt(None),
    precision: Optional[str] = Opt(None, help="auto | fp32 | fp16 | bf16"),
    clip_norm: Optional[float] = Opt(None, help="gradient clipping norm; 0 disables [default: 1.0]"),
    grad_accum: Optional[int] = Opt(None, help="gradient accumulation steps"),
    max_length: Optional[int] = Opt(None, help="max tokens per example [default: the model's, up to 512]"),
    truncation: Optional[str] = Opt(None, help="head | tail | head+tail for texts longer than max length"),
    eval_every: Optional[str] = Opt(None, help="evaluate every N steps, or 'epoch'"),
    max_train_samples: Optional[int] = Opt(None, help="seeded random subset of the training split"),
    max_eval_samples: Optional[int] = Opt(None, help="seeded random subset of the validation split"),
    early_stopping: Optional[int] = Opt(None, help="stop after this many evaluations without improvement"),
    metric_for_best: Optional[str] = Opt(None, help="metric that picks the best checkpoint"),
    padding: Optional[str] = Opt(None, help="bucket (length-grouped) | dynamic | none"),
    compile: Optional[bool] = Opt(None, "--compile/--no-compile", help="torch.compile [default: on GPU only]"),
    label_all_subtokens: Optional[bool] = Opt(None, "--label-all-subtokens", help="token task: label every sub-token"),
    stride: Optional[int] = Opt(None, help="token task: overlap between windows of a long sentence"),
    checkpoint_every: Optional[int] = Opt(None, help="also checkpoint every N steps (always at each evaluation)"),
    set_: Optional[List[str]] = Opt(None, "--set", help="KEY=VALUE override of any recipe key (repeatable)"),
    resume: bool = Opt(False, "--resume", help="continue from the newest checkpoint in --output"),
    overwrite: bool = Opt(False, "--overwrite", help="replace a non-empty --output folder"),
    nproc: int = Opt(1, "--nproc", help="processes on this machine (torchrun, one per GPU or gloo on CPU)"),
    debug: bool = Opt(False, "--debug", help="show tracebacks"),
):
    """Fine-tune a model on a dataset and write a pipeline-ready run folder."""
    given = {k: v for k, v in locals().items() if k not in ("recipe", "set_", "resume", "overwrite", "nproc", "debug")}
    from bertfit.config import build_config, parse_set_overrides

    given["text_columns"] = given.pop("text_column") or None
    cfg = build_config(recipe, {**given, **parse_set_overrides(set_ or [])})
    if nproc > 1:
        from bertfit.train import preflight

        preflight(cfg, resume, overwrite)
        raise typer.Exit(launch_distributed(nproc))
    run_training(cfg, resume=resume, overwrite=overwrite)


def run_training(cfg, resume: bool, overwrite: bool) -> None:
    from bertfit.train import train as train_run

    summary = train_run(cfg, resume=resume, overwrite=overwrite, console=console)
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(summary, cfg.output)


def print_summary(summary: dict, output: str) -> None:
    from bertfit.report import scalar_metrics

    for split in ("validation", "test"):
        if split in summary:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in scalar_metrics(summary[split]).items())
            console.print(f"{split}: {shown}")
    train = summary["train"]
    console.print(f"kept step {summary['kept_step']}; trained {train['train_seconds']:.1f} s at "
                  f"{train['samples_per_second']:.1f} samples/s ({train['padding_ratio']:.1%} padding)")
    for finding in summary.get("diagnosis", []):
        console.print(f"[{finding['severity']}] {finding['title']}: {finding['advice']}", markup=False)
    console.print(f"wrote {output}")


def launch_distributed(nproc: int) -> int:
    """`--nproc N` is torchrun on this machine with the same arguments. A worker's user error comes back as
    its one line and exit code 2, not as one line per worker and torchrun's failure report."""
    import logging
    import tempfile

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        skip = arg == "--nproc"
        if not skip:
            argv.append(arg)
    for name in list(logging.root.manager.loggerDict):  # torchelastic's loggers carry their own levels
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # Each worker gets its share of the cores (torchrun's own default is one thread, with a warning).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with tempfile.TemporaryDirectory(prefix="bertfit-errors-") as error_dir:
        os.environ[WORKER_ERRORS] = error_dir
        try:
            torchrun.run(torchrun.parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "bertfit", *argv]))
            return 0
        except SignalException as stopped:  # the launcher itself was signalled; torchrun has stopped the workers
            rank, code = 0, 128 + stopped.sigval
        except ChildFailedError as failed:
            rank, failure = failed.get_first_failure()
            code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
        said = Path(error_dir, str(rank))
        if said.is_file():
            errors.print(said.read_text(), markup=False)
            return code
        if code > 128:
            return code
        errors.print(f"bertfit: worker {rank} failed with exit code {code} (rerun with --debug for its traceback)",
                     markup=False)
        return 1


@app.command()
def resume(run: str = typer.Argument(..., help="run folder to continue"), debug: bool = Opt(False, "--debug")):
    """Continue an interrupted run from its newest checkpoint (in RUN, wherever it was moved or copied)."""
    from bertfit.config import build_config

    recipe = Path(run, "recipe.yaml")
    if not recipe.is_file():
        raise BertfitError(f"'{run}' is not a bertfit run folder (no recipe.yaml); give the --output folder of an "
                           "interrupted `bertfit train`")
    run_training(build_config(str(recipe), {"output": run}), resume=True, overwrite=False)


@app.command("eval")
def evaluate(run: str = typer.Argument(..., help="run folder"), data: str = Opt(..., help="dataset (as for train)"),
             split: str = Opt("validation", help="split to score"), batch_size: int = Opt(64),
             debug: bool = Opt(False, "--debug")):
    """Score a trained run on a dataset split; prints metrics as JSON."""
    from bertfit.files import to_json
    from bertfit.predict import evaluate_run

    print(to_json(evaluate_run(run, data, split, batch_size), indent=2))


@app.command()
def predict(run: str = typer.Argument(..., help="run folder"),
            text: Optional[List[str]] = Opt(None, "--text", help="text to classify (repeatable)"),
            pair: Optional[str] = Opt(None, "--pair", help="second text, for text-pair models"),
            input: Optional[str] = Opt(None, "--input", help="CSV/TSV/JSONL/Parquet/TXT file of texts"),
            output: Optional[str] = Opt(None, "--output", help="JSONL file to write (default: print)"),
            batch_size: int = Opt(64), debug: bool = Opt(False, "--debug")):
    """Predict labels, scores or entity spans for texts."""
    from bertfit.predict import load_run, predict as predict_rows, read_inputs, write_predictions

    from bertfit.files import to_json
    from bertfit.predict import check_output_path

    if not text and not input:
        raise BertfitError("nothing to predict; pass --text TEXT or --input FILE")
    if output:
        check_output_path(output)
    loaded = load_run(run)
    rows = read_inputs(input, loaded.cfg.text_columns) if input else [[t] + ([pair] if pair else []) for t in text]
    predictions = predict_rows(loaded, rows, batch_size)
    if output:
        write_predictions(output, rows, predictions)
        console.print(f"wrote {len(predictions)} predictions to {output}")
    else:
        for prediction in predictions:
            print(to_json(prediction))


@app.command()
def inspect(data: str = Opt(..., help="dataset (as for train)"),
            model: Optional[str] = Opt(None, help="tokenizer for token lengths [default: minilm, bert-base-uncased's vocabulary]"),
            max_length: int = Opt(512, min=8, help="cut at which truncation is counted"),
            task: TaskKind = Opt("auto"), text_column: Optional[List[str]] = Opt(None, "--text-column"),
            label_column: Optional[str] = Opt(None), as_json: bool = Opt(False, "--json", help="print JSON"),
            debug: bool = Opt(False, "--debug")):
    """Profile a dataset: sizes, labels, lengths and truncation, empties, duplicates, leakage, tag repairs."""
    from bertfit.inspection import inspect_source

    report = inspect_source(data, model or "minilm", max_length, task.value, text_column or None, label_column)
    if as_json:
        from bertfit.files import to_json

        print(to_json(report, indent=2))
        return
    print_profile(report)


def print_profile(report: dict) -> None:
    from rich.table import Table

    from bertfit.inspection import summary_lines

    table = Table(title=f"{report['dataset']} ({report['task']})")
    for column in ("split", "rows", "labels / tags", "imbalance", "tokens p50/p95/max", "truncated", "duplicates",
                   "empty"):
        table.add_column(column, overflow="fold")
    for name, split in report["splits"].items():
        labels = split.get("labels") or split.get("entity_counts") or split.get("label_stats") or {}
        tokens = split.get("tokens")
        table.add_row(name, f"{split['rows']:,}", ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.2f}"
                                                          for k, v in labels.items()),
                      f"{split['imbalance_ratio']:.2f}" if "imbalance_ratio" in split else "",
                      f"{tokens['percentiles']['p50']}/{tokens['percentiles']['p95']}/{tokens['max']}" if tokens else "",
                      f"{tokens['truncated_share']:.1%} at {tokens['max_length']}" if tokens else "",
                      f"{split['duplicates']:,} ({split['normalised_duplicates']:,} normalised)",
                      f"{split['empty_texts']:,}")
    console.print(table)
    for line in summary_lines(report):
        if line.startswith(("leakage", "tag scheme")) or "different labels" in line or "not in train" in line:
            console.print(line, markup=False)


@app.command()
def doctor(run: str = typer.Argument(..., help="run folder"), debug: bool = Opt(False, "--debug")):
    """Diagnose a finished run: findings with evidence and advice (also written to diagnosis.json and the card)."""
    findings = refresh_reports(Path(run))
    if not findings:
        console.print("no findings: losses, metrics, data and speed look healthy")
    for finding in findings:
        console.print(f"[{finding['severity']}] {finding['title']}", markup=False)
        console.print(f"  evidence: {finding['evidence']}", markup=False)
        console.print(f"  advice:   {finding['advice']}", markup=False)


@app.command()
def card(run: str = typer.Argument(..., help="run folder"), debug: bool = Opt(False, "--debug")):
    """Regenerate the model card (README.md), plots and diagnosis of a run from its files."""
    refresh_reports(Path(run))
    console.print(f"wrote {Path(run) / 'README.md'}")


def refresh_reports(run: Path) -> list[dict]:
    """Diagnosis, plots and card rewritten under the run folder's lock, so a run still writing is left alone."""
    from bertfit.report import finalise
    from bertfit.runfolder import RunFolder

    with RunFolder.update(run) as folder, folder.recording():
        return finalise(run)


def report_error(line: str) -> None:
    """To stderr; a worker under `--nproc` leaves it to the launcher, so the user reads it once."""
    folder = os.environ.get(WORKER_ERRORS)
    if folder and "RANK" in os.environ:
        Path(folder, os.environ["RANK"]).write_text(line)
    else:
        errors.print(line, markup=False)


def main() -> None:
    debug = "--debug" in sys.argv
    try:
        code = app(standalone_mode=False)
    except BertfitError as err:
        if debug:
            raise
        report_error(f"error: {err}")
        sys.exit(err.exit_code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as err:
        from bertfit.train import Interrupted

        if isinstance(err, Interrupted):
            report_error(str(err))
            sys.exit(err.exit_code)
        if type(err).__name__ == "NoArgsIsHelpError":  # a bare `bertfit`: typer has printed the help
            sys.exit(2)
        if hasattr(err, "format_message") and isinstance(getattr(err, "exit_code", None), int):
            errors.print(f"error: {err.format_message()}", markup=False)  # typer/click usage errors
            sys.exit(2)
        if debug:
            raise
        report_error(f"bertfit: internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback; "
                     "please report it)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
