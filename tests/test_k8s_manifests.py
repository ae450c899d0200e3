"""k8s/ manifests: each document validates against its kind's schema (KubeRay v1 subset,
k8s/schemas/), the run config in the ConfigMap loads, the RayJob's entry point exists and reads
the mounted config, and the RayService's Serve import path resolves to an application builder
that builds the embedding server with the autoscaling it names."""

import copy
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from customir.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
SCHEMAS = json.loads((K8S / "schemas" / "kuberay-v1-subset.schema.json").read_text())


def validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = {"$defs": SCHEMAS["$defs"], "$ref": f"#/$defs/{kind}"}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema,
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(doc["kind"]).iter_errors(doc)]


def documents() -> list[tuple[str, dict]]:
    return [(f"{path.name}#{i}", doc) for path in sorted(K8S.glob("*.yaml"))
            for i, doc in enumerate(yaml.safe_load_all(path.read_text())) if doc]


def by_kind(kind: str) -> dict:
    (doc,) = [d for _, d in documents() if d["kind"] == kind]
    return doc


def test_manifests_present():
    kinds = sorted(d["kind"] for _, d in documents())
    assert kinds == ["ConfigMap", "RayJob", "RayService"]


@pytest.mark.parametrize("name,doc", documents(), ids=[n for n, _ in documents()])
def test_manifest_matches_its_schema(name, doc):
    assert doc["kind"] in SCHEMAS["$defs"], f"{name}: no schema for kind {doc['kind']}"
    assert errors(doc) == []


@pytest.mark.parametrize("path,value,fragment", [
    (["spec", "shutdownAfterJobFinishes"], "yes", "is not of type 'boolean'"),
    (["spec", "rayClusterSpec", "workerGroupSpecs", 0, "maxReplicas"], "4",
     "is not of type 'integer'"),
    (["spec", "entrypoint"], ["python", "x.py"], "is not of type 'string'"),
    (["spec", "submissionMode"], "K8sMode", "is not one of"),
    (["spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "containers", 0,
      "resources", "limits", "nvidia.com/gpu"], "one", "does not match"),
])
def test_broken_rayjob_fails_validation(path, value, fragment):
    doc = copy.deepcopy(by_kind("RayJob"))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    found = errors(doc)
    assert len(found) == 1 and fragment in found[0], found


def test_rayservice_without_cluster_fails_validation():
    doc = copy.deepcopy(by_kind("RayService"))
    del doc["spec"]["rayClusterConfig"]
    assert errors(doc) == ["spec: 'rayClusterConfig' is a required property"]


def test_configmap_run_config_is_a_valid_pipeline_config():
    data = yaml.safe_load(by_kind("ConfigMap")["data"]["run.yaml"])
    config = PipelineConfig.model_validate(data)
    assert config.train.num_workers >= 1
    assert str(config.run_dir).startswith("/data/")  # on the PVC every pod mounts


def test_rayjob_entry_point_exists_and_reads_the_mounted_config():
    job = by_kind("RayJob")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[0] == "python" and (ROOT / argv[1]).is_file(), argv
    assert argv[1] == "jobs/run_pipeline.py"
    config_path = Path(argv[2])
    assert job["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(job["runtimeEnvYAML"])["working_dir"] == "/app"

    cluster = job["rayClusterSpec"]
    pod = cluster["headGroupSpec"]["template"]["spec"]  # the driver runs on the head
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(config_path.parent)])
    configmap = by_kind("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.name in configmap["data"]

    def limits(group: dict) -> dict:
        return group["template"]["spec"]["containers"][0]["resources"]["limits"]

    gpu_groups = [g for g in cluster["workerGroupSpecs"] if "nvidia.com/gpu" in limits(g)]
    assert gpu_groups and all(g["minReplicas"] <= g["maxReplicas"] for g in gpu_groups)
    assert cluster["enableInTreeAutoscaling"] is True


def serve_application() -> dict:
    from ray.serve.schema import ServeDeploySchema

    serve_config = yaml.safe_load(by_kind("RayService")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)  # the schema `serve deploy` checks
    (app,) = serve_config["applications"]
    return app


def test_rayservice_import_path_builds_the_embedding_server(tmp_path):
    from types import FunctionType

    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.utils import import_attr
    from ray.serve.api import Application

    from customir.config import ServeConfig

    app = serve_application()
    builder = import_attr(app["import_path"])
    assert isinstance(builder, FunctionType)
    ServeConfig.model_validate(app["args"]["serve"])  # every serving field is a real one

    from customir.serve.encoder import MODEL_FILES

    # an export folder with the graph its backend needs (checked, not loaded, here)
    (tmp_path / "customir_onnx.json").write_text("{}")
    (tmp_path / MODEL_FILES[ServeConfig.model_validate(app["args"]["serve"]).backend]).touch()
    args = {**app["args"], "model_dir": str(tmp_path)}
    built = call_user_app_builder_with_args_if_necessary(builder, args)
    assert isinstance(built, Application)
    deployment = built._bound_deployment
    autoscaling = deployment._deployment_config.autoscaling_config
    serve = app["args"]["serve"]
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (serve["min_replicas"],
                                                                    serve["max_replicas"])
    assert autoscaling.target_ongoing_requests == serve["target_ongoing_requests"]
    assert deployment.init_args == (str(tmp_path), ServeConfig.model_validate(serve))


def test_rayservice_builder_names_a_missing_model_dir(tmp_path):
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from customir.serve.deployment import app_builder

    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        call_user_app_builder_with_args_if_necessary(app_builder, {"model_dir": str(tmp_path)})


def test_rayservice_pods_that_build_or_serve_the_app_see_its_model_and_the_proxy_waits_longer():
    """Serve builds the application (app_builder opens model_dir) in a task that normally runs
    on the head; the replicas run on the workers: every one of those pods mounts the volume
    holding model_dir. The proxy's time limit is above the replica's, so a 408 is JSON."""
    from customir.serve.lifecycle import PROXY_GRACE_S

    doc = by_kind("RayService")
    model_dir = Path(serve_application()["args"]["model_dir"])
    cluster = doc["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    for pod in pods:
        claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", [])
                  if m["name"] in claims]
        assert any(model_dir.is_relative_to(m["mountPath"]) for m in mounts), pod
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    replica = serve_application()["args"]["serve"]["request_timeout_s"]
    assert serve_config["http_options"]["request_timeout_s"] == replica + PROXY_GRACE_S
