"""Cluster definitions and job specs are checked against the schemas the real tools apply.

The cluster-launcher YAML goes through the JSON schema and config checks inside the ``ray`` package (what
``ray up`` runs before it touches AWS). The KubeRay manifests are validated against the v1.7.0 CRDs' OpenAPI
schemas in ``<repo>/../shared/kuberay-crds``, made strict the way the API server is: a field the CRD does not
declare is an error (kubectl's default strict field validation), not silently pruned.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from mllm_dr.cli import build_parser
from mllm_dr.errors import UserError
from mllm_dr.jobs import load_job_spec

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO.parent / "shared" / "kuberay-crds"
CLUSTER = REPO / "cluster"
JOB_SPECS = sorted((REPO / "jobs").glob("*.yaml"))
STAGES = {"preprocess", "distill", "train", "evaluate", "score"}


# --- Ray cluster launcher -------------------------------------------------------------------------------------

def test_aws_cluster_yaml_is_valid_for_ray_up():
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # defaults merged and checked as `ray up` does


def test_aws_cluster_has_the_three_groups_and_secure_defaults():
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    types = config["available_node_types"]
    assert set(types) == {"head", "cpu-preprocess", "gpu"} and config["head_node_type"] == "head"
    assert types["gpu"]["node_config"]["InstanceType"].startswith(("g", "p"))
    for name in ("cpu-preprocess", "gpu"):
        assert 0 <= types[name]["min_workers"] < types[name]["max_workers"] <= config["max_workers"]
    for node in types.values():
        assert "IamInstanceProfile" in node["node_config"]  # S3 through instance roles
        assert all(d["Ebs"]["Encrypted"] for d in node["node_config"]["BlockDeviceMappings"])
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(config["docker"]["run_options"])
    assert any("-c ~/mllm-dr/constraints.txt" in c for c in config["setup_commands"])
    text = (CLUSTER / "aws.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "aws_access_key_id" not in text.lower()


# --- KubeRay --------------------------------------------------------------------------------------------------

def _strict(schema: dict) -> dict:
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema that rejects undeclared fields.

    ``x-kubernetes-*`` keys and the int32/int64/int-or-string formats are ignored by ``jsonschema`` as unknown
    annotations; int-or-string fields carry ``anyOf: [integer, string]``, which ``jsonschema`` applies as is.
    """
    schema = dict(schema)
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    for key in ("properties", "patternProperties"):
        if key in schema:
            schema[key] = {name: _strict(sub) for name, sub in schema[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            schema[key] = _strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [_strict(sub) for sub in schema[key]]
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema


@functools.cache
def crd_schema(kind: str) -> dict:
    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    if not path.exists():
        pytest.fail(f"KubeRay CRDs not found at {CRDS}: a checkout needs shared/ beside the repository")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 20k lines: use libyaml
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(version["schema"]["openAPIV3Schema"])


def manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / "kuberay" / name).read_text())


@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob"),
                                        ("rayservice.yaml", "RayService")])
def test_kuberay_manifest_validates_against_crd(name, kind):
    doc = manifest(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    jsonschema.validate(doc, crd_schema(kind))


def test_crd_validation_catches_a_misspelt_field():
    """The strict conversion is what makes the test above able to fail on a typo."""
    doc = manifest("raycluster.yaml")
    doc["spec"]["enableInTreeAutoscalin"] = doc["spec"].pop("enableInTreeAutoscaling")
    with pytest.raises(jsonschema.ValidationError, match="enableInTreeAutoscalin"):
        jsonschema.validate(doc, crd_schema("RayCluster"))


def _cluster_specs() -> list[tuple[str, dict]]:
    cluster = manifest("raycluster.yaml")["spec"]
    job = manifest("rayjob.yaml")["spec"]["rayClusterSpec"]
    service = manifest("rayservice.yaml")["spec"]["rayClusterConfig"]
    return [("raycluster", cluster), ("rayjob", job), ("rayservice", service)]


@pytest.mark.parametrize("name, spec", _cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_clusters_are_secure_by_default(name, spec):
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    assert any("nvidia.com/gpu" in c["resources"]["limits"]
               for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])
    for group in groups:
        pod = group["template"]["spec"]
        assert pod["serviceAccountName"] == "mllm-dr-ray"  # S3 via IRSA
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            for var in container.get("env", []):
                assert "value" not in var or not any(s in var["name"] for s in ("TOKEN", "SECRET", "PASSWORD"))
    text = yaml.safe_dump(spec)
    assert "LoadBalancer" not in text and "NodePort" not in text and "AWS_SECRET_ACCESS_KEY" not in text


def test_service_account_uses_irsa():
    account = manifest("serviceaccount.yaml")
    assert account["kind"] == "ServiceAccount" and account["metadata"]["name"] == "mllm-dr-ray"
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_rayservice_serves_exactly_serve_config_yaml():
    serve_config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    served = yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])
    assert served == serve_config


