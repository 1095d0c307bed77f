"""The `bertfit` command: parse, call, print. Users' mistakes end in one line and exit code 2."""

from __future__ import annotations

import os
import sys
import types
import typing
from enum import Enum
from inspect import Parameter, Signature, signature
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from bertfit.config import Config, build_config, parse_set_overrides
from bertfit.errors import BertfitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune BERT-family encoders fast, reproducibly, with honest reports. "
    "Add --debug to any command for tracebacks instead of one-line errors.",
)
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

Opt = typer.Option


ALLOW_DATA_CHANGE = "resume although the data changed since the interruption (otherwise refused)"

# Set by `--nproc` for its workers: the folder where a worker leaves its one-line error for the launcher.
WORKER_ERRORS = "BERTFIT_WORKER_ERRORS"

# ---------------------------------------------------------------- options generated from Config

NOT_OPTIONS = {"world_size"}  # set by the launcher, not by hand
OPTION_NAMES = {"output": ("--output", "-o"), "text_columns": ("--text-column", "--text-columns")}
REPEATABLE = {"text_columns"}  # other list fields take one comma-separated value


def _choices(name: str, values) -> type[Enum]:
    """Typer shows and checks choices given as an Enum."""
    return Enum(name, {str(v): str(v) for v in values}, type=str)


