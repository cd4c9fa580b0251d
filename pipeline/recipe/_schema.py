"""The recipe schema: one frozen pydantic model per section.

Every model forbids unknown keys and is frozen, so a recipe that validated is the recipe that ran.
Limits live in the types; cross-field rules live in validators whose messages name the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.recipe._methods import MethodField, WSNMethod
from pipeline.recipe._plugins import PluginField
from pipeline.recipe._search import (
    CompressionConfig,
    SearchConfig,
)
from pipeline.recipe._section import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_EXAMPLES,
    MAX_WIDTH,
    SAFE_NAME,
    Name,
    RecipePath,
    Seed,
    Text,
    _Section,
)
from pipeline.recipe._storage import check_tracking_uri

STREAMS = (
    "permuted_mnist",
    "rotated_mnist",
    "split_mnist",
    "split_fmnist",
    "mnist_fmnist",
    "split_cifar100",
    "five_datasets",
    "tinyimagenet",
)
# the streams of 28x28 grey images (MNIST, Fashion-MNIST): ``benchmark.pad_to`` applies to these
MNIST_STREAMS = ("permuted_mnist", "rotated_mnist", "split_mnist", "split_fmnist", "mnist_fmnist")
ARCHS = ("mlp", "alexnet", "resnet18", "tinynet")


class BenchmarkConfig(_Section):
    """Which task stream to learn, and how to cut validation and quick-run subsets."""

    stream: Literal[STREAMS] = "permuted_mnist"  # type: ignore[valid-type]
    tasks: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None, description="number of tasks; None = the stream's natural count"
    )
    classes_per_task: Annotated[int, Field(ge=2, le=100_000)] | None = Field(
        default=None, description="split streams only (Split CIFAR-100: 10 or 5)"
    )
    seed: Seed = 0
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    normalize: bool = Field(
        default=False,
        description="MNIST-family streams: standardize pixels with the data set's published "
        "mean and std (WSN and GPM do so for PMNIST); false keeps them in [0, 1]. Colour "
        "streams are always normalized",
    )
    train_limit: Annotated[int, Field(ge=10, le=MAX_EXAMPLES)] | None = Field(
        default=None, description="keep at most this many training examples per task"
    )
    test_limit: Annotated[int, Field(ge=10, le=MAX_EXAMPLES)] | None = None
    data_dir: RecipePath | None = Field(
        default=None, description="folder with local datasets (CIFAR, SVHN, TinyImageNet)"
    )
    pad_to: Annotated[int, Field(ge=28, le=1024)] | None = Field(
        default=None, description="MNIST-family streams only: zero-pad the 28x28 images to this "
        "square side (32: the input size of the CNNs); None = 28x28"
    )
    cache_dir: RecipePath | None = Field(
        default=None, description="folder of fetched data; default $TASKPACK_DATA or ~/.cache"
    )

    @model_validator(mode="after")
    def _pad_only_mnist(self) -> BenchmarkConfig:
        if self.pad_to is not None and self.stream not in MNIST_STREAMS:
            raise ValueError(f"pad_to applies only to the MNIST-family streams "
                             f"{list(MNIST_STREAMS)}, got stream {self.stream!r}")
        return self


class ModelConfig(_Section):
    """The shared backbone; every task gets its own head, or a shared masked one."""

    arch: Literal[ARCHS] = "mlp"  # type: ignore[valid-type]
    hidden: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        default=[2000, 2000], min_length=1, max_length=64)
    width: int = Field(default=20, ge=1, le=1024, description="resnet18 base width")
    alexnet_widths: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] | None = Field(
        default=None, min_length=5, max_length=5,
        description="alexnet only: channels of its 3 convs and widths of its 2 fcs; "
        "None = the paper's 64, 128, 256, 2048, 2048")
    norm: Literal["none", "stateless", "per_task"] = Field(
        default="none",
        description="stateless = BN without affine and without running stats (WSN); "
        "per_task = one BN per task, stored with the task",
    )
    dropout: float = Field(default=0.0, ge=0, lt=1)
    head_bias: bool = Field(default=True, description="bias of per-task heads (a shared head "
                            "has none: every task would train it)")
    head: Literal["per_task", "shared"] = Field(
        default="per_task",
        description="per_task = one unmasked Linear per task; shared = one output layer masked "
        "per task like the other layers (every task must have the same class count)")
    head_outputs: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        default=None,
        description="head: shared only: its outputs; None = the class count. More outputs "
        "than classes are SupSup's superfluous outputs: a task's cross-entropy pushes them "
        "down, and evaluation.objective: superfluous reads them to infer the task")

    @model_validator(mode="after")
    def _widths_for_alexnet(self) -> ModelConfig:
        if self.alexnet_widths is not None and self.arch != "alexnet":
            raise ValueError(f"alexnet_widths applies only to arch 'alexnet', got {self.arch!r}")
        if self.head_outputs is not None and self.head != "shared":
            raise ValueError("head_outputs applies only to head: shared")
        return self


class TrainConfig(_Section):
    """Per-task training; by default WSN's schedule (plateau lr, best validation loss kept)."""

    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    lr: float = Field(default=1e-3, gt=0, le=10)
    lr_min: float = Field(default=1e-6, gt=0, le=10)
    lr_factor: float = Field(default=2.0, gt=1, le=1000,
                             description="lr is divided by this on a plateau")
    patience: int = Field(default=6, ge=0, le=MAX_EPOCHS)
    epochs: int = Field(default=5, ge=1, le=MAX_EPOCHS)
    schedule: Literal["plateau", "cosine"] = Field(
        default="plateau",
        description="plateau: lr / lr_factor after `patience` epochs without a better "
        "validation figure (the one `restore` keys on), stop below lr_min (WSN's); cosine: lr "
        "decays every step from lr to lr_min over the phase's epochs (patience and lr_factor "
        "unused)")
    restore: Literal["val_loss", "val_acc"] = Field(
        default="val_loss",
        description="which epoch's state a phase keeps: the lowest validation loss (WSN's) or "
        "the highest validation accuracy (ties: the earlier epoch)")
    batch_size: int = Field(default=256, ge=1, le=MAX_BATCH)
    eval_batch_size: int = Field(
        default=256, ge=1, le=MAX_BATCH,
        description="fixed: BN with batch statistics depends on it")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    seed: Seed = 0
    threads: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        default=None, description="torch's CPU threads; None = every core this process may use")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="where training runs; auto = cuda when PyTorch sees a GPU")
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32", description="bf16 = autocast of the forward pass on CUDA (weights, "
        "optimizer state and the store stay fp32); fp32 on the CPU")
    compile: bool = Field(default=False, description="torch.compile the model for training")
    deterministic: bool = Field(
        default=False, description="deterministic kernels only (torch.use_deterministic_"
        "algorithms); slower on CUDA; see docs/training.md")
    plugins: list[PluginField] = Field(
        default=[], max_length=16,
        description="training-efficiency plugins, run in this order (docs/training.md); each "
        "acts on the task's own weights and data only")

    @field_validator("plugins")
    @classmethod
    def _one_of_each(cls, v: list) -> list:
        kinds = [p.kind for p in v]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each plugin kind may appear once, got {kinds}")
        return v

    @model_validator(mode="after")
    def _lr_min_below_lr(self) -> TrainConfig:
        if self.lr_min > self.lr:
            raise ValueError(f"`lr_min <= lr` must hold, got lr_min={self.lr_min}, lr={self.lr}")
        return self


