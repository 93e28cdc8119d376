"""Deployment files checked by the stack's own validators: every Kubernetes manifest against the
Kubernetes OpenAPI schema (kubernetes-validate, strict: unknown fields fail), the router config by
LiteLLM's own Router, which must send each adapter to the replicas holding it in their shares."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from fleet_helpers import make_cluster

from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.planner import FleetPlan, plan_fleet
from lego_embed.fleet.spec import AdapterSpec, LatencyTargets, WorkloadSpec
from lego_embed.fleet.surrogate import Surrogate
from lego_embed.fleet.vllm_output import write_plan

KUBERNETES_VERSION = "1.31.0"


@pytest.fixture(scope="module")
def fleet(shipped_calibration: Calibration, surrogate: Surrogate) -> FleetPlan:
    adapters = (AdapterSpec("hot", 16, 40.0),
                *(AdapterSpec(f"cold{i}", 8, 0.2) for i in range(10)))
    workload = WorkloadSpec(name="hot", base_model="qwen-2.5-7b-instruct", adapters=adapters,
                            max_model_len=4096,
                            targets=LatencyTargets(ttft_ms={99: 1000.0}, itl_ms={99: 100.0}))
    fleet = plan_fleet(workload, make_cluster(4, nodes=2), shipped_calibration, surrogate, 300.0)
    assert fleet.feasible, fleet.failures
    return fleet


@pytest.fixture(scope="module")
def plan_dir(fleet: FleetPlan, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plan")
    write_plan(fleet, out)
    return out


def _documents(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def test_every_manifest_passes_the_kubernetes_schema(plan_dir: Path, fleet: FleetPlan) -> None:
    documents = _documents(plan_dir / "deploy" / "vllm.yaml") + \
        _documents(plan_dir / "deploy" / "router.yaml")
    kinds = Counter(d["kind"] for d in documents)
    assert kinds == {"ConfigMap": fleet.plan.n_gpus + 1, "Deployment": fleet.plan.n_gpus + 1,
                     "Service": fleet.plan.n_gpus + 1}
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    broken = json.loads(json.dumps(documents[1]))
    broken["spec"]["template"]["spec"]["containers"][0]["startupProbes"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_instances_are_pinned_probed_and_use_absolute_adapter_paths(plan_dir: Path,
                                                                    fleet: FleetPlan) -> None:
    documents = _documents(plan_dir / "deploy" / "vllm.yaml")
    lists = {d["metadata"]["name"]: d["data"]["lora-modules"] for d in documents
             if d["kind"] == "ConfigMap"}
    for gpu in fleet.plan.gpus:
        entries = lists[f"{gpu.name}-adapters"].split()
        assert entries == [f"{a.adapter_id}=/adapters/{a.adapter_id}" for a in gpu.adapters]
    nodes = Counter()
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == "vllm/vllm-openai:v0.8.5"
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container)
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container["env"]
        command = container["command"][2]
        gpu = next(g for g in fleet.plan.gpus if g.name == deployment["metadata"]["name"])
        for flag in (f"--max-loras {gpu.max_loras}", f"--max-lora-rank {gpu.max_lora_rank}",
                     f"--max-cpu-loras {gpu.max_cpu_loras}", "--max-model-len 4096",
                     "--host 0.0.0.0", "--model Qwen/Qwen2.5-7B-Instruct"):
            assert flag in command
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
        nodes[pod["nodeSelector"]["kubernetes.io/hostname"]] += 1
    assert all(count <= 4 for count in nodes.values())


def test_litellm_routes_each_adapter_to_its_replicas_in_their_shares(
        plan_dir: Path, fleet: FleetPlan, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    config = yaml.safe_load((plan_dir / "deploy" / "router-config.yaml").read_text())
    router = litellm.Router(model_list=config["model_list"], **config["router_settings"])
    routing = json.loads((plan_dir / "routing.json").read_text())
    assert set(routing) == {a.adapter_id for a in fleet.workload.adapters}
    picks = Counter(router.get_available_deployment(model="hot")["litellm_params"]["api_base"]
                    for _ in range(3000))
    expected = {r["url"]: r["share"] for r in routing["hot"]}
    assert set(picks) == set(expected) and len(expected) == fleet.replicas["hot"]
    for url, share in expected.items():
        assert picks[url] / 3000 == pytest.approx(share, abs=0.05)
    cold = router.get_available_deployment(model="cold3")["litellm_params"]["api_base"]
    assert cold == routing["cold3"][0]["url"]
    with pytest.raises(ValueError, match="routing_strategy"):
        litellm.Router(model_list=config["model_list"], routing_strategy="no-such-strategy")
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


def test_an_infeasible_plan_writes_no_deployment(fleet: FleetPlan, tmp_path: Path) -> None:
    fleet.failures.append("forced for the test")
    try:
        write_plan(fleet, tmp_path)
    finally:
        fleet.failures.pop()
    assert not (tmp_path / "deploy").exists()
    placement = json.loads((tmp_path / "placement.json").read_text())
    assert placement["feasible"] is False and placement["failures"] == ["forced for the test"]
