"""`bertfit push`: a run folder to a model repository on the Hugging Face Hub, through huggingface_hub.

The model card (README.md) becomes the repository's page, with its model-index metadata; checkpoints, bertfit's
bookkeeping and the local TensorBoard files stay behind."""

from __future__ import annotations

from pathlib import Path

from bertfit.errors import BertfitError, first_line

# Left out of the upload: optimizer state and checkpoints (gigabytes, and only for resuming here), bertfit's lock
# and temporary files, tracker files.
IGNORED = ["checkpoints/*", ".bertfit*", "tensorboard/*", "mlruns/*", "*.tmp*"]


def push_run(run_dir: str, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create the repository (or reuse it) and upload the run in one commit; returns the commit's URL."""
    folder = Path(run_dir)
    if not (folder / "README.md").is_file() or not (folder / "recipe.yaml").is_file():
        raise BertfitError(f"'{run_dir}' is not a finished bertfit run (no README.md and recipe.yaml) to push")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
    from huggingface_hub.utils import validate_repo_id

    try:  # the Hub's own rule, checked here: raised later, its ValueError reads like a refused model card
        if repo_id.count("/") != 1:
            raise HFValidationError("it takes the form owner/name")
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise BertfitError(
            f"--repo-id '{repo_id}' is not a Hub repository id ({first_line(err, 160)}); use owner/name with "
            f"letters, digits, '-', '_' and '.', e.g. your-user/{folder.name}"
        ) from None

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            ignore_patterns=IGNORED,
            commit_message=f"bertfit run {folder.name}",
        )
    except OfflineModeIsEnabled:
        raise BertfitError("cannot push while HF_HUB_OFFLINE is set; unset it and push again") from None
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 401:
            raise BertfitError(
                "the Hub refused the push: not logged in; run `hf auth login` or set HF_TOKEN, then push again"
            ) from None
        if status == 403:
            raise BertfitError(f"the Hub refused the push: your token may not write to '{repo_id}'") from None
        raise BertfitError(f"the Hub refused the push ({first_line(err, 160)})") from None
    except ValueError as err:  # huggingface_hub's word for a card the Hub's metadata check refused
        raise BertfitError(
            f"the Hub refused the model card ({first_line(err, 160)}); fix README.md's metadata"
        ) from None
    except _network_errors() as err:
        raise BertfitError(
            f"the Hub cannot be reached ({first_line(err, 120)}); check the network and push again"
        ) from None
    return commit.commit_url


def _network_errors() -> tuple[type[BaseException], ...]:
    """What 'no network' raises in the HTTP client huggingface_hub uses: httpx2 in 2.x, httpx in 1.x, requests
    (whose errors are OSErrors) before that."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)
