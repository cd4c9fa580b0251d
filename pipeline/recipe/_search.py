"""The recipe sections of compression and search: a layer's plan, the fixed plan's rules, and
what the per-task search may choose, how it scores and which Pareto point it commits.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.recipe._pattern import Pattern
from pipeline.recipe._section import (
    BITS,
    MAX_BATCH,
    MAX_EPOCHS,
    Name,
    Seed,
    _Section,
    check_regex,
)
from pipeline.recipe._storage import check_storage_url


class LayerPlan(_Section):
    """How one layer's own weights are compressed: the contract between search and pipeline."""

    sparsity: float = Field(default=0.0, ge=0, lt=1,
                            description="fraction of own weights removed")
    pattern: str = Field(default="unstructured", max_length=64,
                         description="unstructured | n:m | block(h,w) | channel")
    bits: int = Field(default=32, description=f"one of {BITS}")

    @field_validator("pattern")
    @classmethod
    def _pattern_ok(cls, v: str) -> str:
        return str(Pattern.parse(v))

    @field_validator("bits")
    @classmethod
    def _bits_ok(cls, v: int) -> int:
        if v not in BITS:
            raise ValueError(f"must be one of {list(BITS)}, got {v}")
        return v


class LayerRule(LayerPlan):
    """A LayerPlan for the layers whose qualified name equals ``match`` or matches it as regex."""

    match: str = Field(min_length=1, max_length=1024)

    @field_validator("match")
    @classmethod
    def _regex_ok(cls, v: str) -> str:
        return check_regex(v)


class CompressionConfig(_Section):
    """Default plan plus per-layer rules (exact name first, then regex, then default)."""

    default: LayerPlan = LayerPlan()
    rules: list[LayerRule] = []


class SearchSpaceRule(_Section):
    """What the search may choose for the layers whose name equals or matches ``match``."""

    match: str = Field(default=".*", min_length=1, max_length=1024)
    sparsity: tuple[float, float] = Field(default=(0.0, 0.9), strict=False,
                                          description="[low, high] fraction of own weights")
    sparsity_step: float = Field(default=0.1, gt=0, le=1)
    patterns: list[Annotated[str, Field(max_length=64)]] = Field(
        default=["unstructured", "block(16,1)"], min_length=1, max_length=64)
    bits: list[int] = Field(default=[4, 8, 32], min_length=1, max_length=len(BITS))

    @model_validator(mode="after")
    def _check(self) -> SearchSpaceRule:
        lo, hi = self.sparsity
        if not 0 <= lo <= hi < 1:
            raise ValueError(f"`0 <= low <= high < 1` must hold for sparsity, got ({lo}, {hi})")
        for p in self.patterns:
            LayerPlan(pattern=p)
        for b in self.bits:
            LayerPlan(bits=b)
        try:
            check_regex(self.match)
        except ValueError as e:
            raise ValueError(f"match is {e}") from None
        return self


class SearchConstraints(_Section):
    """Limits a chosen plan must meet (Optuna constraints: violated trials are infeasible)."""

    max_acc_drop: Annotated[float, Field(ge=0, le=100)] | None = Field(
        default=1.0, description="points of validation accuracy below the uncompressed task")
    max_latency_ms: Annotated[float, Field(gt=0, le=3_600_000)] | None = None
    max_bytes: Annotated[int, Field(gt=0, le=1 << 50)] | None = Field(
        default=None, description="bytes the task may add to the store")


class SelectionConfig(_Section):
    """Which Pareto point is committed."""

    policy: Literal["min_latency_within_acc_drop", "max_accuracy_under_latency_ms", "knee"] = (
        "min_latency_within_acc_drop")
    value: Annotated[float, Field(ge=0, le=3_600_000)] | None = Field(
        default=0.5, description="the drop (points) or the latency (ms) the policy names")

    @model_validator(mode="after")
    def _value_needed(self) -> SelectionConfig:
        if self.policy != "knee" and self.value is None:
            raise ValueError(f"policy {self.policy!r} needs a `value`")
        return self


class SearchConfig(_Section):
    """Per-task Optuna search over LayerPlans, scored by accuracy, compiled latency and bytes."""

    enabled: bool = False
    trials: int = Field(default=16, ge=1, le=100_000)
    timeout_s: Annotated[float, Field(gt=0, le=30 * 86_400)] | None = None
    sampler: Literal["nsga2", "tpe", "random"] = "nsga2"
    seed: Seed = Field(default=0, description="task t's sampler is seeded with seed + t")
    storage: Annotated[str, Field(max_length=4096)] | None = Field(
        default=None, description="None: a journal file under the run folder; or an RDB URL "
        "shared by several workers: sqlite:///path, postgresql://... or postgresql+psycopg://...")
    space: list[SearchSpaceRule] = Field(default=[SearchSpaceRule()], min_length=1,
                                         max_length=1024)
    objectives: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]] = Field(
        default=["accuracy", "latency", "bytes"], min_length=1, max_length=16,
        description="registered search objectives (built in: accuracy, latency, bytes)")
    constraints: SearchConstraints = SearchConstraints()
    selection: SelectionConfig = SelectionConfig()
    finetune_epochs: float = Field(
        default=0, ge=0, le=MAX_EPOCHS,
        description="own-weight fine-tune per trial, epochs; a fraction trains that share of "
        "one epoch's batches")
    finetune_lr: Annotated[float, Field(gt=0, le=10)] | None = Field(
        default=None, description="Adam learning rate of the per-trial fine-tune; None: "
        "train.lr / 10")
    warm_start: bool = Field(default=True,
                             description="task t's first trial is task t-1's chosen plan")
    latency_batch: int = Field(
        default=1, ge=1, le=MAX_BATCH,
        description="batch of the search's latency measurement; >= 2 with model.norm "
        "stateless (batch statistics)")
    target: Name | None = Field(default=None, description="target name; None = the first")

    # RDB storages only: a worker records a heartbeat every heartbeat_s while it runs a trial; a
    # trial silent for grace_s (its worker died) is failed and asked again. Generous by default:
    # a trial whose process is busy in a long TVM build must not be taken for dead.
    heartbeat_s: int = Field(default=10, ge=1, le=3600,
                             description="RDB storage: seconds between a trial's heartbeats")
    grace_s: int = Field(default=120, ge=2, le=86400,
                         description="RDB storage: a running trial with no heartbeat for this "
                                     "long is failed and retried")

    @field_validator("storage")
    @classmethod
    def _storage_ok(cls, v: str | None) -> str | None:
        return None if v is None else check_storage_url(v)

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> SearchConfig:
        if self.grace_s <= self.heartbeat_s:
            raise ValueError("`heartbeat_s < grace_s` must hold, but got "
                             f"(heartbeat_s={self.heartbeat_s}, grace_s={self.grace_s})")
        return self
