"""The ``method`` section: a config class per registered method, chosen by ``kind``.

Methods register their config here (``pipeline.methods.register_method`` does it), so a recipe
validates into the config of its ``kind`` and ``taskpack schema`` lists every registered one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.recipe._kinds import KindRegistry
from pipeline.recipe._section import BITS, _Section

__all__ = ["CLNPMethod", "ExSSNeTMethod", "MethodConfig", "MethodField", "NISPAMethod",
           "PackNetMethod", "PruneConfig", "QuantizeConfig", "RigLConfig", "SupSupMethod",
           "TSNMethod", "WSNMethod",
           "register_method_config"]


class PruneConfig(_Section):
    """TSN fine-tuned pruning (docs/methods.md); targets come from the compression plan."""

    delta: float = Field(default=0.2, ge=0, le=100,
                         description="max validation accuracy drop, points")
    steps: int = Field(default=20, ge=0, le=10_000,
                       description="pruning steps, round-robin over layers")
    step_fraction: float = Field(default=0.2, gt=0, le=1,
                                 description="fraction of a layer's own weights one step removes")
    finetune_epochs: float = Field(
        default=1, ge=0, le=10_000,
        description="retrain surviving own weights after pruning, epochs (fractions allowed)")


class QuantizeConfig(_Section):
    """TSN adaptive non-linear quantization of own weights (docs/methods.md)."""

    bits: list[int] = Field(default=[2, 3, 4, 6, 8], min_length=1, max_length=len(BITS),
                            description="candidate bit-widths, tried in ascending order")
    delta: float = Field(default=0.2, ge=0, le=100,
                         description="max validation accuracy drop, points")
    adaptive: bool = Field(default=True, description="False: use the plan's bits as given")

    @field_validator("bits")
    @classmethod
    def _bits_ok(cls, v: list[int]) -> list[int]:
        bad = [b for b in v if b not in BITS or b == 32]
        if bad:
            raise ValueError(f"must be taken from {list(BITS[:-1])}, got {bad}")
        return sorted(set(v))


class MethodConfig(_Section):
    """Base of every ``method`` section; ``kind`` picks the registered method.

    Every method's tasks go through the compression passes (``prune``, ``quantize``) with the
    recipe's ``compression`` plan or the search's; the defaults leave a task as trained unless
    the plan asks for sparsity or bits. ``stores_own_values`` says whether a task commits own
    values at all (False for a method whose tasks only mask a fixed backbone: then pruning
    removes positions from the mask, and quantization and the search's bits do not apply).
    """

    stores_own_values: ClassVar[bool] = True
    kind: str
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig(adaptive=False)


METHODS: KindRegistry[MethodConfig] = KindRegistry("method", MethodConfig, default="wsn")
_METHOD_CONFIGS = METHODS.configs  # kind -> config class


def register_method_config(kind: str, config: type[MethodConfig]) -> None:
    """Make ``method: {kind: <kind>, ...}`` validate into ``config`` (see pipeline.methods); an
    omitted kind means WSN, the family's base."""
    METHODS.register(kind, config)


if TYPE_CHECKING:  # what a checker sees: the base config
    MethodField = MethodConfig
else:
    MethodField = METHODS.field()


class RigLConfig(_Section):
    """RigL's schedule for ``mask: rigl`` (docs/methods.md): every ``interval`` steps drop the
    smallest of the task's own weights and regrow as many free positions by dense-gradient
    magnitude; the swapped fraction decays from ``fraction`` to 0 by a cosine until ``end``."""

    interval: int = Field(default=100, ge=1, le=1_000_000,
                          description="training steps between two mask updates (RigL's delta T)")
    fraction: float = Field(default=0.3, gt=0, le=1,
                            description="initial fraction of own weights swapped per update "
                            "(RigL's alpha)")
    end: float = Field(default=0.75, gt=0, le=1,
                       description="updates stop after this fraction of a phase's planned steps "
                       "(RigL's T_end)")


MaskKind = Literal["topk", "rigl"]
_MASK_HELP = ("topk: the mask is the top-c of learned scores (WSN); rigl: a fixed-density mask "
              "the task rewires by RigL's drop (own weights) and regrow (free positions)")


class WSNMethod(MethodConfig):
    """Winning SubNetworks: per-layer scores, top-c mask, earlier tasks' weights frozen."""

    kind: Literal["wsn"] = "wsn"
    density: float = Field(default=0.5, gt=0, le=1, description="c: fraction of weights kept")
    mask: MaskKind = Field(default="topk", description=_MASK_HELP)
    rigl: RigLConfig = RigLConfig()


class TSNMethod(MethodConfig):
    """TinySubNets: WSN training, then pruning and adaptive quantization of the task's own
    weights, committed into the packed store; ``split`` lets a task put its own code in the free
    bits of a position an earlier task holds."""

    kind: Literal["tsn"] = "tsn"
    density: float = Field(default=0.5, gt=0, le=1, description="c: fraction of weights kept")
    policy: Literal["reuse_only", "split"] = "split"
    quantize: QuantizeConfig = QuantizeConfig()  # adaptive: TSN's own quantization
    mask: MaskKind = Field(default="topk", description=_MASK_HELP)
    rigl: RigLConfig = RigLConfig()


Fraction = Annotated[float, Field(ge=0, lt=1)]


class PackNetMethod(MethodConfig):
    """PackNet: train the free weights, prune a fraction of the task's own weights per layer by
    magnitude, retrain the survivors, freeze them; later tasks reuse every earlier weight."""

    kind: Literal["packnet"] = "packnet"
    prune_fraction: Fraction | dict[Annotated[str, Field(max_length=1024)], Fraction] = Field(
        default=0.5,
        description="fraction of the task's own weights pruned per layer: one value for every "
        "layer, or a mapping from layer name or regex (exact name first, then the first regex "
        "that matches) to a fraction; with a mapping every layer must be matched")
    retrain_epochs: Annotated[int, Field(ge=0, le=10_000)] | None = Field(
        default=None, description="epochs of retraining the survivors; None = train.epochs")
    retrain_lr_scale: float = Field(default=0.1, gt=0, le=1,
                                    description="the retraining lr is train.lr times this")

    @field_validator("prune_fraction")
    @classmethod
    def _regex_ok(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        if isinstance(v, dict):
            if not 1 <= len(v) <= 1024:
                raise ValueError(f"a mapping of layer fractions needs 1 to 1024 entries, "
                                 f"got {len(v)}")
            for key in v:
                try:
                    re.compile(key)
                except re.error as e:
                    raise ValueError(f"{key!r} is not a valid regular expression: {e}") from None
        return v


class ExSSNeTMethod(MethodConfig):
    """ExSSNeT: per task a supermask (scores, top-c) over frozen weights, then training of the
    weights in the mask that no earlier task uses; KKT optionally starts the scores from the
    earlier task whose mask classifies the new task's data best (k-nearest neighbours)."""

    kind: Literal["exssnet"] = "exssnet"
    density: float = Field(default=0.1, gt=0, le=1, description="fraction of weights per mask")
    mask_epochs: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None, description="epochs of the mask phase; None = train.epochs")
    weight_epochs: Annotated[int, Field(ge=0, le=10_000)] | None = Field(
        default=None, description="epochs of the weight phase; None = train.epochs")
    signed_constant: bool = Field(
        default=True, description="start the backbone as SupSup's signed constants "
        "(+-sqrt(2/fan_in)); False keeps the model's default initialisation")
    kkt: bool = Field(default=False, description="k-NN knowledge transfer of earlier scores")
    kkt_fraction: float = Field(
        default=0.2, gt=0, le=1,
        description="KKT's sample: ceil(fraction x training batches) + 1 batches")
    kkt_k: int = Field(default=200, ge=1, le=100_000,
                       description="neighbours of KKT's k-NN classifier")
    mask: MaskKind = Field(
        default="topk", description="topk: the weight phase trains the mask's exclusive weights "
        "as learned; rigl: the weight phase rewires them (drop the smallest, regrow free "
        "positions by gradient, RigL)")
    rigl: RigLConfig = RigLConfig()


class CLNPMethod(MethodConfig):
    """CLNP: train into free units with an L1 penalty, keep the free units whose mean activation
    passes a threshold raised while validation accuracy stays within ``margin`` of the unpruned
    network, cut free->active links, freeze the active units, re-initialise the rest. The TSN
    passes (``prune``, ``quantize``) compress the task's own links afterwards; by default they
    leave them as trained (the plan's bits: 32, ``quantize.adaptive: false``)."""

    kind: Literal["clnp"] = "clnp"
    l1: float = Field(default=1e-4, ge=0, le=10,
                      description="alpha: weight of the L1 penalty (0 turns it off)")
    l1_on: Literal["activations", "weights"] = Field(
        default="activations",
        description="activations: mean over the batch of the summed |post-ReLU output| of the "
        "free units; weights: summed |w| of the trainable links (the NISPA repo's baseline)")
    margin: float = Field(
        default=0.5, ge=0, le=100,
        description="m, points: pruning keeps validation accuracy >= unpruned - m (graceful "
        "forgetting); 0 prunes only what costs no validation accuracy")
    threshold_step: float = Field(
        default=0.01, gt=0, le=1,
        description="Delta: the threshold runs through the 0, Delta, 2 Delta, ... quantiles of "
        "the free units' mean activations (a fraction of the free units per step)")
    max_thresholds: int = Field(default=500, ge=1, le=100_000,
                                description="at most this many thresholds tried per task")


class NISPAMethod(MethodConfig):
    """NISPA: fixed-density sparse links; per task, phases that promote the units carrying a
    shrinking share of the activation from plastic to stable, drop plastic->stable links and
    regrow as many into plastic units; stop when validation accuracy falls below the best minus
    ``margin``. The TSN passes compress the task's own links afterwards (off by default, as
    CLNP)."""

    kind: Literal["nispa"] = "nispa"
    density: float = Field(default=0.2, gt=0, le=1,
                           description="fraction of each layer's links present (fixed)")
    phase_epochs: int = Field(default=5, ge=1, le=10_000, description="e: epochs per phase")
    k: int = Field(default=30, ge=3, le=10_000,
                   description="phase schedule p_i = (1 + cos(pi i / k)) / 2")
    min_p: float = Field(default=0.05, ge=0, le=0.5,
                         description="stop once p_i falls to this share")
    margin: float = Field(
        default=0.75, ge=0, le=100,
        description="a_f, points: stop when validation accuracy < best - a_f (from phase 3)")


register_method_config("wsn", WSNMethod)
register_method_config("tsn", TSNMethod)
register_method_config("packnet", PackNetMethod)
register_method_config("exssnet", ExSSNeTMethod)


class SupSupMethod(MethodConfig):
    """SupSup: a fixed random backbone of signed constants, never trained and stored once (the
    store's ``base``); per task only scores are learned, and the task is its top-c mask over
    that backbone plus its head (and per-task BN when the model has it). ``prune`` (with the
    ``compression`` plan or the search) removes positions from a task's mask, lowest scores
    first; there are no own values to quantize."""

    stores_own_values: ClassVar[bool] = False
    kind: Literal["supsup"] = "supsup"
    density: float = Field(default=0.1, gt=0, le=1,
                           description="fraction of each layer's weights in a task's mask")
    optimizer: Literal["adam", "rmsprop"] = Field(
        default="rmsprop", description="optimizer of the scores and the head (SupSup: RMSProp "
        "for the MNIST streams, Adam for Split CIFAR-100); its lr is train.lr")

    @model_validator(mode="after")
    def _no_quantize(self) -> SupSupMethod:
        if self.quantize != MethodConfig.model_fields["quantize"].default:
            raise ValueError("supsup tasks store no own values (only masks over the fixed "
                             "backbone), so method.quantize does not apply; remove it")
        return self


register_method_config("supsup", SupSupMethod)
register_method_config("clnp", CLNPMethod)
register_method_config("nispa", NISPAMethod)
