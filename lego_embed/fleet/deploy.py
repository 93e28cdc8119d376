"""Deployment files of a plan for Kubernetes: one vLLM Deployment + Service per planned instance
(pinned image, GPU request, node, health probes, adapters from a mounted volume by absolute
path, runtime LoRA loading on), and the LiteLLM proxy as the router: its config sends each
request to the instances holding the requested adapter, weighted by each replica's traffic
share. docs/FLEET.md says why these two.

The adapter list of an instance lives in a ConfigMap read when the pod starts, so that applying
the manifests of a re-plan changes no Deployment (no restart) while the runtime LoRA calls move
the adapters; a pod that restarts later starts with its current list.
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

from lego_embed.fleet.placement import GpuAssignment
from lego_embed.fleet.planner import FleetPlan
from lego_embed.fleet.spec import StorageSpec

VLLM_PORT = 8000
ROUTER_PORT = 4000
LITELLM_VERSION = "1.110.2"
LITELLM_IMAGE = f"ghcr.io/berriai/litellm:main-v{LITELLM_VERSION}"
LORA_LIST_DIR = "/etc/lego-fleet"
PART_OF = "lego-fleet"


def service_url(name: str, namespace: str) -> str:
    """In-cluster base URL of an instance's Service."""
    return f"http://{name}.{namespace}.svc.cluster.local:{VLLM_PORT}"


def _labels(instance: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/instance": instance,
            "app.kubernetes.io/part-of": PART_OF}


def _volume(name: str, storage: StorageSpec, read_only: bool) -> dict[str, Any]:
    if storage.kind == "pvc":
        return {"name": name, "persistentVolumeClaim": {"claimName": storage.claim_name,
                                                        "readOnly": read_only}}
    if storage.kind == "host_path":
        return {"name": name, "hostPath": {"path": storage.host_path, "type": "Directory"}}
    return {"name": name, "nfs": {"server": storage.server, "path": storage.path,
                                  "readOnly": read_only}}


def lora_modules(gpu: GpuAssignment, fleet: FleetPlan) -> str:
    """The --lora-modules value of an instance: name=absolute path for every adapter."""
    mount = fleet.cluster.adapter_storage.mount_path
    return " ".join(f"{a.adapter_id}={mount}/{a.adapter_id}" for a in gpu.adapters)


def serve_arguments(gpu: GpuAssignment, fleet: FleetPlan) -> list[str]:
    """The vLLM OpenAI server's flags for an instance (the adapters come from the ConfigMap)."""
    return ["--model", fleet.calibration.hf_model_id, "--host", "0.0.0.0",
            "--port", str(VLLM_PORT), "--max-model-len", str(fleet.workload.max_model_len),
            "--enable-lora", "--max-loras", str(gpu.max_loras),
            "--max-cpu-loras", str(gpu.max_cpu_loras),
            "--max-lora-rank", str(gpu.max_lora_rank), "--max-num-seqs", "2048"]


def _probe(period_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": period_s,
            "timeoutSeconds": 5, "failureThreshold": failures}


def instance_manifests(gpu: GpuAssignment, fleet: FleetPlan) -> list[dict[str, Any]]:
    """ConfigMap (adapter list), Deployment and Service of one vLLM instance."""
    namespace = fleet.cluster.namespace
    labels = _labels(gpu.name, "vllm")
    command = ("exec python3 -m vllm.entrypoints.openai.api_server "
               + " ".join(shlex.quote(a) for a in serve_arguments(gpu, fleet))
               + f" --lora-modules $(cat {LORA_LIST_DIR}/lora-modules)")
    mounts = [{"name": "adapters", "mountPath": fleet.cluster.adapter_storage.mount_path,
               "readOnly": True},
              {"name": "lora-list", "mountPath": LORA_LIST_DIR, "readOnly": True},
              {"name": "shm", "mountPath": "/dev/shm"}]
    volumes = [_volume("adapters", fleet.cluster.adapter_storage, read_only=True),
               {"name": "lora-list", "configMap": {"name": f"{gpu.name}-adapters"}},
               {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]
    env = [{"name": fleet.rules.runtime_lora_env, "value": "True"}]
    if fleet.cluster.model_cache is not None:
        mounts.append({"name": "model-cache", "mountPath": fleet.cluster.model_cache.mount_path})
        volumes.append(_volume("model-cache", fleet.cluster.model_cache, read_only=False))
        env.append({"name": "HF_HOME", "value": fleet.cluster.model_cache.mount_path})
    pod: dict[str, Any] = {
        "containers": [{
            "name": "vllm", "image": fleet.rules.image, "command": ["/bin/sh", "-c", command],
            "env": env,
            "ports": [{"name": "http", "containerPort": VLLM_PORT}],
            "resources": {"limits": {"nvidia.com/gpu": "1"},
                          "requests": {"nvidia.com/gpu": "1"}},
            "volumeMounts": mounts,
            "startupProbe": _probe(10, 90),
            "readinessProbe": _probe(5, 3),
            "livenessProbe": _probe(15, 4),
        }],
        "volumes": volumes,
    }
    if gpu.node:
        pod["nodeSelector"] = {"kubernetes.io/hostname": gpu.node}

    def metadata(name: str) -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "labels": dict(labels)}

    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(f"{gpu.name}-adapters"),
         "data": {"lora-modules": lora_modules(gpu, fleet)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(gpu.name),
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                  "selector": {"matchLabels": {"app.kubernetes.io/instance": gpu.name}},
                  "template": {"metadata": {"labels": dict(labels)}, "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": metadata(gpu.name),
         "spec": {"selector": {"app.kubernetes.io/instance": gpu.name},
                  "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": "http"}]}},
    ]


