"""Recipes: YAML files validated by pydantic (DESIGN.md §4)."""

from pipeline.recipe._load import (
    apply_overrides,
    flatten,
    format_validation_error,
    load_recipe,
    recipe_from_dict,
    recipe_json_schema,
    recipe_to_dict,
    recipe_to_yaml,
)
from pipeline.recipe._plan import plan_for_layers
from pipeline.recipe._schema import (
    BenchmarkConfig,
    CompressionConfig,
    ExportConfig,
    LayerPlan,
    LayerRule,
    ModelConfig,
    Recipe,
    SearchConfig,
    StoreConfig,
    TargetConfig,
    TrackingConfig,
    TrainConfig,
    WSNMethod,
)

__all__ = [
    "BenchmarkConfig",
    "CompressionConfig",
    "ExportConfig",
    "LayerPlan",
    "LayerRule",
    "ModelConfig",
    "Recipe",
    "SearchConfig",
    "StoreConfig",
    "TargetConfig",
    "TrackingConfig",
    "TrainConfig",
    "WSNMethod",
    "apply_overrides",
    "flatten",
    "format_validation_error",
    "load_recipe",
    "plan_for_layers",
    "recipe_from_dict",
    "recipe_json_schema",
    "recipe_to_dict",
    "recipe_to_yaml",
]
