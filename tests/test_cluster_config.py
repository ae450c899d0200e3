"""cluster/: the launcher config passes Ray's own schema (ray-schema.json, what `ray up` checks)
with a CPU head and an autoscaling GPU worker group; the runtime envs use only keys Ray knows
(RuntimeEnv.known_fields: Ray itself passes unknown top-level keys through to plugins) and
construct as Ray's RuntimeEnv, which rejects malformed pip / env_vars."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

from customir.config import MineConfig

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def launcher_config() -> dict:
    return yaml.safe_load((CLUSTER / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_schema():
    # `ray up` fills in the provider's defaults (prepare_config), then validates
    validate_config(prepare_config(launcher_config()))


def test_cluster_yaml_has_cpu_head_and_autoscaling_gpu_and_cpu_workers():
    config = launcher_config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and head["max_workers"] == 0
    assert set(types) == {config["head_node_type"], "gpu_worker", "cpu_worker"}
    gpu, cpu = types["gpu_worker"], types["cpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # AWS GPU families
    assert not cpu["node_config"]["InstanceType"].startswith(("g", "p"))
    # the resource mine.resources_per_worker's documented example asks for exists, on CPU nodes
    assert cpu["resources"] == {"cpu_node": 1} and "cpu_node" not in gpu["resources"]
    assert "cpu_worker" in MineConfig.model_fields["resources_per_worker"].description
    for workers in (gpu, cpu):
        assert 0 <= workers["min_workers"] < workers["max_workers"] <= config["max_workers"]


def test_broken_cluster_yaml_fails_ray_schema():
    config = copy.deepcopy(launcher_config())
    config["available_node_types"]["gpu_worker"]["max_workers"] = "four"
    # Ray validates against ray-schema.json with jsonschema (what `ray up` does)
    with pytest.raises(jsonschema.ValidationError,
                       match="'four' is not of type 'integer'") as refused:
        validate_config(prepare_config(config))
    assert list(refused.value.absolute_path) == ["available_node_types", "gpu_worker",
                                                 "max_workers"]


@pytest.mark.parametrize("name", ["runtime_env.yaml", "runtime_env_gpu.yaml"])
def test_runtime_env_is_accepted_by_ray(name):
    data = yaml.safe_load((CLUSTER / name).read_text())
    assert set(data) <= RuntimeEnv.known_fields
    env = RuntimeEnv(**data)
    assert env.env_vars()["HF_HUB_OFFLINE"] == "1"


def test_gpu_runtime_env_installs_the_uploaded_checkout_with_the_gpu_extra():
    """customir is on no package index: the job installs its own working dir, which Ray names
    in RAY_RUNTIME_ENV_CREATE_WORKING_DIR while it installs (pip expands it)."""
    env = RuntimeEnv(**yaml.safe_load((CLUSTER / "runtime_env_gpu.yaml").read_text()))
    assert env.pip_config()["packages"] == ["${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}[gpu]"]
    assert not any("customir" in c for c in launcher_config()["setup_commands"])


def test_malformed_runtime_env_is_rejected():
    with pytest.raises(ValueError, match="pakages"):
        RuntimeEnv(pip={"pakages": ["customir[gpu]"]})
    with pytest.raises(TypeError, match="env_vars"):
        RuntimeEnv(env_vars={"HF_HUB_OFFLINE": 1})