def _option_type(name: str, annotation) -> object:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if len(args) > 1:
            return str  # e.g. eval_every: steps or 'epoch'; pydantic reads the string
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return _choices(name, typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return list[str] if name in REPEATABLE else str
    return annotation


INFERENCE_PRECISION = _choices("InferencePrecision", typing.get_args(Config.model_fields["precision"].annotation))


def recipe_option(name: str, field) -> Parameter:
    """One option per Config field: its description is the help, its default the one shown."""
    kind = _option_type(name, field.annotation)
    flag = name.replace("_", "-")
    names = (f"--{flag}/--no-{flag}",) if kind is bool else OPTION_NAMES.get(name, (f"--{flag}",))
    # A default that depends on the run is written in the description as "[default: ...]".
    description, _, described_default = (field.description or "").partition(" [default: ")
    shown = described_default.rstrip("]") or (False if field.default in (None, []) else str(field.default))
    group = (field.json_schema_extra or {}).get("group", "recipe")
    option = typer.Option(None, *names, help=description, show_default=shown, rich_help_panel=f"Recipe: {group}")
    return Parameter(name, Parameter.KEYWORD_ONLY, default=option, annotation=Optional[kind])  # noqa: UP045 (built at run time)


def with_recipe_options(command):
    """`command(**options)` gets one keyword per Config field; typer reads them from the signature."""
    fixed = [p for p in signature(command, eval_str=True).parameters.values() if p.kind is not Parameter.VAR_KEYWORD]
    options = [recipe_option(name, field) for name, field in Config.model_fields.items() if name not in NOT_OPTIONS]
    fixed = [
        p.replace(kind=Parameter.KEYWORD_ONLY)
        if p.default is not Parameter.empty and not isinstance(p.default, typer.models.ArgumentInfo)
        else p
        for p in fixed
    ]
    positional = [p for p in fixed if p.kind is not Parameter.KEYWORD_ONLY]
    keywords = [p for p in fixed if p.kind is Parameter.KEYWORD_ONLY]
    parameters = positional + options + keywords
    command.__signature__ = Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


@app.command()
@with_recipe_options
def train(
    recipe: str | None = typer.Argument(None, help="YAML recipe; options and --set override it"),
    set_: list[str] | None = Opt(None, "--set", help="KEY=VALUE override of any recipe key (repeatable)"),
    resume: bool = Opt(False, "--resume", help="continue from the newest checkpoint in --output"),
    overwrite: bool = Opt(False, "--overwrite", help="replace what an earlier run wrote in --output"),
    allow_data_change: bool = Opt(False, "--allow-data-change", help=ALLOW_DATA_CHANGE),
    nproc: int = Opt(1, "--nproc", min=1, help="processes on this machine (torchrun, one per GPU or gloo on CPU)"),
    **options,
):
    """Fine-tune a model on a dataset and write a pipeline-ready run folder."""
    given = {name: value.value if isinstance(value, Enum) else value for name, value in options.items()}
    given["text_columns"] = given.get("text_columns") or None
    cfg = build_config(recipe, {**given, **parse_set_overrides(set_ or [])})
    if nproc > 1:
        from bertfit.engine.setup import preflight

        preflight(cfg, resume, overwrite)
        raise typer.Exit(launch_distributed(nproc))
    run_training(cfg, resume=resume, overwrite=overwrite, allow_data_change=allow_data_change)


SWEEP_WORKER = "BERTFIT_SWEEP_WORKER"  # set for the workers `--workers K` starts: they start none of their own


@app.command()
@with_recipe_options
def sweep(
    recipe: str | None = typer.Argument(None, help="YAML recipe: the base recipe, and its sweep: block the space"),
    trials: int = Opt(20, "--trials", help="trials in the search, over every worker sharing the study"),
    space: list[str] | None = Opt(
        None,
        "--space",
        help="KEY=SPEC, SPEC one of LOW..HIGH, LOW..HIGH:log, INT..INT or a,b,c (repeatable) [default: the "
        "recipe's sweep: block, else lr, batch size, epochs, warmup and weight decay]",
    ),
    storage: str | None = Opt(
        None,
        "--storage",
        help="a journal file, or a database URL (postgresql://, mysql://, sqlite:///) for many "
        "machines [default: DIR/study.journal]",
    ),
    study_name: str | None = Opt(None, "--study-name", help="[default: the output folder's name]"),
    timeout: float | None = Opt(None, "--timeout", help="seconds after which no new trial starts"),
    workers: int | None = Opt(
        None,
        "--workers",
        min=1,
        help="worker processes on this machine, sharing the study and the cores [default: 2 on a CPU of 2 cores or "
        "more, else 1]",
    ),
    confirm: int | None = Opt(
        None,
        "--confirm",
        min=0,
        help="best configurations re-run with more seeds, the winner chosen by the mean "
        "[default: 3 under 10,000 training examples, else 0]",
    ),
    seeds: int = Opt(3, "--seeds", help="seeds per confirmed configuration, its search trial's included"),
    pruner: _choices("Pruner", ["median", "halving", "hyperband", "none"]) = Opt("median", "--pruner"),
    keep_weights: _choices("KeepWeights", ["best", "all"]) = Opt("best", "--keep-weights"),
    nproc: int = Opt(1, "--nproc", min=1, help="processes per trial (torchrun: data-parallel trials)"),
    set_: list[str] | None = Opt(None, "--set", help="KEY=VALUE override of any recipe key (repeatable)"),
    **options,
):
    """Search a recipe's hyperparameters (Optuna): pruned trials, the best confirmed over seeds, a report."""
    from bertfit.config import SWEEP_BLOCK, load_recipe
    from bertfit.sweep.study import default_workers, prepare, work

    given = {name: value.value if isinstance(value, Enum) else value for name, value in options.items()}
    given["text_columns"] = given.get("text_columns") or None
    base = build_config(recipe, {**given, **parse_set_overrides(set_ or [])})
    plan = prepare(
        base,
        space or [],
        load_recipe(recipe).get(SWEEP_BLOCK),
        trials,
        storage,
        study_name,
        timeout,
        confirm,
        seeds,
        pruner.value,
        keep_weights.value,
        nproc,
    )
    if os.environ.get(SWEEP_WORKER):
        helpers = []  # a worker another one started
    else:
        helpers = start_sweep_workers((workers or default_workers(plan)) - 1, plan.sampler_seed)
    try:
        work(plan, console)
    finally:
        for helper in helpers:
            helper.wait()


def start_sweep_workers(count: int, seed: int | None) -> list:
    """`--workers K`: K-1 more processes running the same command, sharing the study through its storage; `seed`:
    this worker's sampler seed, which it has where it created the study (worker i samples from seed + i)."""
    import subprocess

    from bertfit.sweep import SWEEP_SEED

    if not count:
        return []
    import torch

    threads = max(1, (os.cpu_count() or 1) // (count + 1))  # the cores shared out, this process included
    torch.set_num_threads(threads)
    env = {**os.environ, SWEEP_WORKER: "1", "OMP_NUM_THREADS": str(threads)}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "bertfit", *sys.argv[1:]],
            env={**env, **({SWEEP_SEED: str(seed + i)} if seed is not None else {})},
        )
        for i in range(1, count + 1)
    ]


def fit(
    cfg: Config,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    allow_data_change: bool = False,
    judge=None,
):
    """Train, then write the reports (card, plots, diagnosis) from the run's files; `judge`: a sweep's pruner."""
    from bertfit.engine.loop import train as train_run
    from bertfit.report import write_reports

    return train_run(cfg, resume, overwrite, console, write_reports, allow_data_change, judge)


