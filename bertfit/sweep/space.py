"""The search space of `bertfit sweep`: which recipe keys vary and how, from the command line (`--space
KEY=SPEC`), the recipe's `sweep:` block, or the default fine-tuning space. Every dimension is checked against the
recipe's own validation before a trial starts, so a bad space is one line."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from bertfit.config import Config, canonical_key
from bertfit.errors import BertfitError

# BERT's grid (Devlin et al. 2019: lr {5e-5, 3e-5, 2e-5}, batch size {16, 32}, epochs {2, 3, 4}), widened to the
# ranges fine-tuning posts report working (lr down to 1e-5 and up to 1e-4, one epoch, batch size 8), plus the two
# regularisers the doctor most often advises: warmup and weight decay.
DEFAULT_SPACE = {
    "lr": {"low": 1e-5, "high": 1e-4, "log": True},
    "batch_size": [8, 16, 32],
    "epochs": {"low": 1, "high": 4},
    "warmup_ratio": {"low": 0.0, "high": 0.1},
    "weight_decay": {"low": 0.0, "high": 0.1},
}

NOT_SEARCHED = {"output", "data", "world_size"}  # where a trial writes and what it learns are the sweep's own
NUMBER = r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
RANGE = re.compile(rf"^\s*(?P<low>{NUMBER})\s*\.\.\s*(?P<high>{NUMBER})\s*(?P<log>:\s*log)?\s*$")


@dataclass(frozen=True)
class Dimension:
    """One recipe key and the values a trial may give it: a float or integer range (log-uniform when `log`), or
    a list of choices."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple | None = None

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def suggest(self, trial) -> Any:
        """The value an Optuna trial gives this key."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def holds(self, value: Any) -> bool:
        """Whether a trial could be given `value` (the base recipe's, to run it first)."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high and (not self.integer or float(value).is_integer())

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.key} {self.low:g}..{self.high:g}" + (" (log)" if self.log else "")


def parse_spec(key: str, spec: str) -> Dimension:
    """`LOW..HIGH`, `LOW..HIGH:log`, `INT..INT` or `a,b,c` (a single value is one choice)."""
    match = RANGE.match(spec)
    if match:
        low, high = (_number(match.group(name)) for name in ("low", "high"))
        return _checked(Dimension(key, low, high, bool(match.group("log"))))
    if ".." in spec:
        raise BertfitError(
            f"--space {key}={spec}: a range is LOW..HIGH with numbers (add :log for a log scale), e.g. "
            f"{key}=1e-5..1e-4:log"
        )
    choices = tuple(_scalar(part.strip()) for part in spec.split(",") if part.strip())
    if not choices:
        raise BertfitError(f"--space {key}= gives no values; write {key}=LOW..HIGH or {key}=a,b,c")
    return _checked(Dimension(key, choices=choices))


def from_recipe(key: str, value: Any) -> Dimension:
    """A `sweep:` entry: `{low: 1e-5, high: 1e-4, log: true}`, a list of choices, or a `LOW..HIGH` string."""
    if isinstance(value, dict):
        unknown = set(value) - {"low", "high", "log"}
        if unknown or not {"low", "high"} <= set(value):
            raise BertfitError(
                f"sweep: {key} is {value!r}; give a range as {{low: ..., high: ..., log: true|false}} or a list of "
                "choices"
            )
        low, high = (_number(value[name]) for name in ("low", "high"))
        return _checked(Dimension(key, low, high, bool(value.get("log", False))))
    if isinstance(value, list):
        if not value:
            raise BertfitError(f"sweep: {key} is an empty list; give the values to try")
        return _checked(Dimension(key, choices=tuple(value)))
    if isinstance(value, str):
        return parse_spec(key, value)
    raise BertfitError(f"sweep: {key} is {value!r}; give a range {{low, high, log}} or a list of choices")


def _number(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BertfitError(f"{value!r} is not a number")
    if isinstance(value, str):
        value = float(value) if any(c in value for c in ".eE") else int(value)
    return value


def _scalar(text: str) -> Any:
    """A choice as the recipe would read it: a number where it is one, else the text."""
    try:
        return _number(text)
    except (BertfitError, ValueError):
        return {"true": True, "false": False}.get(text.lower(), text)


def _checked(dimension: Dimension) -> Dimension:
    key = dimension.key
    if dimension.choices is None:
        low, high = dimension.low, dimension.high
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise BertfitError(f"the range of {key} runs from {low:g} to {high:g}; give LOW..HIGH with LOW below HIGH")
        if dimension.log and low <= 0:
            raise BertfitError(f"a log range of {key} cannot reach {low:g}: a log scale needs LOW above 0")
    return dimension


def build_space(specs: list[str], recipe_block: dict | None, base: Config) -> list[Dimension]:
    """The command line's dimensions over the recipe's (per key), else the default space. Each key must be a
    recipe key, and each end of a range and each choice a value the recipe accepts there."""
    dimensions: dict[str, Dimension] = {}
    if recipe_block is not None and not isinstance(recipe_block, dict):
        raise BertfitError("the recipe's sweep: block must map keys to ranges or choices")
    for key, value in (recipe_block or {}).items():
        canonical = _searchable(key, "sweep:")
        dimensions[canonical] = from_recipe(canonical, value)
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise BertfitError(f"--space expects KEY=SPEC (e.g. lr=1e-5..1e-4:log), got '{spec}'")
        canonical = _searchable(key.strip(), "--space")
        dimensions[canonical] = parse_spec(canonical, value.strip())
    if not dimensions:
        dimensions = {key: from_recipe(key, value) for key, value in DEFAULT_SPACE.items()}
    for dimension in dimensions.values():
        values = dimension.choices if dimension.choices is not None else (dimension.low, dimension.high)
        for value in values:
            _accepted(base, dimension.key, value)
    return list(dimensions.values())


def _searchable(key: str, where: str) -> str:
    try:
        canonical = canonical_key(key)
    except BertfitError as err:
        raise BertfitError(f"{where} {err}") from None
    if canonical in NOT_SEARCHED:
        raise BertfitError(f"{where} cannot search '{canonical}': each trial learns the same data into its own folder")
    return canonical


def _accepted(base: Config, key: str, value: Any) -> None:
    from pydantic import ValidationError

    try:
        Config.model_validate({**base.model_dump(), key: value})
    except ValidationError as err:
        message = err.errors()[0]["msg"].removeprefix("Value error, ")
        raise BertfitError(f"the space gives {key} the value {value!r}, which a recipe refuses: {message}") from None


def space_key(dimensions: list[Dimension]) -> str:
    """The space as one line, stored with the study: a rerun with another space under the same name is refused."""
    return "; ".join(sorted(d.describe() for d in dimensions))
