"""padding: packed — a step's examples as one token stream with a block-diagonal attention mask: the same logits
and gradients as padded batches on tiny BERT, RoBERTa and DistilBERT models, and every example once per epoch."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli, sample_run_args
from safetensors.torch import load_file
from test_train_tiny import log_without_timings

from bertfit import models
from bertfit.tasks import build_task

SMALL = {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "hidden_size": 32}


def tiny(kind: str, task: str, labels: int):
    import transformers

    torch.manual_seed(0)
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    configs = {
        "bert": transformers.BertConfig(vocab_size=30522, **SMALL, **no_dropout),
        "roberta": transformers.RobertaConfig(vocab_size=30522, pad_token_id=1, **SMALL, **no_dropout),
        "electra": transformers.ElectraConfig(vocab_size=30522, embedding_size=32, **SMALL, **no_dropout),
        "distilbert": transformers.DistilBertConfig(
            vocab_size=30522,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            dropout=0.0,
            attention_dropout=0.0,
            seq_classif_dropout=0.0,
        ),
    }
    auto = (
        transformers.AutoModelForTokenClassification
        if task == "token"
        else transformers.AutoModelForSequenceClassification
    )
    config = configs[kind]
    config.num_labels = labels
    return auto.from_config(config).float()


@pytest.mark.parametrize("kind", ["bert", "roberta", "electra", "distilbert"])  # every model type packed supports
@pytest.mark.parametrize("kind_of_task", ["classification", "token"])
def test_packed_logits_and_gradients_equal_padded_ones(kind, kind_of_task, minilm_tokenizer):
    texts = ["a short one", "a much longer example sentence with quite a few more words in it", "mid length text"]
    if kind_of_task == "token":
        frame = pd.DataFrame({"tokens": [t.split() for t in texts], "tags": [["O"] * len(t.split()) for t in texts]})
        frame.loc[1, "tags"][2] = "B-X"
        task = build_task("token", ["tokens"], "tags", ["O", "B-X", "I-X"], 64)
    else:
        frame = pd.DataFrame({"text": texts, "label": [0, 1, 1]})
        task = build_task("classification", ["text"], "label", ["0", "1"], 64)
    features = task.encode(frame, minilm_tokenizer)
    indices = np.array([1, 0, 2])
    model = tiny(kind, kind_of_task, 3 if kind_of_task == "token" else 2).train()

    padded = task.collate(features, indices, pad_id=model.config.pad_token_id or 0)
    labels = padded.pop("labels")
    if kind == "distilbert":
        padded.pop("token_type_ids", None)
    if kind == "roberta":  # position ids as the packed path gives them: counted from padding_idx + 1
        padded["position_ids"] = torch.arange(padded["input_ids"].shape[1])[None] + 2
    reference = model(**padded).logits
    loss = task.loss_sum(reference, labels)
    loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    batch = task.collate_packed(features, indices)
    packed_labels = batch.pop("labels")
    if kind == "distilbert":
        batch.pop("token_type_ids", None)
    logits = models.packed(model, task.labels_tokens)(**batch).logits
    if kind_of_task == "token":  # the stream's tokens, in the padded batch's row order
        lengths = features.lengths[indices]
        rows = torch.cat([reference[r, : lengths[r]] for r in range(len(indices))])[None]
        torch.testing.assert_close(logits, rows, atol=1e-5, rtol=1e-4)
    else:
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-4)
    task.loss_sum(logits, packed_labels).backward()
    for name, parameter in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(parameter.grad, expected[name], atol=1e-5, rtol=1e-3, msg=name)
    assert batch["input_ids"].numel() == int(features.lengths[indices].sum())  # no padding computed


def test_a_packed_run_trains_as_a_padded_one_and_sees_every_example_once(tiny_bert_no_dropout, tmp_path, capsys):
    from bertfit.tasks.base import Task

    seen = []
    original = Task.collate_packed

    def spy(self, features, indices, **kwargs):
        seen.append([int(i) for i in indices])
        return original(self, features, indices, **kwargs)

    base = ["--max-steps", 12, "--eval-every", 6, "--precision", "fp32", "--batch-size", 15, "--lr", "1e-3"]
    dynamic, packed = tmp_path / "dynamic", tmp_path / "packed"
    assert run_cli(sample_run_args(tiny_bert_no_dropout, dynamic, *base, "--padding", "dynamic"), capsys)[0] == 0
    Task.collate_packed = spy
    try:
        assert run_cli(sample_run_args(tiny_bert_no_dropout, packed, *base, "--padding", "packed"), capsys)[0] == 0
    finally:
        Task.collate_packed = original
    # 12 steps of 15: the 180 training examples, each once (batches collated ahead past the last step are not)
    assert sorted(i for batch in seen[:12] for i in batch) == list(range(180))
    for a, b in zip(log_without_timings(dynamic / "log.jsonl"), log_without_timings(packed / "log.jsonl")):
        if a["event"] == "eval":
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
            assert b["metrics"]["loss"] == pytest.approx(a["metrics"]["loss"], rel=1e-4)
    ours, theirs = load_file(packed / "model.safetensors"), load_file(dynamic / "model.safetensors")
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-4) for k in theirs)
    train = json.loads((packed / "metrics.json").read_text())["train"]
    assert train["padding_ratio"] == 0


def test_packing_an_unsupported_model_is_one_line(tmp_path, capsys):
    from conftest import make_tiny_modernbert

    model = make_tiny_modernbert(tmp_path / "modernbert")
    code, _, stderr = run_cli(sample_run_args(model, tmp_path / "run", "--padding", "packed", "--max-steps", 2), capsys)
    assert code == 2 and "padding 'packed' supports bert, distilbert, electra, roberta, xlm-roberta models" in stderr


@pytest.fixture
def fresh_compile():
    """Each test compiles FlexAttention for its own shapes. A shape after the first makes torch recompile with
    dynamic shapes, and inductor's CPU code for dynamic FlexAttention does not compile (torch 2.13: "cur_qSplitSize8
    was not declared"); GPUs generate Triton instead, so this is a CPU test's concern only."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_flex_attention_kernel_equals_the_dense_mask(kind, minilm_tokenizer, fresh_compile):
    """The GPU's packed kernel (FlexAttention with a BlockMask from the example ids) against the dense mask, on the
    CPU, where FlexAttention runs forward only: the same logits for a stream of three examples."""
    texts = ["a short one", "a much longer example sentence with quite a few more words in it", "mid length text"]
    task = build_task("classification", ["text"], "label", ["0", "1"], 64)
    features = task.encode(pd.DataFrame({"text": texts, "label": [0, 1, 1]}), minilm_tokenizer)
    batch = task.collate_packed(features, np.array([1, 0, 2]))
    batch.pop("labels")
    dense_model, flex_model = tiny(kind, "classification", 2).eval(), tiny(kind, "classification", 2).eval()
    with torch.no_grad():
        dense = models.packed(dense_model, per_token=False)(**batch).logits
        flex = models.packed(flex_model, per_token=False, flex=True)(**batch).logits
    assert flex_model.config._attn_implementation == "flex_attention"
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(dense[0], dense[1])  # the examples differ: the mask kept them apart