def run_training(cfg: Config, resume: bool, overwrite: bool, allow_data_change: bool = False) -> None:
    from bertfit.sweep import SWEEP_TRIAL

    judge = None
    if os.environ.get(SWEEP_TRIAL):  # a sweep's trial on several processes
        from bertfit.sweep.study import trial_judge

        judge = trial_judge(os.environ[SWEEP_TRIAL], int(os.environ.get("RANK", "0")) == 0)
    summary = fit(
        cfg, resume=resume, overwrite=overwrite, console=console, allow_data_change=allow_data_change, judge=judge
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(summary, cfg.output)


def print_summary(outcome, output: str) -> None:
    summary = outcome.metrics
    for split, scores in (("validation", summary.validation), ("test", summary.test)):
        if scores is not None:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.scalars().items() if v is not None)
            console.print(f"{split}: {shown}")
    if summary.probe is not None:
        probe = ", ".join(f"{k} {v:.4f}" for k, v in summary.probe.metrics.named().items() if v is not None)
        console.print(f"frozen probe: {probe}")
    train = summary.train
    console.print(
        f"kept step {summary.kept_step}; trained {train.train_seconds:.1f} s at "
        f"{train.samples_per_second:.1f} samples/s ({train.padding_ratio:.1%} padding)"
    )
    if summary.stop_reason == "early_stopping":
        console.print(
            f"stopped early at step {train.steps}: {summary.metric_for_best} did not improve after step "
            f"{summary.best_step}"
        )
    for finding in outcome.findings:
        console.print(f"[{finding.severity}] {finding.title}: {finding.advice}", markup=False)
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
        errors.print(
            f"bertfit: worker {rank} failed with exit code {code} (rerun with --debug for its traceback)", markup=False
        )
        return 1


@app.command()
def resume(
    run: str = typer.Argument(..., help="run folder to continue"),
    allow_data_change: bool = Opt(False, "--allow-data-change", help=ALLOW_DATA_CHANGE),
):
    """Continue an interrupted run from its newest checkpoint (in RUN, wherever it was moved or copied)."""
    recipe = Path(run, "recipe.yaml")
    if not recipe.is_file():
        raise BertfitError(
            f"'{run}' is not a bertfit run folder (no recipe.yaml); give the --output folder of an "
            "interrupted `bertfit train`"
        )
    run_training(build_config(str(recipe), {"output": run}), True, False, allow_data_change)


@app.command("eval")
def evaluate(
    run: str = typer.Argument(..., help="run folder"),
    data: str = Opt(..., help="dataset (as for train)"),
    split: str = Opt("validation", help="split to score"),
    batch_size: int = Opt(64, min=1),
    precision: INFERENCE_PRECISION = Opt("auto", help="auto: as the run trained (fp16 needs a GPU)"),
):
    """Score a trained run on a dataset split; prints metrics as JSON."""
    from bertfit.engine.predict import evaluate_run
    from bertfit.files import to_json

    print(to_json(evaluate_run(run, data, split, batch_size, precision.value).dump(), indent=2))


@app.command()
def predict(
    run: str = typer.Argument(..., help="run folder"),
    text: list[str] | None = Opt(None, "--text", help="text to classify (repeatable)"),
    pair: str | None = Opt(None, "--pair", help="second text, for text-pair models"),
    input: str | None = Opt(None, "--input", help="CSV/TSV/JSONL/Parquet/TXT file of texts"),
    output: str | None = Opt(None, "--output", help="JSONL file to write (default: print)"),
    overwrite: bool = Opt(False, "--overwrite", help="replace --output if it exists"),
    batch_size: int = Opt(64, min=1),
    precision: INFERENCE_PRECISION = Opt("auto", help="auto: as the run trained (fp16 needs a GPU)"),
):
    """Predict labels, scores or entity spans for texts."""
    from bertfit.engine.predict import claim_output, load_run, read_inputs, write_predictions
    from bertfit.engine.predict import predict as predict_rows
    from bertfit.files import to_json

    if not text and not input:
        raise BertfitError("nothing to predict; pass --text TEXT or --input FILE")
    if output:
        claim_output(output, overwrite, run, input)
    loaded = load_run(run, precision.value)
    rows = read_inputs(input, loaded.cfg.text_columns) if input else [[t] + ([pair] if pair else []) for t in text]
    predictions = predict_rows(loaded, rows, batch_size)
    if output:
        write_predictions(output, loaded.task, rows, predictions)
        console.print(f"wrote {len(predictions)} predictions to {output}")
    else:
        for prediction in predictions:
            print(to_json(prediction))


