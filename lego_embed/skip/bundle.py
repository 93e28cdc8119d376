"""SkipBundle: every skip level of one model, its adaptors and their measured effect.

On disk a bundle is a folder with ``manifest.json`` and ``adaptors.safetensors``. The manifest
names the model it was made for (family, sizes, SHA-256 of its weights file), and for each
level: the skipped span, the adaptor's shape and bytes, and what was measured (decision
accuracy, perplexity, cost saving, distillation quality). Level 0 is the full model and is not
listed; levels 1..n skip more and more layers. All adaptors are loaded at once (they are tiny);
``total_resident_bytes`` is what that costs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lego_embed.errors import SkipBundleError
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan
from lego_embed.model.loading import LoadedModel
from lego_embed.skip.adaptor import ADAPTOR_ACTIVATION, AdaptorShape, SpanAdaptor
from lego_embed.skip.spans import Span

FORMAT = "lego_embed.skip_bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "adaptors.safetensors"
MODEL_WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model a bundle belongs to. weights_sha256: hex digest of the model folder's
    model.safetensors ("" when the model was not loaded from such a file)."""

    family: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    weights_sha256: str

    @classmethod
    def of(cls, loaded: LoadedModel) -> ModelIdentity:
        weights = Path(loaded.path) / MODEL_WEIGHTS_NAME
        digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else ""
        return cls(
            family=loaded.family,
            num_layers=loaded.num_layers,
            hidden_size=loaded.args.hidden_size,
            vocab_size=loaded.args.vocab_size,
            weights_sha256=digest,
        )

    def mismatches(self, other: ModelIdentity) -> list[str]:
        """Human-readable differences that make a bundle unusable with ``other``."""
        problems = [
            f"{name}: bundle {getattr(self, name)!r}, model {getattr(other, name)!r}"
            for name in ("family", "num_layers", "hidden_size", "vocab_size")
            if getattr(self, name) != getattr(other, name)
        ]
        if self.weights_sha256 and other.weights_sha256 and (
            self.weights_sha256 != other.weights_sha256
        ):
            problems.append("weights_sha256: the model's weights differ from the bundle's model")
        return problems


@dataclass(frozen=True)
class SkipLevel:
    """One skip level.

    level: 1..n (0 is the full model). span: the replaced layers. adaptor_shape / adaptor_bytes:
    the adaptor's sizes and its weights' size in bytes (float32 on disk). Measured, None until
    measured: accuracy (decision agreement with the expert policy on held-out situations,
    0..1), perplexity (held-out, per token), cost_saving (fraction of the full model's decoder
    time per decode step saved, 0..1). distill: distillation facts (seconds, unexplained
    fraction of the span's residual change, final KL in nats/token)."""

    level: int
    span: Span
    adaptor_shape: AdaptorShape
    adaptor_bytes: int
    accuracy: float | None = None
    perplexity: float | None = None
    cost_saving: float | None = None
    distill: dict[str, float | None] = field(default_factory=dict)

    @property
    def skipped_layers(self) -> int:
        return self.span.skipped_layers

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "skipped_layers": self.skipped_layers,
            "span": [self.span.first_layer, self.span.last_layer],
            "adaptor_shape": asdict(self.adaptor_shape),
            "adaptor_bytes": self.adaptor_bytes,
            "accuracy": self.accuracy,
            "perplexity": self.perplexity,
            "cost_saving": self.cost_saving,
            "distill": self.distill,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SkipLevel:
        first, last = data["span"]
        span = Span(int(first), int(last))
        if int(data["skipped_layers"]) != span.skipped_layers:
            raise SkipBundleError(
                f"level {data['level']}: skipped_layers {data['skipped_layers']} does not match "
                f"span {first}..{last}; rebuild the bundle with `lego-embed skip build`"
            )
        return cls(
            level=int(data["level"]),
            span=span,
            adaptor_shape=AdaptorShape(**data["adaptor_shape"]),
            adaptor_bytes=int(data["adaptor_bytes"]),
            accuracy=data.get("accuracy"),
            perplexity=data.get("perplexity"),
            cost_saving=data.get("cost_saving"),
            distill=dict(data.get("distill", {})),
        )


