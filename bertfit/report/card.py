"""The model card (README.md), in the layout of the Hub's fine-tuned model cards, from the run's files alone."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bertfit.config import SETFIT_PAIR_BUDGET
from bertfit.data.sources import hub_dataset
from bertfit.errors import BertfitError
from bertfit.models import hub_identity
from bertfit.records import METRIC_TITLES, inline, markdown_table, probe_line, table_columns, table_rows
from bertfit.runfiles import DataProfile, Eval, Events, Finding, RunMetrics, Scores
from bertfit.tasks import task_for
from bertfit.tasks.profile import summary_lines


def framework_versions() -> dict:
    import tokenizers
    import torch
    import transformers

    import bertfit

    versions = {"Transformers": transformers.__version__, "Pytorch": torch.__version__}
    try:
        import datasets

        versions["Datasets"] = datasets.__version__
    except ImportError:
        pass
    versions.update({"Tokenizers": tokenizers.__version__, "bertfit": bertfit.__version__})
    return versions


def setfit_hyperparameters(cfg) -> list[str]:
    """In SetFit's TrainingArguments' words."""
    return [
        "method: setfit (contrastive training of the encoder on example pairs, then a logistic-regression head on "
        "its mean-pooled embeddings; Tunstall et al. 2022)",
        f"body_learning_rate: {cfg.setfit_lr:g}",
        "batch_size: 16 pairs",
        f"max_pairs: {cfg.setfit_pairs or f'SetFit sampling, at most {SETFIT_PAIR_BUDGET:,}'} (sampling_strategy: "
        "oversampling, num_epochs: 1)",
        "warmup_proportion: 0.1; lr_scheduler_type: linear",
        "loss: CosineSimilarityLoss",
        f"head: {'one-vs-rest ' if task_for(cfg).decides_by_threshold else ''}LogisticRegression (scikit-learn)",
        f"seed: {cfg.seed}",
        f"max_length: {cfg.max_length}",
        f"precision: {cfg.precision}",
    ]


def hyperparameters(cfg, device: str) -> list[str]:
    """In the wording of the seeds' (HF Trainer) model cards; `device` is where the run trained."""
    if cfg.method == "setfit":
        return setfit_hyperparameters(cfg)
    lines = [
        f"learning_rate: {cfg.lr:g}",
        f"train_batch_size: {cfg.batch_size}",
        f"eval_batch_size: {cfg.eval_batch}",
        f"seed: {cfg.seed}",
    ]
    if cfg.world_size > 1:
        lines += [
            f"distributed_type: {'multi-GPU' if device.startswith('cuda') else 'multi-CPU (gloo)'}",
            f"num_devices: {cfg.world_size}",
        ]
    if cfg.grad_accum > 1:
        lines.append(f"gradient_accumulation_steps: {cfg.grad_accum}")
    if cfg.effective_batch_size() != cfg.batch_size:
        lines.append(
            f"total_train_batch_size: {cfg.effective_batch_size()} (train_batch_size is per device: "
            f"{cfg.batch_size} × {cfg.world_size} devices × {cfg.grad_accum} accumulation steps)"
        )
    lines += [
        f"optimizer: Adam with betas=({cfg.adam_beta1},{cfg.adam_beta2}) and epsilon={cfg.adam_epsilon:.0e}",
        f"lr_scheduler_type: {cfg.scheduler}",
    ]
    if cfg.warmup_steps or cfg.warmup_ratio:
        lines.append(
            f"lr_scheduler_warmup_{'steps' if cfg.warmup_steps else 'ratio'}: {cfg.warmup_steps or cfg.warmup_ratio}"
        )
    lines.append(f"training_steps: {cfg.max_steps}" if cfg.max_steps else f"num_epochs: {cfg.epochs:g}")
    if cfg.early_stopping:
        lines.append(f"early_stopping_patience: {cfg.early_stopping} evaluations of {cfg.metric_for_best}")
    if cfg.weight_decay:
        lines.append(f"weight_decay: {cfg.weight_decay:g}")
    if cfg.clip_norm:
        lines.append(f"max_grad_norm: {cfg.clip_norm:g}")
    if isinstance(cfg.class_weights, list):
        weights = ", ".join(
            f"{inline(name)} {w:g}" for name, w in zip(cfg.label_names or [], cfg.class_weights, strict=False)
        )
        lines.append(f"class_weights: {weights} (cross-entropy weighted by class; per-class recall below)")
    if cfg.precision in ("fp16", "bf16"):
        lines.append(f"mixed_precision_training: Native AMP ({cfg.precision}; fp32 master weights)")
    else:
        lines.append("training_precision: float32")
    lines += [
        f"max_length: {cfg.max_length} (truncation: {cfg.truncation})",
        f"padding: {cfg.padding}",
        f"torch_compile: {bool(cfg.compile)}",
    ]
    if cfg.gradient_checkpointing:
        lines.append("gradient_checkpointing: true")
    if cfg.lora:
        lines.append(
            f"lora: rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g}, dropout {cfg.lora_dropout:g}, "
            f"targets {', '.join(cfg.lora_targets) if cfg.lora_targets else 'peft default'} (peft); saved "
            + ("merged into the weights" if cfg.lora_save == "merged" else "as the adapter only")
        )
    return lines


