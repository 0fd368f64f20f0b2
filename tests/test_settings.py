from pathlib import Path

import pytest

from gigarouter.settings import EMBEDDED_WEIGHTS, ConfigError, load_settings


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