@app.command()
def inspect(
    data: str = Opt(..., help="dataset (as for train)"),
    model: str | None = Opt(None, help="tokenizer for token lengths [default: minilm, bert-base-uncased's vocabulary]"),
    max_length: int = Opt(512, min=8, help="cut at which truncation is counted"),
    task: str = Opt("auto", help=Config.model_fields["task"].description),
    text_column: list[str] | None = Opt(None, "--text-column"),
    label_column: str | None = Opt(None),
    label_columns: str | None = Opt(None, help=Config.model_fields["label_columns"].description),
    label_delimiter: str = Opt("|", help=Config.model_fields["label_delimiter"].description),
    as_json: bool = Opt(False, "--json", help="print JSON"),
):
    """Profile a dataset: sizes, labels, lengths and truncation, empties, duplicates, leakage, tag repairs."""
    from bertfit.report.inspect import inspect_source

    columns = [c.strip() for c in label_columns.split(",") if c.strip()] if label_columns else None
    task = build_config(None, {"task": task}).task  # checked as a recipe's
    report = inspect_source(
        data, model or "minilm", max_length, task, text_column or None, label_column, columns, label_delimiter
    )
    if as_json:
        from bertfit.files import to_json

        print(to_json(report.dump(), indent=2))
        return
    print_profile(report)


def print_profile(inspection) -> None:
    from rich.table import Table

    from bertfit.tasks import TASKS
    from bertfit.tasks.profile import notes_lines

    report = inspection.profile
    kind = TASKS[report.task]
    table = Table(title=f"{inspection.dataset} ({report.task})")
    for column in (
        "split",
        "rows",
        "labels / tags",
        "imbalance",
        "tokens p50/p95/max",
        "truncated",
        "duplicates",
        "empty",
    ):
        table.add_column(column, overflow="fold")
    for name, split in report.splits.items():
        tokens = split.tokens
        table.add_row(
            name,
            f"{split.rows:,}",
            *(kind.label_cells(split) if split.labelled else ("", "")),
            f"{tokens.percentiles['p50']}/{tokens.percentiles['p95']}/{tokens.max}" if tokens else "",
            f"{'~' if tokens.sampled is not None else ''}{tokens.truncated_share:.1%} at {tokens.max_length}"
            if tokens
            else "",
            f"{split.duplicates:,} ({split.normalised_duplicates:,} normalised)",
            f"{split.empty_texts:,}",
        )
    console.print(table)
    for line in notes_lines(report):
        console.print(line, markup=False)


@app.command()
def doctor(
    run: str = typer.Argument(..., help="run folder"),
    write: bool = Opt(False, "--write", help="also rewrite diagnosis.json, the plots and the card"),
):
    """Diagnose a finished run: findings with evidence and advice (read-only unless --write)."""
    from bertfit.report import diagnosis

    findings = refresh_reports(Path(run)) if write else diagnosis(Path(run))
    if not any(f.severity in ("warning", "error") for f in findings):
        console.print("no problems found: losses, metrics, data and speed look healthy")
    for finding in findings:
        console.print(f"[{finding.severity}] {finding.title}", markup=False)
        console.print(f"  evidence: {finding.evidence}", markup=False)
        console.print(f"  advice:   {finding.advice}", markup=False)


@app.command()
def card(run: str = typer.Argument(..., help="run folder")):
    """Regenerate the model card (README.md), plots and diagnosis of a run from its files."""
    refresh_reports(Path(run))
    console.print(f"wrote {Path(run) / 'README.md'}")


@app.command()
def export(
    run: str = typer.Argument(..., help="run folder"),
    output: str = Opt(..., "--output", "-o", help="new folder for the exported model"),
    format: _choices("ExportFormat", ["onnx"]) = Opt("onnx", "--format", help="what to export to"),
    quantize: _choices("Quantize", ["int8"]) | None = Opt(None, help="int8: dynamic int8 weights (smaller, faster)"),
    data: str | None = Opt(None, help="data for the parity check [default: the run's own validation split]"),
):
    """Export a run to ONNX (onnxruntime runs it without torch), checked against torch on validation examples."""
    from bertfit.deploy.export import export_run

    result = export_run(run, output, quantize.value if quantize else None, data)
    console.print(
        f"wrote {result['output']} ({format.value}, quantize {result['quantize']}) in "
        f"{result['export_seconds']:.1f} s; parity on {result['parity_examples']:,} '{result['parity_split']}' "
        f"examples: max |Δlogit| {result['max_abs_logit_diff']:.2e}, labels agree on {result['label_agreement']:.2%}; "
        f"onnxruntime {result['onnx_samples_per_second']:.1f} vs torch fp32 "
        f"{result['torch_fp32_samples_per_second']:.1f} samples/s",
        markup=False,
    )