# The Hub's metric ids (evaluate's names); macro averages are the same metric with an argument.
HUB_METRICS = {
    "accuracy": ("accuracy", None),
    "f1": ("f1", None),
    "precision": ("precision", None),
    "recall": ("recall", None),
    "f1_macro": ("f1", {"average": "macro"}),
    "precision_macro": ("precision", {"average": "macro"}),
    "recall_macro": ("recall", {"average": "macro"}),
    "matthews": ("matthews_correlation", None),
    "micro_f1": ("f1", {"average": "micro"}),
    "macro_f1": ("f1", {"average": "macro"}),
    "micro_precision": ("precision", {"average": "micro"}),
    "micro_recall": ("recall", {"average": "micro"}),
    "subset_accuracy": ("accuracy", None),
    "pearson": ("pearsonr", None),
    "spearman": ("spearmanr", None),
    "mse": ("mse", None),
}


def front_matter(cfg, dataset: str, shown: Scores, result_split: str, metric_names: list[str]) -> str:
    """`shown`: the scores of `result_split` the model-index reports."""
    # The card's YAML header is built by huggingface_hub, so the Hub reads its model-index as written.
    from huggingface_hub import EvalResult, ModelCardData

    base, license_id = hub_identity(cfg.model)
    task = task_for(cfg)
    hub = hub_dataset(dataset)
    dataset_id, dataset_config = hub if hub else (dataset, None)
    split = cfg.test_split if result_split == "test" else cfg.eval_split
    results = [
        EvalResult(
            task_type=task.pipeline_tag,
            task_name=task.pipeline_tag.replace("-", " ").title(),
            dataset_type=dataset_id,
            dataset_name=dataset,
            dataset_config=dataset_config,
            dataset_split=split,
            metric_type=HUB_METRICS.get(name, (name, None))[0],
            metric_args=HUB_METRICS.get(name, (name, None))[1],
            metric_name=METRIC_TITLES.get(name, name),
            metric_value=round(shown.metric(name), 4),
        )
        for name in metric_names
    ]
    data = ModelCardData(
        library_name="setfit" if cfg.method == "setfit" else "transformers",
        license=license_id or "other",
        base_model=base,
        pipeline_tag=task.pipeline_tag,
        tags=["bertfit", task.pipeline_tag],
        datasets=[dataset_id] if hub else None,  # a local file or folder has no Hub id to name
        metrics=sorted({HUB_METRICS.get(name, (name, None))[0] for name in metric_names}),
        model_name=Path(cfg.output).name,
        eval_results=results,
    )
    return f"---\n{data.to_yaml()}\n---"


def early_stop_line(cfg, summary: RunMetrics, evals: list[Eval]) -> str | None:
    """The card's and the console's sentence for a run that early stopping ended."""
    if summary.stop_reason != "early_stopping" or not evals:
        return None
    last = evals[-1]
    return (
        f"Training stopped early at step {last.step} (epoch {last.epoch:.2f} of {cfg.epochs:g}): "
        f"{summary.metric_for_best} did not improve for {cfg.early_stopping} evaluations after step "
        f"{summary.best_step} (early_stopping: {cfg.early_stopping})."
    )


