"""Config classes chosen by a ``kind`` key: the registry behind ``method`` and ``train.plugins``.

A ``KindRegistry`` maps each registered ``kind`` to its pydantic config class. Its ``field``
annotation validates a raw mapping into the config of its ``kind`` (with a "did you mean" for an
unknown one) and gives ``taskpack schema`` a ``oneOf`` over every registered config.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    GetJsonSchemaHandler,
    SerializeAsAny,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from pipeline.errors import did_you_mean
from pipeline.recipe._section import _Section

C = TypeVar("C", bound=_Section)


class KindRegistry(Generic[C]):
    """``kind`` -> config class, for configs subclassing ``base``. ``default``: the kind of a
    mapping that names none (None: ``kind`` is required)."""

    def __init__(self, what: str, base: type[C], default: str | None = None) -> None:
        self.what, self.base, self.default = what, base, default
        self.configs: dict[str, type[C]] = {}

    def register(self, kind: str, config: type[C]) -> None:
        """Make a ``{kind: <kind>, ...}`` mapping validate into ``config``. The same pair twice is
        allowed (module reloads); another class under a taken kind is an error."""
        if not (isinstance(config, type) and issubclass(config, self.base)):
            raise TypeError(f"a {self.what} config must subclass {self.base.__name__}, "
                            f"but got {config!r}.")
        known = self.configs.get(kind)
        if known is not None and known is not config:
            raise ValueError(f"{self.what} kind {kind!r} is already registered to "
                             f"{known.__name__}.")
        self.configs[kind] = config

    def validate(self, v: Any, handler: ValidatorFunctionWrapHandler) -> C:
        if isinstance(v, self.base):
            return v
        if not isinstance(v, dict):
            raise PydanticCustomError("kind_type", "must be a mapping with a `kind`")
        kind = v.get("kind", self.default)
        config = self.configs.get(kind) if isinstance(kind, str) else None
        if config is None:
            raise PydanticCustomError(
                "unknown_kind", "unknown kind {kind}; expected one of {kinds}{hint}",
                {"kinds": str(list(self.configs)), "kind": repr(kind),
                 "hint": did_you_mean(str(kind), self.configs)})
        return config.model_validate({**v, "kind": kind})

    def field(self) -> Any:
        """The annotation of a recipe field holding one of the registered configs."""
        registry = self

        class _Schema:
            @classmethod
            def __get_pydantic_json_schema__(cls, _schema: core_schema.CoreSchema,
                                             handler: GetJsonSchemaHandler) -> JsonSchemaValue:
                return {"oneOf": [handler(c.__pydantic_core_schema__)
                                  for c in registry.configs.values()]}

        serialized: Any = SerializeAsAny[self.base]  # type: ignore[misc, name-defined]
        return Annotated[serialized, WrapValidator(registry.validate), _Schema]