class SkipBundle:
    """All skip levels of one model with their adaptors, ready to hand plans to the executor.

    ``full_model`` holds the full model's measured accuracy/perplexity (level 0), ``calibration``
    how the bundle was made (free-form facts, e.g. number of calibration prompts and seeds)."""

    def __init__(
        self,
        identity: ModelIdentity,
        levels: list[SkipLevel],
        adaptors: dict[int, SpanAdaptor],
        full_model: dict[str, float | None] | None = None,
        calibration: dict[str, Any] | None = None,
    ) -> None:
        numbers = [lv.level for lv in levels]
        if numbers != list(range(1, len(levels) + 1)):
            raise SkipBundleError(
                f"levels must be numbered 1..n in order, got {numbers}; rebuild the bundle"
            )
        if set(adaptors) != set(numbers):
            raise SkipBundleError(
                f"adaptors for levels {sorted(adaptors)} but manifest levels {numbers}"
            )
        for lv in levels:
            if not 1 <= lv.span.first_layer <= lv.span.last_layer < identity.num_layers:
                raise SkipBundleError(
                    f"level {lv.level} span {lv.span.first_layer}..{lv.span.last_layer} must lie "
                    f"within layers 1..{identity.num_layers - 1} (layer 0 always runs)"
                )
        self.identity = identity
        self.levels = levels
        self.adaptors = adaptors
        self.full_model = dict(full_model or {})
        self.calibration = dict(calibration or {})

    @property
    def max_level(self) -> int:
        return len(self.levels)

    @property
    def total_resident_bytes(self) -> int:
        """Bytes of all levels' adaptor weights as currently held in memory."""
        return sum(adaptor.weight_bytes for adaptor in self.adaptors.values())

    def level(self, level: int) -> SkipLevel:
        """The level's description (1..max_level)."""
        if not 1 <= level <= self.max_level:
            raise SkipBundleError(
                f"skip level {level} does not exist; this bundle has levels 1..{self.max_level} "
                "(0 = full model)"
            )
        return self.levels[level - 1]

    def plan(self, level: int) -> LayerPlan:
        """The executor's layer plan for ``level``: level 0 runs every layer; level n runs its
        adaptor as one step in place of its span."""
        if level == 0:
            return LayerPlan.full(self.identity.num_layers)
        span = self.level(level).span
        steps: list[int | AdaptorStep] = list(range(span.first_layer))
        steps.append(AdaptorStep(span.first_layer, span.last_layer, self.adaptors[level]))
        steps.extend(range(span.last_layer + 1, self.identity.num_layers))
        return LayerPlan(tuple(steps)).validate(self.identity.num_layers)

    def with_measurements(self, level: int, **measured: Any) -> SkipBundle:
        """A bundle whose ``level`` carries the given measured fields (accuracy, perplexity,
        cost_saving); adaptors are shared, not copied."""
        levels = [replace(lv, **measured) if lv.level == level else lv for lv in self.levels]
        return SkipBundle(self.identity, levels, self.adaptors, self.full_model, self.calibration)

    def check_model(self, loaded: LoadedModel) -> None:
        """Raises SkipBundleError if the bundle was made for another model than ``loaded``."""
        problems = self.identity.mismatches(ModelIdentity.of(loaded))
        if problems:
            raise SkipBundleError(
                f"this skip bundle was made for another model ({'; '.join(problems)}); "
                f"build one for {loaded.path} with `lego-embed skip build --model {loaded.path}`"
            )

    def to(self, device: torch.device | str, dtype: torch.dtype) -> SkipBundle:
        """Moves every adaptor to ``device`` and ``dtype`` (in place); returns self."""
        for adaptor in self.adaptors.values():
            adaptor.to(device=device, dtype=dtype)
        return self

    def manifest(self) -> dict[str, Any]:
        """The manifest as written to manifest.json."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": asdict(self.identity),
            "weights_file": WEIGHTS_NAME,
            "adaptor_structure": f"x + down({ADAPTOR_ACTIVATION}(up(rms_norm(x))))",
            "full_model": self.full_model,
            "levels": [lv.to_json() for lv in self.levels],
            "total_resident_bytes": sum(lv.adaptor_bytes for lv in self.levels),
            "calibration": self.calibration,
        }

    def save(self, folder: Path) -> None:
        """Writes manifest.json and adaptors.safetensors (float32) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"level{level}.{name}": tensor.detach().to("cpu", torch.float32).contiguous()
            for level, adaptor in self.adaptors.items()
            for name, tensor in adaptor.state_dict().items()
        }
        save_file(tensors, str(folder / WEIGHTS_NAME))
        (folder / MANIFEST_NAME).write_text(json.dumps(self.manifest(), indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path | str, loaded: LoadedModel | None = None) -> SkipBundle:
        """Reads a bundle folder. With ``loaded``, checks that the bundle belongs to that model
        and moves the adaptors to its device and dtype. Raises SkipBundleError on a missing,
        malformed or mismatched bundle."""
        folder = Path(folder)
        manifest_path = folder / MANIFEST_NAME
        if not manifest_path.is_file():
            raise SkipBundleError(
                f"no skip bundle at {folder} (missing {MANIFEST_NAME}); build one with "
                "`lego-embed skip build --model PATH`"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise SkipBundleError(f"{manifest_path} is not valid JSON ({error})") from error
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise SkipBundleError(f"{manifest_path} is not a lego_embed skip bundle manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise SkipBundleError(
                f"{manifest_path} has format_version {manifest.get('format_version')!r}; this "
                f"lego_embed reads version {FORMAT_VERSION}: rebuild with `lego-embed skip build`"
            )
        try:
            identity = ModelIdentity(**manifest["model"])
            levels = [SkipLevel.from_json(item) for item in manifest["levels"]]
        except (KeyError, TypeError, ValueError) as error:
            raise SkipBundleError(
                f"{manifest_path} is missing or has malformed fields ({error!r}); rebuild it"
            ) from error
        adaptors = cls._load_adaptors(folder / WEIGHTS_NAME, levels)
        bundle = cls(identity, levels, adaptors, manifest.get("full_model"),
                     manifest.get("calibration"))
        if loaded is not None:
            bundle.check_model(loaded)
            bundle.to(loaded.device, loaded.dtype)
        return bundle

    @staticmethod
    def _load_adaptors(weights_path: Path, levels: list[SkipLevel]) -> dict[int, SpanAdaptor]:
        if not weights_path.is_file():
            raise SkipBundleError(
                f"skip bundle weights {weights_path} are missing; copy the whole bundle folder "
                "or rebuild it"
            )
        try:
            tensors = load_file(str(weights_path))
        except Exception as error:  # safetensors raises its own exception types
            raise SkipBundleError(f"cannot read {weights_path} ({error})") from error
        adaptors = {}
        for lv in levels:
            adaptor = SpanAdaptor(lv.adaptor_shape)
            prefix = f"level{lv.level}."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            expected = {k: tuple(v.shape) for k, v in adaptor.state_dict().items()}
            found = {k: tuple(v.shape) for k, v in state.items()}
            if found != expected:
                raise SkipBundleError(
                    f"level {lv.level} adaptor tensors {found} do not match the manifest's "
                    f"shape {expected}; the bundle is damaged: rebuild it"
                )
            adaptor.load_state_dict(state)
            adaptor.eval()
            adaptors[lv.level] = adaptor
        return adaptors
