"""Token classification (NER): words to sub-tokens, long sentences in overlapping windows, entity-level metrics."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bertfit.data.schema import DataSpec, Found, is_number
from bertfit.data.sources import Splits
from bertfit.data.tags import normalise_tags, order_tags
from bertfit.errors import BertfitError
from bertfit.runfiles import Scores, SplitProfile, Suspect
from bertfit.tasks.base import Task, counted, single_label_issues, single_label_margins
from bertfit.tasks.features import IGNORE, Features, Ragged

# Words as BERT's pre-tokenizer sees them: runs of word characters, or single punctuation marks.
WORD = re.compile(r"\w+|[^\w\s]")


class TokenTask(Task):
    """Words → sub-tokens with `is_split_into_words`; first sub-token labelled; long sentences in overlapping
    windows."""

    kind = "token"
    data_kind = "token"
    primary_metric = "f1"
    pipeline_tag = "token-classification"
    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    labels_tokens = True
    loss_unit = "labelled token"
    finds_mislabeled = True  # per labelled token; a sentence is reviewed with the words it keeps being contradicted on

    @classmethod
    def claims(cls, found: Found) -> bool:
        """Two list columns: a sentence's words and their tags."""
        return not found.label_columns and len(found.list_columns) >= 2

    @classmethod
    def read_data(cls, found: Found) -> DataSpec:
        return read_tagged(found)

    @classmethod
    def normalise_data(cls, splits: Splits, spec: DataSpec) -> Splits:
        """Tags named and in IOB2, whatever scheme and form (names or ids) the data gave them in."""
        rows = _token_rows(splits, spec.label_column, spec.tag_id_names, spec.io_tags)
        frames = {split: frame.assign(**{spec.label_column: rows[split][0]}) for split, frame in splits.frames.items()}
        return replace(splits, frames=frames)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        index = {name: i for i, name in enumerate(self.label_names)}
        self.tag_index = index
        # B-X continuation sub-tokens are labelled I-X when every sub-token carries a label (as run_ner does).
        self.continuation = {
            i: index.get("I-" + name[2:], i) if name.startswith("B-") else i for name, i in index.items()
        }

    def head_config(self):
        return {
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {name: i for i, name in enumerate(self.label_names)},
        }

    def settings(self):
        return {**super().settings(), "stride": self.stride, "all_subtokens": self.label_all_subtokens}

    def encode_rows(self, frame, tokenizer):
        words = [list(map(str, w)) for w in frame[self.text_columns[0]]]
        has_tags = self.label_column in frame.columns
        tags = [[self.tag_index[t] for t in row] for row in frame[self.label_column]] if has_tags else None
        encoded = tokenizer(
            words,
            is_split_into_words=True,
            add_special_tokens=False,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        input_ids, labels, word_ids, example_ids, full_lengths = [], [], [], [], []
        for example, ids in enumerate(encoded["input_ids"]):
            token_words = np.array([-1 if w is None else w for w in encoded.word_ids(example)], dtype=np.int64)
            first = np.ones(len(token_words), dtype=bool)
            first[1:] = token_words[1:] != token_words[:-1]
            spans = self.windows(len(ids))
            owner = self._owners(first, spans)
            for k, (start, end) in enumerate(spans):
                own = owner[start:end] == k
                word_here = np.where(own & first[start:end], token_words[start:end], -1)
                label_here = np.full(end - start, IGNORE, dtype=np.int64)
                if tags is not None:
                    row_tags = np.asarray(tags[example])
                    label_here[word_here >= 0] = row_tags[word_here[word_here >= 0]]
                    if self.label_all_subtokens:
                        rest = own & ~first[start:end] & (token_words[start:end] >= 0)
                        label_here[rest] = [self.continuation[t] for t in row_tags[token_words[start:end][rest]]]
                input_ids.append(np.asarray([cls_id, *ids[start:end], sep_id], dtype=np.int32))
                labels.append(np.concatenate([[IGNORE], label_here, [IGNORE]]))
                word_ids.append(np.concatenate([[-1], word_here, [-1]]))
                example_ids.append(example)
            full_lengths.append(len(ids) + 2)
        ragged_ids = Ragged.from_rows(input_ids, np.int32)
        return Features(
            input_ids=ragged_ids,
            labels=Ragged.from_rows(labels, np.int64, ragged_ids.offsets),
            example_ids=np.asarray(example_ids, dtype=np.int64),
            full_lengths=np.asarray(full_lengths, dtype=np.int64),
            word_ids=Ragged.from_rows(word_ids, np.int64, ragged_ids.offsets),
        )

    @staticmethod
    def _owners(first: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
        """Each word belongs to the window where its first sub-token has the most context on both sides."""
        owner = np.zeros(len(first), dtype=np.int64)
        if len(spans) == 1:
            return owner
        positions = np.arange(len(first))
        best_context = np.full(len(first), -1)
        for k, (start, end) in enumerate(spans):
            inside = (positions >= start) & (positions < end)
            context = np.minimum(positions - start, end - 1 - positions)
            better = inside & (context > best_context)
            owner[better], best_context[better] = k, context[better]
        # Continuation sub-tokens follow their word's first sub-token.
        word_start = np.maximum.accumulate(np.where(first, positions, 0))
        return owner[word_start]

    def collate_labels(self, features, indices, width):
        labels = np.full((len(indices), width), IGNORE, dtype=np.int64)
        for row, index in enumerate(indices):
            labels[row, : len(features.labels[index])] = features.labels[index]
        return torch.from_numpy(labels)

    def collate_packed_labels(self, features, indices, filler):
        labels = [np.asarray(features.labels[i]) for i in indices] + [np.full(filler, IGNORE)]
        return torch.from_numpy(np.concatenate(labels).astype(np.int64))[None]

    def metric_names(self):
        return ("precision", "recall", "f1", "accuracy")

    # -- likely mislabeled tags: the sums are kept per labelled token (the first sub-token of a word, or every
    # sub-token with label_all_subtokens), and a sentence is listed with the words whose tag cleanlab flags.
    # Flattened tokens are what cleanlab.token_classification.filter.find_label_issues hands to confident learning
    # too; called on the flat arrays here, without a Python list per sentence.
    ranked_by = "the area under the margin of its most contradicted word's tag (Pleiss et al. 2020)"

    def tracked(self, logits, labels, units):
        # The labelled positions in batch order without waiting for the device (indexing by a boolean mask would,
        # to count them, in every training step): a stable sort puts them first, and their count is known here.
        flat = labels.flatten()
        positions = torch.argsort((flat == IGNORE).to(torch.uint8), stable=True)[:units]
        return logits.flatten(0, -2).index_select(0, positions), flat.index_select(0, positions)

    def tracked_labels(self, features):
        flat = np.asarray(features.labels.flat)
        return flat[flat != IGNORE]

    def margins(self, logits, labels):
        return single_label_margins(logits, labels)

    def probabilities(self, logits):
        return logits.float().softmax(-1)

    def label_issues(self, labels, probabilities):
        return single_label_issues(labels, probabilities)

    def suspects(self, frame, features, sums, flagged):
        """A sentence per flagged word, listed at its most contradicted word; the suggestion changes each flagged
        word's tag to the likeliest other tag that may follow the tag before it (an I-X only inside an X entity)."""
        order = flagged[np.argsort(sums.rank[flagged], kind="stable")]
        ends = np.cumsum(features.items)
        feature_of = np.searchsorted(ends, order, side="right")
        doubted: dict[int, dict[int, int]] = {}  # sentence → {word: unit}, the most suspect sentence first
        for unit, feature in zip(order.tolist(), feature_of.tolist(), strict=True):
            labelled = np.flatnonzero(np.asarray(features.labels[feature]) != IGNORE)
            word = int(features.word_ids[feature][labelled[unit - (ends[feature] - features.items[feature])]])
            if word >= 0:  # a later sub-token's tag is its word's, reviewed through the first
                doubted.setdefault(int(features.example_ids[feature]), {}).setdefault(word, unit)
        rows = list(doubted)
        sentences = self.review_words(frame.iloc[rows])
        suspects = []
        for row, words, tags in zip(rows, sentences, frame[self.label_column].iloc[rows], strict=True):
            units, tags = doubted[row], [str(t) for t in tags]
            suggested, flagged_units = list(tags), list(units.values())
            for word in range(len(words)):
                if word in units:
                    suggested[word] = self._likeliest_other(
                        sums.probabilities[units[word]], tags[word], suggested[word - 1] if word else "O"
                    )
            suspects.append(
                Suspect(
                    row=row,
                    text=" ".join(words),
                    label=" ".join(tags),
                    suspected=" ".join(suggested),
                    margin=round(float(sums.margins[flagged_units].min()), 4),
                    probability=round(float(min(sums.probabilities[u, sums.labels[u]] for u in flagged_units)), 4),
                    seen=int(sums.seen[flagged_units].min()),
                    words=words,
                )
            )
        return suspects

    def _likeliest_other(self, probabilities: np.ndarray, given: str, before: str) -> str:
        for index in np.argsort(-probabilities, kind="stable").tolist():
            tag = self.label_names[index]
            continues = tag[:2] not in ("I-", "E-") or (before[:2] in ("B-", "I-") and before[2:] == tag[2:])
            if tag != given and continues:
                return tag
        return given

    @classmethod
    def shown_review(cls, text, label, other, words=None):
        """The sentence with the words whose tags differ in brackets, and those words' given and other tags."""
        words = words or text.split(" ")
        given, others = label.split(" "), other.split(" ")
        differ = [i for i, (a, b) in enumerate(zip(given, others, strict=True)) if a != b]
        return (
            " ".join(f"[{w}]" if i in differ else w for i, w in enumerate(words)),
            ", ".join(f"{words[i]} {given[i]}" for i in differ),
            ", ".join(f"{words[i]} {others[i]}" for i in differ),
        )

    def confusions(self, given, predicted):
        """Entity-level: a type mistaken for another on the same words, an entity missed, or one found where the
        data has none."""
        from seqeval.metrics.sequence_labeling import get_entities

        true, found = set(get_entities(given.split(" "))), set(get_entities(predicted.split(" ")))
        found_spans = {(start, end): kind for kind, start, end in found}
        true_spans = {(start, end) for _, start, end in true}
        pairs = [f"{kind} → {found_spans.get((start, end), 'missed')}" for kind, start, end in sorted(true - found)]
        pairs += [f"none → {kind}" for kind, start, end in sorted(found - true) if (start, end) not in true_spans]
        return pairs  # none where the tags differ and the entities, which the metrics count, do not

    def reviewed_predictions(self, features, frame, scores):
        """Each sentence's tags as the model predicts them, one per word, and their mean probability."""
        stitched = self.stitch(features, scores, [len(w) for w in frame[self.text_columns[0]]], 0.0)
        outside = self.tag_index.get("O", 0)
        predicted = []
        for probabilities in stitched:
            tags = [
                self.label_names[int(i)] if p.any() else self.label_names[outside]
                for i, p in zip(probabilities.argmax(-1), probabilities)
            ]
            predicted.append((" ".join(tags), float(probabilities.max(-1).mean()) if len(tags) else 0.0))
        return predicted

    def review_words(self, frame):
        return [[str(w) for w in row] for row in frame[self.text_columns[0]]]

    def label_ids(self, frame):
        return [np.asarray([self.tag_index[t] for t in row], dtype=np.int64) for row in frame[self.label_column]]

    def reviewed_labels(self, labels):
        return [" ".join(self.label_names[int(t)] for t in row) for row in labels]

    def filed_under(self, given, suggested):
        return sorted(
            {t for a, b in zip(given.split(" "), suggested.split(" "), strict=True) if a != b for t in (a, b)}
        )

    def relabel_refusal(self, given, wanted):
        tags, words = wanted.split(" "), len(given.split(" "))
        if not all(tag in self.tag_index for tag in tags):
            return f"the tags are {', '.join(self.label_names)}, one per word between single spaces"
        return None if len(tags) == words else f"the sentence has {words} words and {len(tags)} tags were given"

    def relabelled(self, frame, reviewed, row, wanted):
        return wanted.split(" ")

    def loss_sum(self, logits, labels):
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")

    def predictions(self, logits):
        return logits.argmax(-1)

    def scores(self, logits):
        return logits.float().softmax(-1)

    def feature_output(self, row, length):
        return row[:length]

    def stack(self, outputs):
        return outputs

    def stitch(self, features: Features, outputs: list[np.ndarray], n_words: list[int], fill) -> list[np.ndarray]:
        """Window outputs → one value per word, each from the window that owns the word; a word no window
        predicts (one with no sub-tokens) keeps `fill`."""
        first = np.asarray(outputs[0])
        words = [np.full((n, *first.shape[1:]), fill, dtype=first.dtype) for n in n_words]
        for feature, output in enumerate(outputs):
            word_here = features.word_ids[feature]
            where = word_here >= 0
            words[features.example_ids[feature]][word_here[where]] = np.asarray(output)[: len(word_here)][where]
        return words

    def word_predictions(
        self, features: Features, frame: pd.DataFrame, predictions: list[np.ndarray]
    ) -> list[list[str]]:
        """One tag per word; a word with no sub-tokens is predicted 'O'."""
        stitched = self.stitch(features, predictions, [len(w) for w in frame[self.text_columns[0]]], -1)
        outside = self.tag_index.get("O", 0)
        return [[self.label_names[t] if t >= 0 else self.label_names[outside] for t in row] for row in stitched]

    def metrics(self, features, frame, predictions):
        true = [list(row) for row in frame[self.label_column]]
        return token_metrics(true, self.word_predictions(features, frame, predictions))

    def prediction_frame(self, rows):
        """Running text is cut into words as BERT's pre-tokenizer would; their character spans locate entities."""
        texts = [row[0] for row in rows]
        spans = [[m.span() for m in WORD.finditer(text)] for text in texts]
        words = [[text[a:b] for a, b in s] or ["."] for text, s in zip(texts, spans)]
        return pd.DataFrame({self.text_columns[0]: words}), (texts, spans)

    def decode(self, features, context, scores):
        texts, spans = context
        stitched = self.stitch(features, scores, [max(1, len(s)) for s in spans], 0.0)
        results = []
        for text, offsets, probs in zip(texts, spans, stitched):
            probs = probs[: len(offsets)]
            tags = [self.label_names[i] for i in probs.argmax(-1)] if len(offsets) else []
            results.append(
                {"text": text, "entities": entity_spans(text, offsets, tags, probs.max(-1) if len(offsets) else [])}
            )
        return results

    def profile_texts(self, frame):
        return frame[self.text_columns[0]].map(lambda words: " ".join(map(str, words)))

    def does(self, unit: str) -> str:
        return f"tags each word of a text with one of {len(self.label_names)} tags ({', '.join(self.label_names)})"

    def label_profile(self, frame, text_hashes):
        tags = {str(k): int(v) for k, v in frame[self.label_column].explode().dropna().value_counts().items()}
        return {
            "tags": tags,
            "entity_counts": {k[2:]: v for k, v in tags.items() if k.startswith(("B-", "S-"))},
            "words": int(frame[self.text_columns[0]].map(len).sum()),
        }

    @classmethod
    def label_summary(cls, split: SplitProfile) -> list[str]:
        return ["entities " + ", ".join(f"{k} {v:,}" for k, v in sorted(split.entity_counts.items()))]

    @classmethod
    def label_cells(cls, split: SplitProfile) -> tuple[str, str]:
        return counted(split.entity_counts), ""

    def result_tables(self, metrics: Scores) -> list[tuple[str, list[str], list[list[str]]]]:
        per_type = metrics.per_type
        if not per_type:
            return []
        rows = [
            [k, f"{v.precision:.4f}", f"{v.recall:.4f}", f"{v.f1:.4f}", f"{v.support:,}"]
            for k, v in sorted(per_type.items())
        ]
        return [("Per entity type ({split})", ["Entity", "Precision", "Recall", "F1", "Support"], rows)]

    reads_windows = True  # a sentence longer than max_length is always read whole

    def prediction_record(self, row: list[str], prediction: dict) -> dict:
        return prediction  # the text is in it, with its entities' character offsets


def token_metrics(true: list[list[str]], predicted: list[list[str]]) -> dict:
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    report = classification_report(true, predicted, output_dict=True, zero_division=0)
    per_type = {
        name: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for name, v in report.items()
        if not name.endswith(" avg")
    }
    return {
        "precision": float(precision_score(true, predicted, zero_division=0)),
        "recall": float(recall_score(true, predicted, zero_division=0)),
        "f1": float(f1_score(true, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(true, predicted)),
        "per_type": per_type,
    }


def entity_spans(text: str, offsets: list[tuple[int, int]], tags: list[str], scores) -> list[dict]:
    """IOB2/BIOES word tags → entity spans; an I-X that does not continue an X entity starts one."""
    entities, current = [], None
    for (start, end), tag, score in zip(offsets, tags, scores):
        prefix, _, kind = tag.partition("-")
        continues = current is not None and prefix in ("I", "E") and current["entity_group"] == kind
        if continues:
            current["end"], current["scores"] = end, current["scores"] + [float(score)]
        else:
            if current:
                entities.append(current)
            current = (
                {"entity_group": kind, "start": start, "end": end, "scores": [float(score)]}
                if prefix in ("B", "I", "S", "E") and kind
                else None
            )
        if current is not None and prefix in ("E", "S"):
            entities.append(current)
            current = None
    if current:
        entities.append(current)
    return [
        {
            "entity_group": e["entity_group"],
            "word": text[e["start"] : e["end"]],
            "start": e["start"],
            "end": e["end"],
            "score": float(np.mean(e["scores"])),
        }
        for e in entities
    ]


# ---------------------------------------------------------------- reading tagged data


# The usual names of the columns of a sentence's words and of its tags.
TOKEN_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("ner_tags", "tags", "labels", "ner", "label", "tag")


def read_tagged(found: Found) -> DataSpec:
    """Token classification data: a list-of-words and a list-of-tags column; every sentence checked, the tag
    scheme found (IO, IOB1, IOB2, BIOES) and the tags' names."""
    splits, train_split, file = found.splits, found.train_split, found.file
    text_columns, label_column, given_names = found.text_columns, found.label_column, found.label_names
    list_columns = found.list_columns
    tokens = (text_columns or [None])[0] or next((c for c in TOKEN_COLUMNS if c in list_columns), None)
    tags = label_column or next((c for c in TAG_COLUMNS if c in list_columns and c != tokens), None)
    if tokens is None or tags is None:
        raise BertfitError(
            f"token classification needs a list-of-tokens and a list-of-tags column in '{file}' "
            f"(list columns: {', '.join(list_columns) or 'none'}); name them with "
            "--text-column and --label-column"
        )
    id_names = None
    for split, frame in splits.frames.items():
        split_file = splits.files.get(split, split)
        for number, (words, labels) in enumerate(zip(frame[tokens], frame[tags]), start=1):
            for what, value in (("tokens", words), ("tags", labels)):
                if not isinstance(value, (list, tuple, np.ndarray)):
                    raise BertfitError(
                        f"'{split_file}' sentence {number}: {what} are {value!r}, not a list; give "
                        f"each sentence a list of {what}"
                    )
            if len(words) == 0:
                raise BertfitError(f"'{split_file}' sentence {number} is empty; remove it")
            if len(words) != len(labels):
                raise BertfitError(
                    f"'{split_file}' sentence {number} has {len(words)} tokens but {len(labels)} "
                    "tags; each token needs exactly one tag"
                )
        if len(frame) and not isinstance(frame[tags].iloc[0][0], str):
            id_names = given_names or splits.label_names
            if not id_names:
                raise BertfitError(f"tags in '{split_file}' are integers without names; give --label-names")
            for number, row in enumerate(frame[tags], start=1):
                bad = next((t for t in row if not is_number(t) or not 0 <= int(t) < len(id_names)), None)
                if bad is not None:
                    raise BertfitError(
                        f"'{split_file}' sentence {number}: tag {bad!r} has no name: the "
                        f"{len(id_names)} tag names take ids 0..{len(id_names) - 1}; fix the tag or "
                        "--label-names"
                    )
    io_tags = _io_scheme(splits, {split: _named_tags(frame[tags], id_names) for split, frame in splits.frames.items()})
    rows = _token_rows(splits, tags, id_names, io_tags)
    scheme, repaired = rows[train_split][1], sum(fixed for _, _, fixed in rows.values())
    notes = []
    if io_tags:
        scheme, repaired = "IO", 0
        notes.append(
            "tags have no B-/I- prefixes (the IO scheme): read as I-X and converted to IOB2, so adjacent "
            "entities of one type merge"
        )
    elif scheme == "IOB1":
        notes.append("tags are IOB1: converted to IOB2 (an entity-initial I-X became B-X)")
    names = (
        given_names
        if given_names and isinstance(given_names[0], str) and not io_tags
        else order_tags({t for row in rows[train_split][0] for t in row})
    )
    known = set(names)
    for split, (converted, _, _) in rows.items():
        for number, row in enumerate(converted, start=1):
            unknown = [t for t in row if t not in known]
            if unknown:
                raise BertfitError(
                    f"'{splits.files.get(split, split)}' sentence {number}: tag '{unknown[0]}' "
                    "never appears in the training data"
                )
    return DataSpec("token", [tokens], tags, names, scheme, repaired, id_names, io_tags, notes)


def _named_tags(column: pd.Series, id_names: list[str] | None) -> list[list[str]]:
    if len(column) and not isinstance(column.iloc[0][0], str):
        return [[id_names[int(t)] for t in row] for row in column]
    return [list(row) for row in column]


def _token_rows(
    splits: Splits, tags: str, id_names: list[str] | None, io_tags: bool
) -> dict[str, tuple[list[list[str]], str, int]]:
    """Per split: the tags as IOB2 names, the scheme found and how many entity-initial I- tags were repaired."""
    rows = {}
    for split, frame in splits.frames.items():
        named = _named_tags(frame[tags], id_names)
        if io_tags:
            named = [[t if t == "O" else "I-" + t for t in row] for row in named]
        rows[split] = normalise_tags(named)
    return rows


def _io_scheme(splits: Splits, named: dict[str, list[list[str]]]) -> bool:
    """True when no tag carries a B-/I-/E-/S- prefix (plain PER, LOC, O); a mix of both is refused."""
    prefixed = plain = None
    for split, rows in named.items():
        for number, row in enumerate(rows, start=1):
            for tag in row:
                if tag == "O":
                    continue
                if str(tag)[:2] in ("B-", "I-", "E-", "S-"):
                    prefixed = prefixed or (split, number, tag)
                else:
                    plain = plain or (split, number, tag)
    if prefixed and plain:
        raise BertfitError(
            f"'{splits.files.get(plain[0], plain[0])}' sentence {plain[1]}: tag '{plain[2]}' has no "
            f"B-/I- prefix while others do (e.g. '{prefixed[2]}'); use one tag scheme"
        )
    return bool(plain)