def routes(fleet: FleetPlan) -> dict[str, list[tuple[str, float]]]:
    """Adapter id -> [(instance, share of the adapter's traffic)] over its replicas."""
    out: dict[str, list[tuple[str, float]]] = {}
    total = {a.adapter_id: a.rate_req_s for a in fleet.workload.adapters}
    for gpu in fleet.plan.gpus:
        for adapter in gpu.adapters:
            out.setdefault(adapter.adapter_id, []).append(
                (gpu.name, adapter.rate_req_s / total[adapter.adapter_id]))
    return out


def router_config(fleet: FleetPlan) -> dict[str, Any]:
    """LiteLLM proxy config: one deployment per (adapter, replica), model_name = adapter id,
    weight = its share (simple-shuffle picks replicas in proportion to weight)."""
    namespace = fleet.cluster.namespace
    model_list = [
        {"model_name": adapter_id,
         "litellm_params": {"model": f"hosted_vllm/{adapter_id}",
                            "api_base": service_url(instance, namespace) + "/v1",
                            "weight": round(share, 6)},
         "model_info": {"id": f"{adapter_id}@{instance}"}}
        for adapter_id, replicas in sorted(routes(fleet).items())
        for instance, share in replicas]
    return {"model_list": model_list,
            "router_settings": {"routing_strategy": "simple-shuffle", "num_retries": 2,
                                "timeout": 600, "allowed_fails": 3, "cooldown_time": 30}}


def router_manifests(fleet: FleetPlan, config_yaml: str) -> list[dict[str, Any]]:
    """ConfigMap with the LiteLLM config, its Deployment (2 replicas, rolled when the config
    changes: the pod template carries the config's hash) and Service."""
    namespace = fleet.cluster.namespace
    digest = hashlib.sha256(config_yaml.encode()).hexdigest()[:16]
    labels = _labels("npc-router", "litellm")

    def metadata(name: str) -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "labels": dict(labels)}

    def probe(path: str, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": 10,
                "failureThreshold": failures}

    pod = {"containers": [{
        "name": "litellm", "image": LITELLM_IMAGE,
        "args": ["--config", "/etc/litellm/config.yaml", "--port", str(ROUTER_PORT)],
        "ports": [{"name": "http", "containerPort": ROUTER_PORT}],
        "volumeMounts": [{"name": "config", "mountPath": "/etc/litellm", "readOnly": True}],
        "readinessProbe": probe("/health/readiness", 3),
        "livenessProbe": probe("/health/liveliness", 6)}],
        "volumes": [{"name": "config", "configMap": {"name": "npc-router-config"}}]}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata("npc-router-config"),
         "data": {"config.yaml": config_yaml}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata("npc-router"),
         "spec": {"replicas": 2,
                  "selector": {"matchLabels": {"app.kubernetes.io/instance": "npc-router"}},
                  "template": {"metadata": {
                      "labels": dict(labels),
                      "annotations": {f"{PART_OF}/config-sha256": digest}},
                      "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": metadata("npc-router"),
         "spec": {"selector": {"app.kubernetes.io/instance": "npc-router"},
                  "ports": [{"name": "http", "port": ROUTER_PORT, "targetPort": "http"}]}},
    ]