@pytest.mark.parametrize("kind_of_task", ["classification", "token"])
def test_a_lengthened_stream_changes_no_logit_and_no_loss(kind_of_task, minilm_tokenizer):
    """Compiled runs lengthen the stream to one of a few lengths: the filler is an example of its own that no head
    reads and no loss counts."""
    texts = ["a short one", "a much longer example sentence with quite a few more words in it", "mid length text"]
    if kind_of_task == "token":
        frame = pd.DataFrame({"tokens": [t.split() for t in texts], "tags": [["B-X"] * len(t.split()) for t in texts]})
        task = build_task("token", ["tokens"], "tags", ["O", "B-X", "I-X"], 64)
    else:
        frame = pd.DataFrame({"text": texts, "label": [0, 1, 1]})
        task = build_task("classification", ["text"], "label", ["0", "1"], 64)
    features = task.encode(frame, minilm_tokenizer)
    model = tiny("bert", kind_of_task, 3 if kind_of_task == "token" else 2).eval()
    forward = models.packed(model, task.labels_tokens)
    exact = task.collate_packed(features, np.array([1, 0, 2]))
    longer = task.collate_packed(features, np.array([1, 0, 2]), pad_id=0, pad_to=lambda tokens: tokens + 13)
    assert longer["input_ids"].shape[1] == exact["input_ids"].shape[1] + 13
    with torch.no_grad():
        logits = [forward(**{k: v for k, v in batch.items() if k != "labels"}).logits for batch in (exact, longer)]
        losses = [task.loss_sum(out, batch["labels"]) for out, batch in zip(logits, (exact, longer), strict=True)]
    if kind_of_task == "token":
        logits[1] = logits[1][:, : exact["input_ids"].shape[1]]
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-4)