def intended_uses(cfg, dataset: str, sizes: str) -> tuple[str, list[str]]:
    """What the model is for (a paragraph), and the limits its training implies (bullets), in plain words."""
    task = task_for(cfg)
    tag = task.pipeline_tag
    does = inline(task.does("text pair" if len(cfg.text_columns) > 1 else "text"))
    if cfg.method == "setfit":
        load = (
            "Load it with `setfit.SetFitModel.from_pretrained(...)` or `bertfit predict` (and `bertfit serve`, "
            "`bertfit export`); `transformers.pipeline()` cannot, having no mean-pooling head (the encoder alone is "
            "in `body/`)."
        )
    else:
        load = (
            f'Load it with `transformers.pipeline("{tag}", model=...'
            f"{', top_k=None' if task.decides_by_threshold else ''})` or `bertfit predict`."
        )
    return (
        f"This model {does}, as learned from {dataset} ({sizes}). {load}"
        + (
            " The pipeline gives each label's probability; a label applies at or above its threshold, chosen on "
            "validation and saved in config.json as `bertfit_thresholds` (`bertfit predict` applies them)."
            if task.decides_by_threshold and cfg.method != "setfit"
            else ""
        )
        + (
            " This folder holds the LoRA adapter alone (lora_save: adapter): load it onto the base model with "
            "`peft.AutoPeftModelForSequenceClassification.from_pretrained(...)` or `bertfit predict`."
            if cfg.lora and cfg.lora_save == "adapter"
            else ""
        ),
        [
            f"It knows only what {dataset} shows: texts from other domains, periods or languages may be scored with "
            "confidence and still wrongly; check it on your own data (`bertfit eval RUN --data YOURS`) before relying "
            "on it.",
            (
                f"Inputs longer than {cfg.max_length} tokens are read as overlapping windows ({cfg.stride} tokens "
                f"of overlap) whose predictions are pooled ({cfg.window_pooling} of the logits); the data profile "
                "below says how many training examples were windowed."
                if cfg.truncation == "windows"
                else f"Inputs longer than {cfg.max_length} tokens are cut ({cfg.truncation}); the data profile below "
                "says how many training examples were."
            ),
            "Scores are the model's probabilities, not calibrated confidences; the labels carry the biases of "
            "whoever wrote them.",
        ],
    )


@dataclass
class CardData:
    """Everything the model card says, as data: what `card_data` reads from a run's files, and `render` lays out
    through the template `card.md.j2` (setfit's ModelCardData and template are the model). Text from the data
    (labels, columns, notes, findings) is already made safe for one markdown line."""

    front_matter: str  # the YAML header, built by huggingface_hub
    title: str
    base: str
    dataset: str
    result_split: str
    results: list[tuple[str, float]]  # (metric title, value), the loss first
    description: list[str]  # "Model description" bullets
    uses: str  # "Intended uses & limitations": what the model is for
    limits: list[str]  # and the limits its training implies
    data: list[str]  # "Training and evaluation data" bullets
    profile: list[str]  # data profile lines
    hyperparameters: list[str]
    results_table: str
    kept: str | None  # which step's weights were kept
    probe: str | None  # the frozen-probe baseline beside the results
    stopped: str | None  # why training stopped early
    train_accuracy_table: str | None
    task_tables: list[tuple[str, str]]  # (title, table): the task kind's own detail
    mislabeled: tuple[str, str] | None  # (what was found, table of the lowest margins)
    hardware: list[str]
    findings: list[dict]
    healthy: bool  # no warning or error among the findings
    plots: list[tuple[str, str]]  # (name, path)
    versions: dict[str, str]