@app.command()
def serve(
    run: str = typer.Argument(..., help="run folder (or its ONNX export)"),
    host: str = Opt("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    port: int = Opt(8000, min=1, max=65535),
    max_batch: int = Opt(16, min=1, help="texts per batch of requests"),
    max_wait_ms: float = Opt(5.0, min=0, help="how long a request waits for others to batch with"),
    max_queue: int = Opt(256, min=1, help="requests waiting before new ones get 503"),
    max_texts: int = Opt(256, min=1, help="texts per request (more: 413)"),
    workers: int | None = Opt(None, min=1, help="batches computed at once [default: 2 on a CPU, 1 on a GPU]"),
):
    """Serve a run over HTTP: POST /predict, GET /health, GET /metadata; requests are micro-batched."""
    from bertfit.deploy.serve import Limits
    from bertfit.deploy.serve import serve as serve_run

    serve_run(run, host, port, Limits(max_batch, max_wait_ms, max_queue, max_texts), workers)


@app.command()
def review(
    run: str = typer.Argument(..., help="run folder"),
    host: str = Opt("127.0.0.1", help="address to listen on"),
    port: int = Opt(0, min=0, max=65535, help="port to listen on [default: a free one, printed]"),
    compare: list[str] = Opt(
        [], "--compare", help="other runs (or a sweep folder) to compare with it, curves overlaid"
    ),
):
    """Review the training examples whose labels look wrong on a local page: accept the suggested label, keep or
    drop each (keys a, k, d, u to undo); decisions land in RUN/review/decisions.jsonl for `train --corrections`."""
    from bertfit.deploy.review import review as review_run

    review_run(run, host, port, compare)


@app.command()
def push(
    run: str = typer.Argument(..., help="run folder"),
    repo_id: str = Opt(..., "--repo-id", help="owner/name of the model repository (created if missing)"),
    private: bool = Opt(False, "--private", help="create the repository private"),
):
    """Upload a run to the Hugging Face Hub (the card as its README; checkpoints stay here)."""
    from bertfit.deploy.hub import push_run

    console.print(f"pushed {run} to {repo_id}: {push_run(run, repo_id, private)}", markup=False)


def refresh_reports(run: Path) -> list:
    """Diagnosis, plots and card rewritten under the run folder's lock, so a run still writing is left alone."""
    from bertfit.report import write_reports
    from bertfit.runfolder import RunFolder

    with RunFolder.update(run) as folder:
        return write_reports(folder)


def check_utf8(args: list[str]) -> None:
    """A path with a byte that is not UTF-8 reaches Python as a lone surrogate, which the libraries bertfit writes
    through (tokenizers, YAML, JSON) cannot encode: refused before anything is read or written."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as err:
            raw = os.fsencode(arg)
            shown = raw.decode("utf-8", errors="backslashreplace")
            byte = raw[len(arg[: err.start].encode("utf-8", errors="surrogateescape"))]
            raise BertfitError(
                f"'{shown}' is not valid UTF-8 (byte 0x{byte:02x}); rename the file or folder with UTF-8 characters"
            ) from None


def report_error(line: str) -> None:
    """To stderr; a worker under `--nproc` leaves it to the launcher, so the user reads it once."""
    folder = os.environ.get(WORKER_ERRORS)
    if folder and "RANK" in os.environ:
        Path(folder, os.environ["RANK"]).write_text(line)
    else:
        errors.print(line, markup=False)


def main() -> None:
    """`--debug`, anywhere on the line, shows tracebacks instead of one-line errors."""
    debug = "--debug" in sys.argv
    try:
        check_utf8(sys.argv[1:])
        code = app(args=[arg for arg in sys.argv[1:] if arg != "--debug"], standalone_mode=False)
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
        from bertfit.engine.loop import Interrupted

        if isinstance(err, Interrupted):
            report_error(str(err))
            sys.exit(err.exit_code)
        if type(err).__name__ == "NoArgsIsHelpError":  # a bare `bertfit`: typer has printed the help
            sys.exit(2)
        if hasattr(err, "format_message") and isinstance(getattr(err, "exit_code", None), int):
            # typer/click usage errors; typer's choice check words them as pydantic validators do
            errors.print(f"error: {err.format_message().replace('Value error, ', '')}", markup=False)
            sys.exit(2)
        if debug:
            raise
        report_error(
            f"bertfit: internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback; "
            "please report it)"
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