class RPCConfig(_Section):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=9190, ge=1, le=65535)
    key: Name


class TargetConfig(_Section):
    """A device to compile for and measure on."""

    name: Name = Field(pattern=SAFE_NAME, description="names export folders, like a run name")
    kind: Literal["host", "aarch64", "cuda", "rpc"] = "host"
    backend: Name = Field(default="eager", description="a registered compiler (eager, tvm, ...)")
    mcpu: Name | None = Field(default=None, description="LLVM -mcpu; None = detect the host")
    tune_trials: int = Field(default=0, ge=0, le=100_000,
                             description="MetaSchedule trials per workload")
    threads: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        default=None,
        description="runtime threads of the compiled model (TVM's pool, ONNX Runtime's); "
        "None = 1 at batch 1, else the faster of 1 and all cores, measured once and recorded")
    rpc: RPCConfig | None = None
    remote_arch: Literal["host", "aarch64"] = Field(
        default="host", description="rpc targets: which code the remote device runs")
    transforms: list[Name] = Field(
        default=["shrink", "block_sparse"], max_length=64,
        description="registered compile-time transforms (shrink, block_sparse, int8, ...) that "
                    "turn the task's structure into speed")

    @field_validator("backend")
    @classmethod
    def _backend_registered(cls, v: str) -> str:
        from compilers import compiler_names  # the registry, imported when a recipe is checked

        if v not in compiler_names():
            raise ValueError(f"must be a registered compiler {list(compiler_names())}, got {v!r}")
        return v

    @field_validator("transforms")
    @classmethod
    def _transforms_registered(cls, v: list[str]) -> list[str]:
        from compilers import transform_names

        unknown = [t for t in v if t not in transform_names()]
        if unknown:
            raise ValueError(f"must be registered transforms {list(transform_names())}, "
                             f"got {unknown}")
        return v

    @model_validator(mode="after")
    def _rpc_needs_config(self) -> TargetConfig:
        if self.kind == "rpc" and self.rpc is None:
            raise ValueError("a target of kind 'rpc' needs an `rpc` section (host, port, key)")
        return self


