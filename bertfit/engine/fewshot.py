"""`method: setfit`: SetFit's few-shot recipe (Tunstall et al. 2022) on bertfit's features and loop.

The encoder is first trained contrastively on pairs of training examples (cosine similarity of their mean-pooled
embeddings pulled to 1 for the same label, 0 for different ones: sentence-transformers' CosineSimilarityLoss), then
a logistic regression is fitted on its embeddings. The pairs are the `setfit` library's (its ContrastiveDataset,
the same sampling as `setfit.Trainer`); the training steps are bertfit's own, on the tokens it already cached,
each example of a step batch embedded once however many pairs it is in (the library embeds each side of each
pair); about twice as fast as the library on 2 CPU cores (benchmarks/small_data.py).

The model is kept as SetFit saves one, so `setfit.SetFitModel.from_pretrained(RUN)` loads it: the encoder and
tokenizer in `body/`, the sentence-transformers pooling module, `config_setfit.json` and the fitted head as
`model_head.pkl`. bertfit itself reads the head from `head.safetensors` (the same weights as a linear layer: it
never unpickles a file) and runs it as MeanPooledClassifier, called as a transformers model is, so evaluation,
predict, serve and export take their one path. The run folder has no config.json of its own, so that
`transformers.pipeline()`, which has no mean-pooling head, refuses it rather than loading a random head.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from bertfit.engine.probe import embed
from bertfit.errors import BertfitError
from bertfit.models import Pooling, pooling
from bertfit.tasks import Features, Task

BODY = "body"
POOLING = "1_Pooling"
NORMALIZE = "2_Normalize"
SETFIT_CONFIG = "config_setfit.json"
SETFIT_HEAD = "model_head.pkl"
HEAD_WEIGHTS = "head.safetensors"
PAIRS_PER_STEP = 16  # SetFit's default batch size
EMBED_CHUNK = 8  # examples embedded together within a step (sorted by length): little padding, matrices still full
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
WARMUP = 0.1  # SetFit's warmup_proportion
WEIGHT_DECAY = 0.01  # SetFit's l2_weight, which its trainer gives the encoder's AdamW
# The library's pair sampler walks every pair of examples: past a few thousand that is the wrong method anyway.
MAX_ROWS = 4_096


class MeanPooledClassifier(torch.nn.Module):
    """A sentence-embedding encoder (the mean of its token vectors, as sentence-transformers pools, scaled to unit
    length where the model was trained so) under a linear head: the model `method: setfit` trains. `estimator` is
    the fitted scikit-learn head the linear layer copies, kept for SetFit's own file."""

    def __init__(self, encoder: torch.nn.Module, outputs: int, normalize: bool):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.pooling = Pooling("mean", normalize)
        self.head = torch.nn.Linear(encoder.config.hidden_size, outputs)
        self.estimator = None

    @property
    def base_model(self) -> torch.nn.Module:
        return self.encoder

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.pooling(hidden, attention_mask)

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=self.head(self.embed(input_ids, attention_mask, token_type_ids)))


def check(task: Task, train_rows: int) -> None:
    if not task.few_shot:
        raise BertfitError(
            f"method setfit trains classifiers (single- or multi-label); this is a {task.kind} task: use method "
            "finetune"
        )
    if train_rows > MAX_ROWS:
        raise BertfitError(
            f"method setfit is for few-shot data (up to {MAX_ROWS:,} training examples; this run has "
            f"{train_rows:,}): use method finetune, or max_train_samples"
        )


def first_features(features: Features) -> np.ndarray:
    """Each example's first feature (its first window, where a long text is read as several)."""
    return np.unique(np.asarray(features.example_ids), return_index=True)[1]


def pairs(task: Task, features: Features, budget: int | None, seed: int) -> np.ndarray:
    """(left, right, target) rows: example indices and 1.0 for the same label (sharing one, for multi-label), 0.0
    for different ones, as the setfit library samples them ("oversampling": each pair of examples once, the rarer
    kind repeated to match the other), at most `budget` pairs, in a seeded order."""
    from setfit.sampler import ContrastiveDataset

    labels = task.example_labels(features)
    multilabel = labels.ndim == 2
    dataset = ContrastiveDataset(
        list(range(len(labels))),
        list(labels),
        multilabel=multilabel,
        max_pairs=budget if budget is not None else -1,
    )
    rows = np.asarray([(p["sentence_1"], p["sentence_2"], p["label"]) for p in dataset], dtype=np.float64)
    if budget is not None:
        rows = rows[:budget]
    return rows[np.random.default_rng(seed).permutation(len(rows))]