def card_data(
    cfg,
    events: Events,
    summary: RunMetrics,
    profile: DataProfile | None,
    findings: list[Finding],
    plots: list[str],
    versions: dict,
) -> CardData:
    start = events.start
    if start is None:
        raise BertfitError("the run's log.jsonl has no start event; rerun the training")
    dataset = start.dataset
    evals = events.evals
    result_split, shown = ("test", summary.test) if summary.test is not None else ("validation", summary.validation)
    metric_names = [name for name, value in shown.named().items() if value is not None]
    labels = ", ".join(map(inline, cfg.label_names)) if cfg.label_names else "a real-valued score"
    base = hub_identity(cfg.model)[0]
    sizes = ", ".join(f"{name} {count:,}" for name, count in start.examples.items())
    trainable = (
        [
            f"trainable_parameters: {start.trainable_parameters:,} of {start.parameters:,} "
            f"({start.trainable_parameters / start.parameters:.2%})"
        ]
        if start.trainable_parameters is not None
        else []
    )
    with_accuracy = [e for e in evals if e.train_accuracy is not None]
    mislabeled = summary.mislabeled
    task = task_for(cfg)
    train = summary.train
    uses, limits = intended_uses(cfg, dataset, sizes)
    return CardData(
        front_matter=front_matter(cfg, dataset, shown, result_split, metric_names),
        title=Path(cfg.output).name,
        base=base,
        dataset=dataset,
        result_split=result_split,
        results=[("Loss", shown.loss)] + [(METRIC_TITLES.get(m, m), shown.metric(m)) for m in metric_names],
        description=[
            f"Base model: {base} (`--model {cfg.model}`)",
            f"Task: {cfg.task}",
            f"Labels ({len(cfg.label_names or [])}): {labels}" if cfg.label_names else f"Target: {labels}",
            f"Input: {', '.join(cfg.text_columns)}; target column: {cfg.label_column}",
        ],
        uses=uses,
        limits=limits,
        data=[
            f"Dataset: {dataset}; examples used: {sizes}",
            f"Splits: train = `{cfg.train_split}`, validation = `{cfg.eval_split}`"
            + (f", test = `{cfg.test_split}`" if cfg.test_split not in (None, "none") else ""),
            *(f"Note: {note}" for note in start.notes),
        ],
        profile=[inline(line) for line in summary_lines(profile)] if profile else [],
        hyperparameters=hyperparameters(cfg, start.device) + trainable,
        results_table=markdown_table(table_columns(evals), table_rows(evals)),
        kept=(
            f"The weights kept are those of step {summary.kept_step} (best {summary.metric_for_best} "
            f"{summary.best_metric:.4f} at step {summary.best_step})."
            if summary.best_metric is not None
            else None
        ),
        probe=inline(probe_line(summary.probe)) + "." if summary.probe is not None else None,
        stopped=early_stop_line(cfg, summary, evals),
        train_accuracy_table=markdown_table(
            ["Epoch", "Step", "Training Loss", "Training Accuracy", "Validation Loss", "Validation Accuracy"],
            [
                [
                    f"{e.epoch:.2f}",
                    str(e.step),
                    f"{e.train_loss:.4f}",
                    f"{e.train_accuracy:.4f}",
                    f"{e.metrics.loss:.4f}",
                    f"{_or_nan(e.metrics.metric('accuracy')):.4f}",
                ]
                for e in with_accuracy
            ],
        )
        if with_accuracy
        else None,
        task_tables=[
            (title.format(split=result_split), markdown_table(columns, rows))
            for title, columns, rows in task.result_tables(shown)  # each kind's own detail
        ],
        mislabeled=(
            (
                f"{mislabeled.flagged:,} of {mislabeled.examined:,} training examples look mislabeled: the model "
                f"kept preferring another label ({mislabeled.method}). The most contradicted "
                f"{len(mislabeled.lowest)} (all of them are in `mislabeled.jsonl`):",
                markdown_table(
                    ["Row", "Text", "Label", "Looks like", "Margin"],
                    [
                        [str(e.row), text[:80], label, suggested, f"{e.margin:.2f}"]
                        for e in mislabeled.lowest
                        for text, label, suggested in [task.shown_review(e.text, e.label, e.suspected, e.words)]
                    ],
                ),
            )
            if mislabeled is not None and mislabeled.lowest
            else None
        ),
        hardware=[
            f"Hardware: {start.hardware}",
            f"Training: {train.train_seconds:.1f} s for {train.steps} steps, {train.samples_per_second:.1f} "
            f"samples/s, {train.tokens_per_second:.0f} real tokens/s; padding {train.padding_ratio:.1%} of "
            "the tokens computed",
            *(
                [
                    f"Model FLOP utilisation: {train.mfu:.1%} of the GPU's {train.peak_flops / 1e12:.0f} "
                    "TFLOP/s dense bf16 peak"
                ]
                if train.mfu is not None
                else []
            ),
            f"Tokenization: {train.tokenize_seconds:.1f} s (cached for reruns)",
        ],
        findings=[
            {**f.dump(), "evidence": inline(f.evidence), "advice": inline(f.advice), "severity": f.severity.upper()}
            for f in findings
        ],
        healthy=not any(f.severity in ("warning", "error") for f in findings),
        plots=[(Path(p).stem, p) for p in plots],
        versions=versions,
    )


def render(data: CardData) -> str:
    """The card's text: its data through the template."""
    import jinja2

    template = resources.files("bertfit.report").joinpath("card.md.j2").read_text(encoding="utf-8")
    environment = jinja2.Environment(keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(card=data)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def model_card(
    cfg, events: Events, summary: RunMetrics, profile: DataProfile | None, findings: list[Finding], plots: list[str]
) -> str:
    return render(card_data(cfg, events, summary, profile, findings, plots, framework_versions()))
