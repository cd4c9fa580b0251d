"""Recipe targets -> compiler targets (the one place pipeline meets ``compilers.Target``)."""

from __future__ import annotations

from compilers import Target
from pipeline.errors import RecipeError, did_you_mean
from pipeline.recipe import Recipe, TargetConfig


def to_target(cfg: TargetConfig) -> Target:
    rpc = cfg.rpc
    return Target(name=cfg.name, kind=cfg.kind, mcpu=cfg.mcpu,
                  rpc_host=rpc.host if rpc else None, rpc_port=rpc.port if rpc else None,
                  rpc_key=rpc.key if rpc else None, remote_arch=cfg.remote_arch,
                  threads=cfg.threads)


def find_target(recipe: Recipe, name: str | None) -> TargetConfig:
    """The recipe's target called ``name`` (the first one when ``name`` is None)."""
    if name is None:
        return recipe.targets[0]
    for t in recipe.targets:
        if t.name == name:
            return t
    names = [t.name for t in recipe.targets]
    raise RecipeError(f"no target named {name!r} in the recipe; targets are "
                      f"{names}{did_you_mean(name, names)}")
