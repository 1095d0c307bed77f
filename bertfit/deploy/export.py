"""`bertfit export`: a run as an ONNX model that onnxruntime runs without torch, checked against the run at export.

torch's own exporter (`torch.onnx.export(dynamo=True)`, through torch.export) rather than optimum: it needs no
package beyond onnx and onnxscript, follows the model code transformers ships (no per-architecture export config
to lag behind), and its graph is the one bertfit trains. The folder it writes is a run folder too (recipe, config,
tokenizer): `bertfit predict`, `eval` and `serve` load it and run onnxruntime instead of torch."""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bertfit import models
from bertfit.data import sources
from bertfit.engine.evaluation import Scorer, infer
from bertfit.engine.predict import load_run, split_frame
from bertfit.errors import BertfitError, first_line
from bertfit.files import TEMP_PREFIX, write_failure, writing
from bertfit.runfolder import RunFolder

# Validation examples compared between torch and onnxruntime at export.
PARITY_SAMPLES = 1000


def export_run(run_dir: str, output: str, quantize: str | None = None, data: str | None = None) -> dict:
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BertfitError(f"--output '{output}' exists and is not empty; choose a new folder for the export")
    if models.is_onnx(Path(run_dir)):
        raise BertfitError(f"'{run_dir}' is an ONNX export already; export the run folder it was made from")
    run = load_run(run_dir)
    run.model.to("cpu").float()
    then = "free space or choose another --output"
    with RunFolder.claim(out, protected={"the run": Path(run_dir)}) as folder:
        folder.begin(resume=False, overwrite=False)
        tmp = out / f"{TEMP_PREFIX}export"
        started = time.perf_counter()
        with writing("the ONNX export", out, then, cleanup=tmp):
            tmp.mkdir()
            _export(run, tmp / models.ONNX_FILE)
            if quantize == "int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                # Dynamic quantization: int8 weights, activations quantized per batch; no calibration data needed.
                fp32 = tmp / "model.fp32.onnx"
                (tmp / models.ONNX_FILE).rename(fp32)
                with _quiet_root_logger():  # onnxruntime's advice to pre-process, for image models
                    quantize_dynamic(str(fp32), str(tmp / models.ONNX_FILE), weight_type=QuantType.QInt8)
                fp32.unlink()
            run.model.config.save_pretrained(tmp)
            run.tokenizer.save_pretrained(tmp)
            export_seconds = time.perf_counter() - started
            parity = check_parity(run, tmp, data)
        folder.move_in(tmp, "the ONNX export", then)
        folder.write("recipe.yaml", (Path(run_dir) / "recipe.yaml").read_text(encoding="utf-8"), then)
    return {"output": str(out), "quantize": quantize or "none", "export_seconds": export_seconds, **parity}


def _export(run, path: Path) -> None:
    """Dynamic batch and sequence dimensions, traced on two examples of different lengths."""
    features = run.task.encode(run.task.prediction_frame(_example_rows(run))[0], run.tokenizer)
    batch = run.task.collate(features, np.arange(len(features)), run.tokenizer.pad_token_id)
    batch.pop("labels")
    names = list(batch)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # The exporter narrates its passes on stdout and warns about torch internals; neither is the user's concern.
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            torch.onnx.export(
                run.model,
                (),
                str(path),
                kwargs=batch,
                input_names=names,
                output_names=["logits"],
                dynamic_shapes={name: dims for name in names},
                dynamo=True,
                external_data=False,  # one file: BERT-family encoders are far below protobuf's 2 GB limit
                verbose=False,
            )
    except Exception as err:  # the exporter raises many kinds; each is one line for the user
        if write_failure(err, path.parent) is not None:
            raise  # a full or read-only disk, which the caller's `writing` names with its fix
        raise BertfitError(
            f"this {run.model.config.model_type} model cannot be exported to ONNX ({first_line(err, 160)})"
        ) from None


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _example_rows(run) -> list[list[str]]:
    short, long = "a short text", "a somewhat longer text, so that the traced batch has padding in it"
    rows = [[short], [long]]
    if len(run.cfg.text_columns) == 2:
        rows = [[short, long], [long, short]]
    return rows


def check_parity(run, folder: Path, data: str | None) -> dict:
    """onnxruntime against torch (fp32, the exported weights) on a sample of the run's validation split: the
    largest logit difference and how often the predicted labels agree."""
    source = data or run.cfg.data
    try:
        splits = sources.load_splits(source)
    except BertfitError as err:
        raise BertfitError(f"the parity check needs the run's data ({err}); pass --data") from None
    split = run.cfg.eval_split if run.cfg.eval_split in splits.frames else run.cfg.train_split
    frame = sources.subsample(split_frame(run.cfg, splits, source, split), PARITY_SAMPLES, seed=0)
    features = run.task.encode(frame, run.tokenizer)
    onnx = models.load_onnx(folder)
    logits = {}
    for name, model in (("torch", run.model), ("onnx", onnx)):
        started = time.perf_counter()
        scorer = Scorer(model, run.task, 64, torch.device("cpu"), "fp32", run.tokenizer.pad_token_id)
        logits[name] = infer(scorer, features, _raw).outputs
        logits[f"{name}_seconds"] = time.perf_counter() - started
    ours, theirs = logits["torch"], logits["onnx"]
    if isinstance(ours, list):  # token tasks: one array per window
        ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    return {
        "parity_split": split,
        "parity_examples": len(frame),
        "max_abs_logit_diff": float(np.abs(np.asarray(ours) - np.asarray(theirs)).max()),
        "label_agreement": float((np.asarray(ours).argmax(-1) == np.asarray(theirs).argmax(-1)).mean()),
        "torch_fp32_samples_per_second": len(frame) / logits["torch_seconds"],
        "onnx_samples_per_second": len(frame) / logits["onnx_seconds"],
    }


def _raw(logits: torch.Tensor) -> torch.Tensor:
    return logits.float()
