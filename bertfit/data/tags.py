"""Token-classification tag schemes: recognising IO, IOB1, IOB2 and BIOES, and converting to IOB2."""

from __future__ import annotations


def order_tags(tags: set[str]) -> list[str]:
    """'O' first, then by entity type with B before I (E, S), the order HF datasets use."""
    prefix_rank = {"B": 0, "I": 1, "E": 2, "S": 3}

    def key(tag: str) -> tuple:
        if tag == "O":
            return ("", -1)
        prefix, _, kind = tag.partition("-")
        return (kind or prefix, prefix_rank.get(prefix, 9))

    return sorted(tags, key=key)


def normalise_tags(sentences: list[list[str]]) -> tuple[list[list[str]], str, int]:
    """Recognise IOB1/IOB2/BIOES; rewrite entity-initial I-X as B-X (IOB1 conversion or IOB2 repair).

    Returns the rewritten tags, the detected scheme and how many tags an IOB2 input needed repaired.
    """
    if any(t[:2] in ("S-", "E-") for row in sentences for t in row):
        return sentences, "BIOES", 0
    initial_i = initial_b = 0
    converted = []
    for row in sentences:
        out, previous = [], "O"
        for tag in row:
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                initial_i += 1
                tag = "B-" + tag[2:]
            elif tag.startswith("B-"):
                initial_b += 1
            out.append(tag)
            previous = tag
        converted.append(out)
    scheme = "IOB1" if initial_i > initial_b else "IOB2"
    return converted, scheme, 0 if scheme == "IOB1" else initial_i