def steps(pair_count: int) -> int:
    return math.ceil(pair_count / PAIRS_PER_STEP)


def pair_loss(model: MeanPooledClassifier, task: Task, features: Features, batch: np.ndarray, pad_id: int):
    """sentence-transformers' CosineSimilarityLoss over one batch of pairs (summed), and the (real, computed)
    token counts. Each example is embedded once, in chunks of similar lengths: random pairs mix short texts with
    long ones, and one padded batch of them was 60% padding on SST-2."""
    device = next(model.parameters()).device
    left, right = batch[:, 0].astype(np.int64), batch[:, 1].astype(np.int64)
    examples, positions = np.unique(np.concatenate([left, right]), return_inverse=True)
    rows = first_features(features)[examples]
    order = np.argsort(features.lengths[rows], kind="stable")
    vectors, tokens, computed = [], 0, 0
    for chunk in np.array_split(order, math.ceil(len(order) / EMBED_CHUNK)):
        collated = task.collate(features, rows[chunk], pad_id)
        inputs = {k: v.to(device, non_blocking=True) for k, v in collated.items() if k in ENCODER_INPUTS}
        vectors.append(model.embed(**inputs).float())
        lengths = features.lengths[rows[chunk]]  # counted on the host: no wait for the device inside a step
        tokens, computed = tokens + int(lengths.sum()), computed + len(chunk) * int(lengths.max())
    embedded = torch.empty((len(examples), vectors[0].shape[1]), device=device)
    embedded = embedded.index_copy(0, torch.as_tensor(order, device=device), torch.cat(vectors))
    u, v = embedded[positions[: len(left)]], embedded[positions[len(left) :]]
    target = torch.as_tensor(batch[:, 2], dtype=torch.float32, device=device)
    similarity = torch.nn.functional.cosine_similarity(u, v)
    return ((similarity - target) ** 2).sum(), tokens, computed


def fit_head(
    model: MeanPooledClassifier, task: Task, features: Features, device: torch.device, precision: str, pad_id: int
) -> None:
    """SetFit's second phase: the task's logistic regression fitted on the trained encoder's embeddings of every
    training example, copied into the linear head."""
    labels = task.example_labels(features)
    examples = np.arange(len(labels))
    vectors = embed(model, task, features, examples, device, precision, pad_id, model.pooling)
    estimator = task.probe_model()
    estimator.fit(vectors, labels)
    weight, bias = task.linear_head(estimator, vectors.shape[1])
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        model.head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    model.estimator = estimator


def save(model: MeanPooledClassifier, tokenizer, folder: Path, label_names: list[str], max_length: int) -> None:
    """SetFit's layout (sentence-transformers' modules, config_setfit.json, model_head.pkl), the encoder in body/."""
    import joblib
    from safetensors.torch import save_file

    body = folder / BODY
    model.encoder.save_pretrained(body)
    tokenizer.save_pretrained(body)
    (body / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length, "do_lower_case": False}))
    (folder / POOLING).mkdir()
    (folder / POOLING / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": model.config.hidden_size,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    modules = [
        {"idx": 0, "name": "0", "path": BODY, "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING, "type": "sentence_transformers.models.Pooling"},
    ]
    if model.pooling.normalize:  # a module without weights: sentence-transformers needs no folder for it
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE, "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / SETFIT_CONFIG).write_text(json.dumps({"labels": list(label_names), "normalize_embeddings": False}))
    joblib.dump(model.estimator, folder / SETFIT_HEAD)
    save_file(
        {"weight": model.head.weight.detach().cpu(), "bias": model.head.bias.detach().cpu()}, folder / HEAD_WEIGHTS
    )


def is_setfit(folder: Path) -> bool:
    return (folder / HEAD_WEIGHTS).is_file() and (folder / BODY / "config.json").is_file()


def load(folder: Path, load_encoder) -> MeanPooledClassifier:
    """The saved encoder (through `load_encoder(path)`) under the head's weights."""
    from safetensors.torch import load_file

    head = load_file(str(folder / HEAD_WEIGHTS))
    model = MeanPooledClassifier(load_encoder(str(folder / BODY)), head["weight"].shape[0], pooling(folder).normalize)
    model.head.load_state_dict(head)
    return model
