"""Typed errors. Every message says what is wrong and what to do about it."""


class LegoEmbedError(Exception):
    """Base class of every error lego_embed raises on bad input or set-up."""


class ModelNotFoundError(LegoEmbedError):
    """The model folder does not exist or holds no config/weights."""


class UnsupportedArchitectureError(LegoEmbedError):
    """The model's architecture (model_type, rope type, activation, quantization) is not one
    our decoder runs."""


class ModelConfigError(LegoEmbedError):
    """A model's config.json is malformed or lacks a required field."""


class ModelWeightsError(LegoEmbedError):
    """A model's safetensors checkpoint is damaged, lacks a shard or a tensor, or has a tensor
    of the wrong shape for its config.json."""


class TokenizerMissingError(LegoEmbedError):
    """The model folder has no readable tokenizer.json, or its special tokens are not in it."""


class PromptTooLongError(LegoEmbedError):
    """The prompt plus the tokens to generate exceed the model's context length."""


class InvalidPromptError(LegoEmbedError):
    """A prompt is empty, has token ids outside the vocabulary, or does not match its prefix."""


class LayerPlanError(LegoEmbedError):
    """A layer plan does not cover every decoder layer exactly once, in order."""


class ExecutorUsageError(LegoEmbedError):
    """The executor was asked for something a request's state does not allow (stepping a
    finished request, changing the plan mid-pass, batching different subtasks)."""


class CostProfileError(LegoEmbedError):
    """A cost profile file is missing or malformed, or has no entry for the subtask asked for."""


class InvalidGameStateError(LegoEmbedError):
    """A game state is missing a field, has a wrong type, or a value out of range."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"game state field '{field}': {problem}")
        self.field = field


class InvalidActionSetError(LegoEmbedError):
    """The allowed actions are empty, repeated, or not encodable by the tokenizer."""


class OutputSpecError(LegoEmbedError):
    """An output spec (choice, line, choice then line) has an invalid limit or stop string."""


class PromptTemplateError(LegoEmbedError):
    """A prompt template is malformed, names a field it was not declared with, or a request
    lacks a field the template needs; the message names the field."""


class ChatTemplateError(LegoEmbedError):
    """A model's chat template cannot be read or rendered."""


class TraceFormatError(LegoEmbedError):
    """A render trace file cannot be read: missing columns, no usable rows."""


class InvalidEngineEventError(LegoEmbedError):
    """An engine event has an unknown kind or a timestamp that is not a monotonic ns integer."""


class RuntimeConfigError(LegoEmbedError):
    """A runtime configuration value (policy, margins, window) is out of range."""


class SkipBundleError(LegoEmbedError):
    """A layer-skipping bundle is missing, malformed, or made for another model."""


class WorkloadSpecError(LegoEmbedError):
    """A fleet workload or cluster file is missing fields or has invalid values."""


class CalibrationError(LegoEmbedError):
    """A component file for the serving twin is missing tables or columns."""


class EngineBridgeError(LegoEmbedError):
    """The Godot bridge was called out of order (before start, while the model loads) or with
    bad project settings."""


class WorkerFaultError(LegoEmbedError):
    """The runtime's worker hit an internal error while a request was in flight; the request was
    dropped and the worker restarted with its state reset (the traceback is in the log)."""


class RequestOverdueError(LegoEmbedError):
    """A request had no answer long after its deadline (e.g. the engine stayed inside a render
    pass, or reported no headroom at all); it was failed rather than left waiting."""


class RuntimeFailedError(LegoEmbedError):
    """The runtime's worker failed repeatedly and stopped; requests are refused until the runtime
    is restarted (stop(), start())."""


class RuntimeStoppedError(LegoEmbedError):
    """The runtime was stopped (stop()) before a request was answered, or a request came after
    stop(); call start() again to decide."""


class BenchmarkConfigError(LegoEmbedError):
    """A benchmark option is malformed or out of range (e.g. a hitch outside the replay)."""