def test_compiled_packed_streams_take_a_few_lengths():
    from bertfit.config import build_config
    from bertfit.engine.loop import padding_rule

    cfg = build_config(
        None,
        {"model": "minilm", "data": "sst2", "padding": "packed", "compile": True, "batch_size": 16, "max_length": 256},
    )
    rule = padding_rule(cfg, torch.device("cpu"))
    lengths = {rule(tokens) for tokens in range(1, 16 * 256 + 1)}
    assert len(lengths) == 8 and all(length % 128 == 0 for length in lengths)
    assert all(rule(tokens) >= tokens for tokens in range(1, 16 * 256 + 1))


@pytest.mark.parametrize("kind_of_task", ["classification", "token"])
def test_packed_evaluation_equals_padded_evaluation(kind_of_task, minilm_tokenizer, fresh_compile):
    """Evaluation on a GPU packs each batch into a stream in FlexAttention (forward only, so it runs here too):
    the same outputs, example by example, and the same loss as padded batches; every stream one length."""
    from bertfit.engine.evaluation import Scorer, infer

    texts = ["a short one", "a much longer example sentence with quite a few more words in it", "mid length text"]
    texts += ["another sentence of some length", "tiny"]
    if kind_of_task == "token":
        tags = [["B-X" if i % 3 == 0 else "O" for i, _ in enumerate(t.split())] for t in texts]
        frame = pd.DataFrame({"tokens": [t.split() for t in texts], "tags": tags})
        task = build_task("token", ["tokens"], "tags", ["O", "B-X", "I-X"], 64)
    else:
        frame = pd.DataFrame({"text": texts, "label": [0, 1, 1, 0, 1]})
        task = build_task("classification", ["text"], "label", ["0", "1"], 64)
    features = task.encode(frame, minilm_tokenizer)
    model = tiny("bert", kind_of_task, 3 if kind_of_task == "token" else 2)
    shapes = set()
    model.bert.embeddings.register_forward_hook(lambda module, args, out: shapes.add(tuple(out.shape[:2])))
    cpu = torch.device("cpu")
    padded = infer(Scorer(model, task, 2, cpu, "fp32", 0), features, task.scores, with_loss=True)
    shapes.clear()
    packed = infer(Scorer(model, task, 2, cpu, "fp32", 0, packed=True), features, task.scores, with_loss=True)
    assert shapes == {(1, 2 * int(features.lengths.max()))}  # three batches, one stream length: the budget
    assert packed.loss_sum == pytest.approx(padded.loss_sum, rel=1e-4)
    for ours, theirs in zip(packed.outputs, padded.outputs, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-4)
    assert model.training  # left in the mode it was found in


@pytest.mark.slow  # training subprocesses
def test_a_packed_run_resumes_bit_exactly(tiny_bert, tmp_path):
    """Killed (SIGKILL) mid-run and resumed, a packed run ends on the weights of the run never interrupted."""
    from conftest import assert_resumes_bit_exactly, recipe_args

    assert_resumes_bit_exactly(lambda out: recipe_args(tiny_bert, out) + ["--padding", "packed"], tmp_path)
