"""The run's configuration: one typed object, built from defaults, a YAML recipe and overrides, validated once."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from bertfit.errors import BertfitError

# The task kinds a recipe may name: the built-in ones; `bertfit.tasks.register` adds a new kind here too, so that
# a kind is added in its own module and the registry alone.
TASK_KINDS = ["auto", "classification", "multi_label", "regression", "token"]

# method: auto trains the SetFit way up to this many training examples (benchmarks/small_data.py: where SetFit
# beats fine-tuning on SST-2 and TweetEval), and fine-tunes above.
SETFIT_AUTO_ROWS = 512
# SetFit's default pair count grows with the square of the examples (1,024 give 523,776 pairs, hours on a CPU);
# bertfit's default stops at SetFit's own count for 64 examples at its paper's 20 iterations (20 x 64 x 2).
SETFIT_PAIR_BUDGET = 2_560
# Fine-tuning takes at least this many optimizer steps, with warmup, unless the recipe sets epochs or max_steps:
# 3 epochs of 1,024 examples are 192 steps, too few to recover from a fresh head (Mosbach et al. 2021); 400 steps
# with 10% warmup measured +1.3 (SST-2) and +3.3 points (TweetEval) there, 3 seeds (benchmarks/small_data.py).
MIN_FINE_TUNING_STEPS = 400
SHORT_RUN_WARMUP = 0.1
SHORT_RUN_EVALUATIONS = 8  # a short run's epochs are many and brief: it is scored this many times, not each epoch

# Names practitioners bring from the HF Trainer and from recipe posts, mapped to ours.
KEY_ALIASES = {
    "learning_rate": "lr",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "lr_scheduler_type": "scheduler",
    "max_grad_norm": "clip_norm",
    "gradient_accumulation_steps": "grad_accum",
    "eval_steps": "eval_every",
    "max_seq_length": "max_length",
    "max_predict_samples": "max_test_samples",
    "text_column": "text_columns",
    "model_name_or_path": "model",
    "dataset": "data",
    "output_dir": "output",
}

# Fields that change the numbers a run produces: resuming with any of them different is refused.
# RESULT_FIELDS (the fields that change the numbers a run produces) is derived from the fields themselves, below.


def recipe_field(group: str, results: bool) -> dict:
    """What every recipe field says of itself: its group in the vocabulary (data, optimisation, evaluation, speed,
    tracking, reliability, scale-out), and whether it changes the numbers a run produces (then resuming with it
    changed is refused). A field without it fails `tests/test_config.py`."""
    return {"group": group, "changes_results": results}


class Config(BaseModel):
    """Everything a run needs. `auto`/None fields are filled in by `resolve` steps and saved resolved."""

    # No NaN or infinity anywhere: `lr: .inf` would train a model of NaNs and exit 0.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # What to train on what
    model: str = Field(
        "bert-base-uncased",
        description="hub id, local folder, or 'minilm'",
        json_schema_extra=recipe_field("data", results=True),
    )
    data: str | None = Field(
        None,
        description="hub id, BERTFIT_DATA_DIR mirror name, folder of split files, or a file",
        json_schema_extra=recipe_field("data", results=True),
    )
    output: str | None = Field(
        None, description="run folder to write", json_schema_extra=recipe_field("data", results=False)
    )
    task: str = Field(
        "auto",
        description="what to learn: auto (decided from the data), classification, multi_label, regression, token",
        json_schema_extra=recipe_field("data", results=True),
    )
    text_columns: list[str] | None = Field(
        None,
        description="text column(s); give two for text pairs [default: detected]",
        json_schema_extra=recipe_field("data", results=True),
    )
    label_column: str | None = Field(
        None,
        description="label (or tag) column [default: detected]",
        json_schema_extra=recipe_field("data", results=True),
    )
    label_names: list[str] | None = Field(
        None,
        description="comma-separated names for integer labels",
        json_schema_extra=recipe_field("data", results=True),
    )
    label_columns: list[str] | None = Field(
        None,
        description="multi-label: several 0/1 columns, one per label (e.g. sports,politics)",
        json_schema_extra=recipe_field("data", results=True),
    )
    label_delimiter: str = Field(
        "|",
        min_length=1,
        description="multi-label: what separates the labels in a text label, as in sports|politics",
        json_schema_extra=recipe_field("data", results=True),
    )
    threshold: Literal["tuned", "per_label"] | float = Field(
        "tuned",
        description="multi-label decision threshold: tuned (one, on validation), per_label (one per label, on "
        "validation) or a probability such as 0.5",
        json_schema_extra=recipe_field("data", results=True),
    )
    corrections: str | None = Field(
        None,
        description="a review/decisions.jsonl of `bertfit review`: its labels corrected and examples dropped in "
        "the training split at load time (refused if the data is not the data reviewed)",
        json_schema_extra=recipe_field("data", results=True),
    )
    train_split: str = Field(
        "train", description="split to train on", json_schema_extra=recipe_field("data", results=True)
    )
    eval_split: str | None = Field(
        None,
        description="split to evaluate on [default: validation, else carved off train]",
        json_schema_extra=recipe_field("data", results=True),
    )
    test_split: str | None = Field(
        None,
        description="split scored at the end; 'none' for no test split [default: test, when there is one]",
        json_schema_extra=recipe_field("data", results=False),
    )
    validation_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="share of train carved off when there is no validation split",
        json_schema_extra=recipe_field("data", results=True),
    )
    max_train_samples: int | None = Field(
        None,
        gt=0,
        description="seeded random subset of the training split",
        json_schema_extra=recipe_field("data", results=True),
    )
    max_eval_samples: int | None = Field(
        None,
        gt=0,
        description="seeded random subset of the validation split",
        json_schema_extra=recipe_field("data", results=True),
    )
    max_test_samples: int | None = Field(
        None,
        gt=0,
        description="seeded random subset of the test split scored at the end (the Trainer's max_predict_samples)",
        json_schema_extra=recipe_field("data", results=True),
    )
    max_length: int | None = Field(
        None,
        ge=8,
        description="max tokens per example [default: the model's own: 512 for BERT, 8,192 for ModernBERT]",
        json_schema_extra=recipe_field("data", results=True),
    )
    truncation: Literal["head", "tail", "head+tail", "windows"] = Field(
        "head",
        description="which part of a longer text to keep; windows: all of it, as overlapping windows whose "
        "predictions are pooled per text",
        json_schema_extra=recipe_field("data", results=True),
    )
    window_pooling: Literal["mean", "max"] = Field(
        "mean",
        description="truncation windows: how a text's window logits become one prediction",
        json_schema_extra=recipe_field("data", results=True),
    )
    label_all_subtokens: bool = Field(
        False,
        description="token task: label every sub-token, not just the first",
        json_schema_extra=recipe_field("data", results=True),
    )
    stride: int = Field(
        32,
        ge=0,
        description="overlap in tokens between windows (token task; truncation windows)",
        json_schema_extra=recipe_field("data", results=True),
    )
    trust_remote_code: bool = Field(
        False,
        description="run the model repository's own code (only for models you trust)",
        json_schema_extra=recipe_field("data", results=False),
    )

    # Optimisation recipe
    method: Literal["auto", "finetune", "setfit"] = Field(
        "auto",
        description="how to train: finetune (the whole model with a classification head), setfit (SetFit's "
        "contrastive training of the encoder on example pairs, then a logistic-regression head: better with a few "
        f"hundred examples), or auto (setfit for classification with up to {SETFIT_AUTO_ROWS:,} training "
        "examples, else finetune)",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    setfit_pairs: int | None = Field(
        None,
        gt=0,
        description="setfit: example pairs to train on [default: SetFit's own count (each pair of examples once, "
        f"the rarer kind, same or different label, repeated to match the other), at most {SETFIT_PAIR_BUDGET:,}]",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    setfit_lr: float = Field(
        2e-5,
        gt=0,
        description="setfit: the encoder's learning rate (SetFit's body_learning_rate)",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    epochs: float = Field(
        3.0,
        gt=0,
        description="passes over the training data",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    max_steps: int | None = Field(
        None,
        gt=0,
        description="optimizer steps; overrides epochs",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    lr: float = Field(
        5e-5, gt=0, description="peak learning rate", json_schema_extra=recipe_field("optimisation", results=True)
    )
    batch_size: int = Field(
        16,
        gt=0,
        description="training batch size per device",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    eval_batch_size: int | None = Field(
        None,
        gt=0,
        description="evaluation batch size [default: max(64, 2 × batch size)]",
        json_schema_extra=recipe_field("optimisation", results=False),
    )
    seed: int = Field(
        42,
        ge=0,
        lt=2**32,
        description="seed for data order, subsets and initialisation",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    adam_beta1: float = Field(
        0.9, ge=0, lt=1, description="AdamW beta1", json_schema_extra=recipe_field("optimisation", results=True)
    )
    adam_beta2: float = Field(
        0.999, ge=0, lt=1, description="AdamW beta2", json_schema_extra=recipe_field("optimisation", results=True)
    )
    adam_epsilon: float = Field(
        1e-8, gt=0, description="AdamW epsilon", json_schema_extra=recipe_field("optimisation", results=True)
    )
    weight_decay: float = Field(
        0.0,
        ge=0,
        description="AdamW weight decay (not on biases and LayerNorm)",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    scheduler: Literal["linear", "constant", "cosine"] = Field(
        "linear",
        description="learning-rate schedule after warmup",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    warmup_ratio: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the steps spent warming up",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        description="warmup steps; overrides warmup_ratio",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="auto: bf16 on GPUs and CPUs that have it, else fp16 on GPUs, fp32 on CPUs",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    clip_norm: float | None = Field(
        1.0,
        ge=0,
        description="gradient clipping norm; 0 disables",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    grad_accum: int = Field(
        1, gt=0, description="gradient accumulation steps", json_schema_extra=recipe_field("optimisation", results=True)
    )
    class_weights: Literal["balanced"] | list[float] | None = Field(
        None,
        description="classification: weight each class in the loss; 'balanced' (n / (classes × count), "
        "as scikit-learn's) or one weight per class, comma-separated",
        json_schema_extra=recipe_field("optimisation", results=True),
    )

    # Parameter-efficient fine-tuning (LoRA, through peft)
    lora: bool = Field(
        False,
        description="train low-rank adapters (LoRA) and the head instead of every weight",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    lora_rank: int = Field(
        8, gt=0, description="LoRA rank r", json_schema_extra=recipe_field("optimisation", results=True)
    )
    lora_alpha: float = Field(
        16.0,
        gt=0,
        description="LoRA scaling alpha (the update is scaled by alpha / r)",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    lora_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="dropout on the LoRA input",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    lora_targets: list[str] | None = Field(
        None,
        description="layers to adapt, e.g. query,value [default: peft's choice for the model type]",
        json_schema_extra=recipe_field("optimisation", results=True),
    )
    lora_save: Literal["merged", "adapter"] = Field(
        "merged",
        description="merged: adapters folded into the weights (a plain model); adapter: the adapter only",
        json_schema_extra=recipe_field("optimisation", results=False),
    )

    # Evaluation and model selection
    eval_every: int | Literal["epoch"] = Field(
        "epoch",
        description="evaluate every N steps, or 'epoch'",
        json_schema_extra=recipe_field("evaluation", results=False),
    )
    log_every: int | None = Field(
        None,
        gt=0,
        description="log the training loss every N steps [default: about 25 points per run, at most every 50 steps]",
        json_schema_extra=recipe_field("evaluation", results=False),
    )
    metrics: list[Literal["matthews"]] = Field(
        [], description="extra metrics (matthews)", json_schema_extra=recipe_field("evaluation", results=False)
    )
    metric_for_best: str | None = Field(
        None,
        description="metric that picks the best checkpoint [default: the task's main metric]",
        json_schema_extra=recipe_field("evaluation", results=False),
    )
    early_stopping: int | None = Field(
        None,
        gt=0,
        description="stop after this many evaluations without improvement",
        json_schema_extra=recipe_field("evaluation", results=False),
    )
    keep_best: bool = Field(
        True,
        description="end with the best checkpoint's weights, not the last",
        json_schema_extra=recipe_field("evaluation", results=False),
    )
    probe: bool = Field(
        True,
        description="fit a linear model on the frozen encoder's pooled embeddings (up to 2,000 examples a split) "
        "before training: the baseline fine-tuning must beat, beside it in the metrics, the card and the doctor",
        json_schema_extra=recipe_field("evaluation", results=False),
    )
    find_mislabeled: bool = Field(
        True,
        description="list the training examples whose labels look wrong, from the margins and probabilities the "
        "model gives them during training (classification, multi-label, and token classification: per word's tag)",
        json_schema_extra=recipe_field("evaluation", results=False),
    )

    # Speed (changes numerics slightly; recorded in the run)
    padding: Literal["bucket", "dynamic", "none", "packed"] = Field(
        "bucket",
        description="bucket (length-grouped batches), dynamic, none (pad to max_length), or packed "
        "(padding-free: a step's examples as one token stream, attention kept inside each, in FlexAttention on a "
        "GPU; BERT, RoBERTa, DistilBERT, ELECTRA)",
        json_schema_extra=recipe_field("speed", results=True),
    )
    compile: bool | None = Field(
        None,
        description="torch.compile the model [default: on GPU only]",
        json_schema_extra=recipe_field("speed", results=True),
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto",
        description="where to train: auto picks a CUDA GPU, else Apple's mps, else the CPU",
        json_schema_extra=recipe_field("speed", results=False),
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass: less memory, about a third slower",
        json_schema_extra=recipe_field("speed", results=False),
    )

    # Experiment tracking (rank 0 only)
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        [],
        description="trackers to log to: tensorboard (RUN/tensorboard), mlflow; comma-separated [default: none]",
        json_schema_extra=recipe_field("tracking", results=False),
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow store, e.g. sqlite:///mlflow.db or http://host:5000 [default: MLFLOW_TRACKING_URI]",
        json_schema_extra=recipe_field("tracking", results=False),
    )
    mlflow_experiment: str = Field(
        "bertfit",
        description="MLflow experiment the run is logged under",
        json_schema_extra=recipe_field("tracking", results=False),
    )

    # Reliability
    checkpoint_every: int | None = Field(
        None,
        gt=0,
        description="also checkpoint every N steps (always at each evaluation)",
        json_schema_extra=recipe_field("reliability", results=False),
    )
    keep_checkpoints: int = Field(
        2,
        ge=1,
        description="newest checkpoints kept (the best is kept too)",
        json_schema_extra=recipe_field("reliability", results=False),
    )
    max_bad_steps: int = Field(
        20,
        gt=0,
        description="consecutive non-finite steps before the run stops",
        json_schema_extra=recipe_field("reliability", results=False),
    )

    # Scale-out: filled from the launcher, not set by hand
    world_size: int = Field(
        1,
        gt=0,
        description="processes training together (set by --nproc/torchrun)",
        json_schema_extra=recipe_field("scale-out", results=True),
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads `batch_size: true` as 1; a yes/no where a number belongs is a mistake to name."""
        annotation = str(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and "bool" not in annotation:
            kind = "a number" if "int" in annotation or "float" in annotation else "a value"
            raise ValueError(f"takes {kind}, not {str(value).lower()}")
        return value

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASK_KINDS:
            raise ValueError(f"is not a task kind; choose one of {', '.join(TASK_KINDS)}")
        return value

    @field_validator("output", mode="before")
    @classmethod
    def _home(cls, value: Any) -> Any:
        """`~/runs/x` in a recipe means the home folder, as it does in a shell."""
        return os.path.expanduser(value) if isinstance(value, str) else value

    @field_validator("eval_every", mode="before")
    @classmethod
    def _eval_every(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() != "epoch":
            try:
                value = int(value)
            except ValueError:
                raise ValueError("must be a positive number of steps or 'epoch'") from None
        if isinstance(value, (int, float)) and value <= 0:
            raise ValueError("must be a positive number of steps or 'epoch'")
        return value

    @field_validator(
        "text_columns", "label_names", "label_columns", "lora_targets", "metrics", "report_to", mode="before"
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("class_weights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() != "balanced":
            try:
                value = [float(part) for part in value.split(",") if part.strip()]
            except ValueError:
                raise ValueError("must be 'balanced' or numbers, one per class (e.g. 1,4)") from None
        if isinstance(value, list) and (not value or any(not 0 < float(w) < float("inf") for w in value)):
            raise ValueError("needs one positive weight per class")
        return value

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() not in ("tuned", "per_label"):
            try:
                value = float(value)
            except ValueError:
                raise ValueError("must be 'tuned', 'per_label' or a probability between 0 and 1") from None
        if isinstance(value, (int, float)) and not 0 < value < 1:
            raise ValueError("must be 'tuned', 'per_label' or a probability between 0 and 1")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.text_columns is not None and not 1 <= len(self.text_columns) <= 2:
            raise ValueError("text_columns takes one column, or two for text pairs")
        if self.label_columns is not None and len(self.label_columns) < 2:
            raise ValueError("label_columns takes two or more 0/1 columns, one per label")
        return self

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or max(64, 2 * self.batch_size)

    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def canonical_key(key: object) -> str:
    if not isinstance(key, str):
        raise BertfitError(f"recipe key {key!r} is not a name; recipe keys are words such as 'lr' or 'epochs'")
    key = key.strip().replace("-", "_")
    key = KEY_ALIASES.get(key, key)
    if key not in Config.model_fields:
        close = difflib.get_close_matches(key, list(Config.model_fields) + list(KEY_ALIASES), n=1, cutoff=0.6)
        hint = f"; did you mean '{KEY_ALIASES.get(close[0], close[0])}'?" if close else "; see `bertfit train --help`"
        raise BertfitError(f"unknown recipe key '{key}'{hint}")
    return key


def parse_set_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs, with values read as YAML scalars (so 3 is an int, 2e-5 a float)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise BertfitError(f"--set expects key=value, got '{pair}'")
        key, raw = pair.split("=", 1)
        if not raw.strip():
            raise BertfitError(f"--set {key}= has no value; write --set {key}=VALUE (or leave the option out)")
        overrides[key] = _yaml_scalar(raw)
    return overrides


def _yaml_scalar(raw: str) -> Any:
    """YAML 1.1 reads `3e-5` as a string; recipes mean the number."""
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML lets a later key silently replace an earlier one; in a recipe that hides a mistake."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' appears twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


# A recipe's search space for `bertfit sweep` (`sweep: {lr: {low: 1e-5, high: 1e-4, log: true}, ...}`).
SWEEP_BLOCK = "sweep"


def load_recipe(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    recipe_path = Path(path)
    if not recipe_path.is_file():
        what = (
            "is a folder" if recipe_path.is_dir() else "is not a regular file" if recipe_path.exists() else "not found"
        )
        raise BertfitError(f"recipe file '{path}' {what}; give the path to a YAML recipe (see recipes/)")
    try:
        content = yaml.load(recipe_path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        line = recipe_path.read_bytes()[: err.start].count(b"\n") + 1
        raise BertfitError(
            f"recipe '{path}' is not UTF-8 text (byte 0x{err.object[err.start]:02x} on line {line}); "
            "re-save it as UTF-8"
        ) from None
    except OSError as err:
        raise BertfitError(f"recipe '{path}' cannot be read: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BertfitError(f"recipe '{path}' is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise BertfitError(f"recipe '{path}' must be a mapping of keys to values, got {type(content).__name__}")
    return content


def build_config(recipe: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the recipe, then overrides (None values mean 'not given')."""
    values: dict[str, Any] = {}
    from_recipe = {k: v for k, v in load_recipe(recipe).items() if k != SWEEP_BLOCK}  # the base recipe trains alone
    for where, source in ((f"recipe '{recipe}'", from_recipe), ("the options", overrides or {})):
        given: dict[str, str] = {}  # canonical key -> the name it was given as, within this source
        for key, value in source.items():
            if value is None:
                continue
            canonical = canonical_key(key)
            if canonical in given:
                raise BertfitError(
                    f"{where} sets '{canonical}' twice (as '{given[canonical]}' and '{key}'); keep one of them"
                )
            given[canonical] = key
            values[canonical] = value
    try:
        return Config.model_validate(values)
    except ValidationError as err:
        described: dict[str, str] = {}  # every field's first error, in one line: the whole recipe at once
        for error in err.errors():
            field = str(error["loc"][0]) if error["loc"] else "recipe"  # union members are pydantic's detail
            message = error["msg"].removeprefix("Value error, ")
            shown = f" (got {error['input']!r})" if error.get("input") is not None and error["loc"] else ""
            described.setdefault(field, f"invalid value for '{field}': {message}{shown}")
        raise BertfitError("; ".join(described.values())) from None


# Resuming with any of these different is refused: the fields marked as changing a run's numbers.
RESULT_FIELDS = tuple(
    name for name, field in Config.model_fields.items() if (field.json_schema_extra or {}).get("changes_results")
)