def test_rayjob_trains_with_a_valid_mllm_dr_command():
    spec = manifest("rayjob.yaml")["spec"]
    words = spec["entrypoint"].split()
    assert words[:2] == ["mllm-dr", "train"]
    args = build_parser().parse_args(words[1:])
    assert (REPO / Path(args.config).relative_to("/home/ray/mllm-dr")).exists()  # the image holds the repository
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert not any("TOKEN" in k or "SECRET" in k for k in runtime_env.get("env_vars", {}))


# --- job specs ------------------------------------------------------------------------------------------------

def test_every_stage_has_a_job_spec():
    assert {p.stem for p in JOB_SPECS} == STAGES


@pytest.mark.parametrize("path", JOB_SPECS, ids=lambda p: p.name)
def test_job_spec_parses_and_its_entrypoint_is_an_mllm_dr_command(path):
    spec = load_job_spec(path)
    words = spec.entrypoint.split()
    assert words[0] == "mllm-dr"
    args = build_parser().parse_args(words[1:])
    assert args.command == path.stem
    env = spec.runtime_env
    assert Path(env.working_dir) == REPO  # relative to the spec file, wherever it is submitted from
    assert [Path(m) for m in env.py_modules] == [REPO / "platform" / "mllm_dr"]
    assert any("constraints.txt" in line for line in env.pip.packages)
    config = getattr(args, "config", None)  # relative to working_dir, the repository
    assert config is None or (REPO / config).exists(), f"{config} referenced by {path.name} is missing"


def _entrypoint_args(stage: str):
    return build_parser().parse_args(load_job_spec(REPO / "jobs" / f"{stage}.yaml").entrypoint.split()[1:])


def test_the_stages_chain_together_on_the_cluster():
    """What one stage writes is what the next reads, down to the model that serve/config.yaml serves."""
    from mllm_dr.config import load_config
    from mllm_dr.train.config import TrainConfig

    preprocess, distill, train = (_entrypoint_args(s) for s in ("preprocess", "distill", "train"))
    evaluate, score = _entrypoint_args("evaluate"), _entrypoint_args("score")
    config = load_config(TrainConfig, REPO / train.config)
    assert config.data.store == preprocess.out == distill.store == evaluate.store
    assert config.data.rationales == distill.out
    served = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())["applications"][0]["args"]["model"]
    assert evaluate.model == score.model == served["bundle"]
    assert config.model.base_llm == served["base_llm"]


def test_dry_run_prints_the_equivalent_ray_job_submit_command(cli):
    result = cli("submit", str(REPO / "jobs" / "train.yaml"), "--dry-run", "--address", "http://10.0.0.1:8265")
    assert result.returncode == 0, result.stderr
    command = result.stdout.strip()
    assert command.startswith("ray job submit --address http://10.0.0.1:8265 --runtime-env-json ")
    assert command.endswith(" -- " + load_job_spec(REPO / "jobs" / "train.yaml").entrypoint)


@pytest.mark.parametrize("name, value", [
    ("AWS_SECRET_ACCESS_KEY", "abc"), ("AWS_ACCESS_KEY_ID", "AKIA0000"), ("HF_TOKEN", "hf_x"),
    ("MLLM_DR_API_TOKENS", "t1,t2"), ("DB_PASSWORD", "pw"), ("OPENAI_API_KEY", "sk-x"),
    ("TEACHER_URL", "https://user:pw@teacher.example/v1"),
])
def test_a_spec_with_a_credential_in_its_env_is_refused(tmp_path, cli, name, value):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"entrypoint": "mllm-dr synth --out /tmp/x",
                                    "runtime_env": {"env_vars": {name: value}}}))
    with pytest.raises(UserError, match=name):
        load_job_spec(spec)
    result = cli("submit", str(spec), "--address", "http://127.0.0.1:1")  # refused before any connection
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and name in result.stderr
    assert value not in result.stderr


@pytest.mark.parametrize("entrypoint, message", [
    ("python train.py", "must be an mllm-dr command"),
    ("mllm-dr trian --config x.yaml", "invalid choice"),
    ("mllm-dr preprocess --source a", "--out"),
    ("mllm-dr submit jobs/train.yaml", "cannot be 'mllm-dr submit'"),
])
def test_a_spec_whose_entrypoint_is_not_a_valid_command_is_refused(tmp_path, entrypoint, message):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"entrypoint": entrypoint}))
    with pytest.raises(UserError, match=message) as info:
        load_job_spec(spec)
    assert "\n" not in str(info.value)


def test_unknown_spec_keys_and_missing_paths_are_refused(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("entrypoint: mllm-dr synth --out x\nentrypoint_num_gpu: 1\n")
    with pytest.raises(UserError, match="entrypoint_num_gpu"):
        load_job_spec(spec)
    spec.write_text("entrypoint: mllm-dr synth --out x\nruntime_env: {working_dir: ../nowhere}\n")
    with pytest.raises(UserError, match="not found"):
        load_job_spec(spec)


def test_no_address_is_a_one_line_error(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("entrypoint: mllm-dr synth --out x\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    result = subprocess.run([sys.executable, "-m", "mllm_dr.cli", "submit", str(spec)], capture_output=True,
                            text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2 and "no cluster address" in result.stderr