class EvaluationConfig(_Section):
    """How committed tasks are re-tested from the store (docs/task-inference.md)."""

    scenario: Literal["task_given", "task_inferred"] = Field(
        default="task_given",
        description="task_given = each test input comes with its task id; task_inferred = the "
        "task is inferred from the output entropy of the committed tasks in superposition "
        "(SupSup), and task-inference accuracy is reported beside accuracy")
    inference: Literal["one_shot", "binary"] = Field(
        default="one_shot",
        description="task_inferred only: one_shot = one gradient of the entropy w.r.t. the "
        "mixing coefficients, pick the most negative; binary = halve the candidates per round")
    infer_per: Literal["sample", "batch"] = Field(
        default="batch",
        description="task_inferred only: sample = a task per test input; batch = one task per "
        "test batch (train.eval_batch_size), inferred from the batch's first input")
    objective: Literal["entropy", "superfluous"] = Field(
        default="entropy",
        description="task_inferred only: what the mixing coefficients' gradient is taken of; "
        "entropy = SupSup's H, the output entropy; superfluous = SupSup's G, the log-sum-exp "
        "of the outputs with the real classes' gradient stopped, read from the superfluous "
        "outputs of a shared head with model.head_outputs > the class count")
    every: int = Field(
        default=1, ge=1, le=100_000,
        description="re-test earlier tasks after every k-th task and after the last one; "
        "other rows test only the new task (the matrix has gaps there)")


class StoreConfig(_Section):
    path: RecipePath | None = Field(default=None, description="default: <run dir>/store.tpk")
    bit_budget: int = Field(default=32, ge=1, le=64, description="bits per weight position")


class TrackingConfig(_Section):
    enabled: bool = True
    uri: Text = Field(default="sqlite:///mlruns/mlflow.db",
                      description="MLflow tracking URI (sqlite:///, postgresql://, http(s)://...) "
                                  "or a local folder")
    experiment: Name = "taskpack"
    artifact_location: Text = "mlruns/artifacts"

    @field_validator("uri")
    @classmethod
    def _uri_ok(cls, v: str) -> str:
        return check_tracking_uri(v)


class Recipe(_Section):
    """A whole run: benchmark x model x method x compression x search x targets."""

    name: Name = Field(pattern=SAFE_NAME, description="the run folder's name under output_dir: "
                       "letters, digits, _ - and . (not first)")
    description: Text = ""
    benchmark: BenchmarkConfig = BenchmarkConfig()
    model: ModelConfig = ModelConfig()
    method: MethodField = WSNMethod()
    train: TrainConfig = TrainConfig()
    compression: CompressionConfig = CompressionConfig()
    search: SearchConfig = SearchConfig()
    targets: list[TargetConfig] = Field(default=[TargetConfig(name="host")], max_length=64)
    evaluation: EvaluationConfig = EvaluationConfig()
    store: StoreConfig = StoreConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: RecipePath = Field(default=Path("mlruns/runs"),
                                   description="run folders go here: a directory, or a path "
                                               "that can be created as one")
    tuning_cache: RecipePath | None = Field(
        default=None,
        description="TVM tuning database (MetaSchedule records, keyed by workload and target) "
                    "and measured latencies: shared by every run and export that names it, so "
                    "a run with another output_dir does not start cold. None: $TASKPACK_TUNING "
                    "if set, else ~/.cache/taskpack/tuning; `~` is the user's home")

    @property
    def tuning_dir(self) -> Path:
        """Where compiled builds find their tuning: ``tuning_cache``, else
        ``$TASKPACK_TUNING``, else ``~/.cache/taskpack/tuning``."""
        if self.tuning_cache is not None:
            return self.tuning_cache.expanduser()
        env = os.environ.get("TASKPACK_TUNING")
        return Path(env).expanduser() if env else Path.home() / ".cache" / "taskpack" / "tuning"

    @field_validator("output_dir")
    @classmethod
    def _output_dir_usable(cls, v: Path) -> Path:
        # only stat calls: validating never creates anything
        for p in (v, *v.parents):
            try:
                if not p.exists():
                    continue
            except OSError as exc:
                raise ValueError(f"must be a usable path, found {exc.strerror}") from None
            if not p.is_dir():
                what = "is" if p == v else f"lies under {str(p)!r}, which is"
                raise ValueError(f"must be a directory or a path that can be created as one, "
                                 f"found it {what} a file")
            break
        return v

    @model_validator(mode="after")
    def _unique_targets(self) -> Recipe:
        names = [t.name for t in self.targets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"target names must be unique, got duplicates {dup}")
        ev = self.evaluation
        if ev.scenario == "task_inferred" and ev.infer_per == "sample" \
                and self.model.norm == "stateless":
            raise ValueError("evaluation.infer_per: sample needs model.norm none or per_task: "
                             "stateless BN normalises with batch statistics, which one input "
                             "does not have (use infer_per: batch)")
        if ev.scenario == "task_inferred" and ev.objective == "superfluous" \
                and self.model.head_outputs is None:
            raise ValueError("evaluation.objective: superfluous reads the superfluous outputs "
                             "of a shared head: set model.head: shared and model.head_outputs "
                             "above the class count (SupSup: 100 for 10 classes)")
        if self.search.enabled and self.model.norm == "stateless" and \
                self.search.latency_batch < 2:
            raise ValueError("model.norm 'stateless' normalizes with batch statistics (one "
                             "image has none): `search.latency_batch >= 2` must hold, got "
                             f"{self.search.latency_batch}")
        return self
