"""torch.export -> Relax, with the custom ops lowered to the hand-written TIR kernels.

The importer maps ``taskpack::bsr_linear``, ``taskpack::bsr_conv2d`` (the direct block-sparse conv
kernel, with a following max-pool fused when it can be),
``taskpack::csr_linear`` (transpose + the CSR kernel) and ``taskpack::int8_linear`` nodes to a
``call_tir`` of the hand-written kernels in :mod:`compilers.tvm.kernels`, with the BSR / CSR arrays
and int8 weights baked in as constants.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..errors import BuildFailed
from ..ops.csr import CSR_OP_NAME
from ..ops.int8 import INT8_OP_NAME
from ..ops.sparse import CONV_OP_NAME, OP_NAME
from ._api import load
from .bsr_tuning import default_choice
from .kernels.bsr import BSRSchedule, bsr_linear_kernel, pack_bsr, transpose_kernel
from .kernels.bsr_conv import (
    BSRConvGeometry,
    bsr_conv2d_kernel,
    choose_conv_blocking,
    conv_arrays,
)
from .kernels.csr import csr_linear_kernel, pack_csr
from .kernels.int8 import int8_linear_kernel, pack_int8

__all__ = ["constant_bytes", "hand_kernels", "import_relax"]


def _pair(values, default: int = 0) -> tuple[int, int]:  # noqa: ANN001 - an FX node argument
    """A 2-D int argument of an FX node (a conv's ``stride``/``padding``/``dilation``, a pool's
    window) as a pair of ints: an int or a one-element list applies to both dimensions, and an
    argument left out (None or ``[]``) is ``default``."""
    if values is None or (isinstance(values, list | tuple) and not values):
        values = default
    items = [values] * 2 if isinstance(values, int) else list(values)
    first, second = items * 2 if len(items) == 1 else items
    return int(first), int(second)


def _param(tensors: dict[str, torch.Tensor], node, op: str) -> np.ndarray:  # noqa: ANN001
    if node.name not in tensors:
        raise BuildFailed(
            f"{op}'s weights must be parameters or buffers of the module, but {node.name!r} is a "
            "computed value."
        )
    return tensors[node.name].detach().cpu().numpy()


BSRChooser = Callable[..., BSRSchedule]  # (weight, bh, bw, batch, relu) -> schedule


def _bsr_converter(tensors: dict[str, torch.Tensor], choose: BSRChooser):  # noqa: ANN202
    """The importer hook for ``taskpack::bsr_linear``; ``tensors`` maps graph inputs to values.

    ``choose`` picks the kernel's schedule; an ``x_transposed`` one gets a transpose kernel in
    front (the input as (K, batch)).
    """

    def convert(node, importer):  # noqa: ANN001, ANN202 - signature fixed by the importer
        relax = load().relax
        x = importer.env[node.args[0]]
        weight_node, scale_node, bias_node = node.args[1], node.args[2], node.args[3]
        bh, bw, relu = node.args[4], node.args[5], node.args[6]
        weight = _param(tensors, weight_node, "bsr_linear")
        shape = [int(d) for d in node.args[0].meta["val"].shape]
        if len(shape) != 2:
            raise BuildFailed(f"bsr_linear input must be 2-D (batch, features), but got {shape}.")
        batch, m = shape[0], weight.shape[0]
        bias = (
            _param(tensors, bias_node, "bsr_linear")
            if bias_node is not None
            else np.zeros(m, dtype=np.float32)
        )
        scale = (  # fp32 weights: scale 1 (multiplying by 1.0 is exact)
            _param(tensors, scale_node, "bsr_linear")
            if scale_node is not None
            else np.ones(m, dtype=np.float32)
        )
        schedule = choose(weight, bh, bw, batch, relu)
        packed = pack_bsr(weight, bh, bw, group=schedule.u)
        func = bsr_linear_kernel(batch, packed, relu, schedule=schedule)
        bb = importer.block_builder
        if schedule.x_transposed:
            k = int(weight.shape[1])
            tr = bb.add_func(transpose_kernel(batch, k), "transpose")
            x = bb.emit(relax.call_tir(tr, [x], relax.TensorType((k, batch), "float32")))
        gv = bb.add_func(func, "bsr_linear")
        consts = (packed.data, packed.indices, packed.indptr, scale.astype(np.float32),
                  bias.astype(np.float32))
        args = [x] + [relax.const(a) for a in consts]
        out = relax.TensorType((batch, m), "float32")
        return importer.block_builder.emit(relax.call_tir(gv, args, out))

    return convert


POOL_OPS = ("max_pool2d.default", "max_pool2d_with_indices.default")


def _pool_window(conv_node) -> tuple[tuple[int, int], object] | None:  # noqa: ANN001 - FX node
    """((ph, pw), pool node) when the conv's only consumer is a max-pool the conv kernel can
    apply itself (window = stride, no padding, dilation 1, floor), else None."""
    if len(conv_node.users) != 1:
        return None
    pool = next(iter(conv_node.users))
    if pool.op != "call_function" or getattr(pool.target, "__name__", "") not in POOL_OPS:
        return None
    args = list(pool.args) + [None] * (6 - len(pool.args))
    kernel, stride, padding, dilation, ceil_mode = args[1:6]
    window = _pair(kernel, 1)
    if (_pair(stride) not in (window, (0, 0)) or _pair(padding) != (0, 0)
            or _pair(dilation, 1) != (1, 1) or bool(ceil_mode)):
        return None
    if pool.target.__name__ == "max_pool2d_with_indices.default" and not all(
        user.target is operator.getitem and user.args[1] == 0 for user in pool.users
    ):
        return None  # the indices are used: leave the pool to TVM
    return window, pool


def _bsr_conv2d_converter(tensors: dict[str, torch.Tensor], pooled: set):  # noqa: ANN202
    """The importer hook for ``taskpack::bsr_conv2d``: the direct block-sparse conv kernel.

    One TIR function (``bsr_conv2d_kernel``) per layer: the packed (O, C*kh*kw) weight with bias
    and ReLU fused, writing NCHW, packed in blocks of width 1 and the height that
    :func:`~compilers.tvm.kernels.bsr_conv.choose_conv_blocking` estimates fastest (not
    necessarily the op's pruning block). A max-pool that is the conv's only consumer and that the
    kernel can apply (:func:`_pool_window`) is fused too: its node is added to ``pooled`` and the
    pool hook (:func:`_max_pool2d_converter`) passes the conv's result through.
    """

    def convert(node, importer):  # noqa: ANN001, ANN202 - signature fixed by the importer
        relax = load().relax
        bb = importer.block_builder
        x = importer.env[node.args[0]]
        weight_node, bias_node = node.args[1], node.args[2]
        stride, padding, dilation = (_pair(a) for a in node.args[3:6])
        relu = node.args[8]  # args 6, 7: the pruning block; the kernel picks its own below
        weight = _param(tensors, weight_node, "bsr_conv2d")
        shape = tuple(int(d) for d in node.args[0].meta["val"].shape)
        if len(shape) != 4:
            raise BuildFailed(f"bsr_conv2d input must be 4-D (N, C, H, W), but got {shape}.")
        n, o = (int(d) for d in node.meta["val"].shape[:2])
        kernel = (int(weight.shape[2]), int(weight.shape[3]))
        k = int(np.prod(weight.shape[1:]))
        bias = (
            _param(tensors, bias_node, "bsr_conv2d")
            if bias_node is not None
            else np.zeros(o, dtype=np.float32)
        )
        fused = _pool_window(node)
        geo = BSRConvGeometry(shape, kernel, stride, padding, dilation,
                              fused[0] if fused else (1, 1))
        if fused:
            pooled.add(fused[1])
        # the kernel's own block height (width 1), which need not be the pruning block's: the
        # packing is exact for any block, and short blocks skip the zeros inside tall ones
        matrix = weight.reshape(o, k)  # the (O, C*kh*kw) view the kernel multiplies
        kernel_bh, rows = choose_conv_blocking(matrix, geo)
        packed = pack_bsr(matrix, kernel_bh, 1, group=1)
        gv = bb.add_func(bsr_conv2d_kernel(geo, packed, relu, rows=rows), "bsr_conv2d")
        consts = (*conv_arrays(packed, geo), np.ones(o, dtype=np.float32),
                  bias.astype(np.float32))
        args = [x] + [relax.const(a) for a in consts]
        out = relax.TensorType((n, o, geo.out_h, geo.out_w), "float32")
        return bb.emit(relax.call_tir(gv, args, out))

    return convert


def _max_pool2d_converter(pooled: set):  # noqa: ANN202
    """The importer hook for ``max_pool2d`` (with or without indices): a pool fused into the
    block-sparse conv before it passes the conv's result through (as (values, values) for the
    indices variant, whose indices nothing reads); any other pool is TVM's own conversion."""

    def convert(node, importer):  # noqa: ANN001, ANN202 - signature fixed by the importer
        name = node.target.__name__
        if node not in pooled:
            method = "_max_pool2d" if name == "max_pool2d.default" else "_max_pool2d_with_indices"
            return getattr(importer, method)(node)
        y = importer.env[node.args[0]]
        if name == "max_pool2d.default":
            return y
        return importer.block_builder.emit(load().relax.Tuple([y, y]))

    return convert


def _csr_converter(tensors: dict[str, torch.Tensor]):  # noqa: ANN202
    """The importer hook for ``taskpack::csr_linear``: transpose x, the CSR kernel."""

    def convert(node, importer):  # noqa: ANN001, ANN202 - signature fixed by the importer
        relax = load().relax
        bb = importer.block_builder
        x = importer.env[node.args[0]]
        weight = _param(tensors, node.args[1], "csr_linear").astype(np.float32)
        bias_node, relu = node.args[2], node.args[3]
        m, k = weight.shape
        shape = [int(d) for d in node.args[0].meta["val"].shape]
        if len(shape) != 2:
            raise BuildFailed(f"csr_linear input must be 2-D (batch, features), but got {shape}.")
        batch = shape[0]
        bias = np.zeros(m, np.float32)
        if bias_node is not None:
            bias[:] = _param(tensors, bias_node, "csr_linear")
        packed = pack_csr(weight)
        tr = bb.add_func(transpose_kernel(batch, k), "transpose")
        xt = bb.emit(relax.call_tir(tr, [x], relax.TensorType((k, batch), "float32")))
        gv = bb.add_func(csr_linear_kernel(batch, packed, relu), "csr_linear")
        args = [xt] + [relax.const(a) for a in (packed.data, packed.indices, packed.indptr, bias)]
        return bb.emit(relax.call_tir(gv, args, relax.TensorType((batch, m), "float32")))

    return convert


def _int8_converter(tensors: dict[str, torch.Tensor]):  # noqa: ANN202
    """The importer hook for ``taskpack::int8_linear``: int8 constants into the int8 kernel."""

    def convert(node, importer):  # noqa: ANN001, ANN202 - signature fixed by the importer
        relax = load().relax
        bb = importer.block_builder
        x = importer.env[node.args[0]]
        q = _param(tensors, node.args[1], "int8_linear")
        scale = _param(tensors, node.args[2], "int8_linear").astype(np.float32)
        bias_node, relu = node.args[3], node.args[4]
        m, k = q.shape
        shape = [int(d) for d in node.args[0].meta["val"].shape]
        batch = int(np.prod(shape[:-1]))
        packed = pack_int8(q, scale)
        bias = np.zeros(m, np.float32)
        if bias_node is not None:
            bias[:] = _param(tensors, bias_node, "int8_linear")
        if len(shape) != 2:  # the kernel is 2-D: flatten leading dims, restore them below
            x = bb.emit(relax.op.reshape(x, (batch, k)))
        gv = bb.add_func(int8_linear_kernel(batch, packed, relu), "int8_linear")
        args = [x, relax.const(packed.data), relax.const(packed.scale), relax.const(bias)]
        y = bb.emit(relax.call_tir(gv, args, relax.TensorType((batch, m), "float32")))
        if len(shape) != 2:
            y = bb.emit(relax.op.reshape(y, (*shape[:-1], m)))
        return y

    return convert


def constant_bytes(mod) -> dict[str, int]:  # noqa: ANN001 - an IRModule
    """Bytes of the constants in ``mod``'s Relax functions, by dtype (what the weights cost)."""
    api = load()
    sizes: dict[str, int] = {}

    def visit(expr) -> None:  # noqa: ANN001
        if isinstance(expr, api.tvm.ir.expr.GenericConst):
            value = expr.value.numpy()
            sizes[str(value.dtype)] = sizes.get(str(value.dtype), 0) + int(value.nbytes)

    for func in mod.functions.values():
        if isinstance(func, api.relax.Function):
            api.relax.analysis.post_order_visit(func, visit)
    return sizes


def hand_kernels(mod) -> list[str]:  # noqa: ANN001 - an IRModule
    """Names of the hand-written TIR kernels in ``mod`` (``bsr_linear``, ``bsr_conv2d``, ...),
    sorted.

    TVM suffixes repeated names (``bsr_conv2d1``): one entry per kernel instance.
    """
    tir_func = load().tvm.tirx.PrimFunc
    return sorted(
        gv.name_hint for gv, func in mod.functions.items()
        if isinstance(func, tir_func) and func.attrs is not None
        and "tir.is_scheduled" in func.attrs and bool(func.attrs["tir.is_scheduled"])
    )


def import_relax(model: nn.Module, example_input: torch.Tensor,
                 bsr_schedule: BSRChooser | None = None):  # noqa: ANN201 - IRModule
    """torch.export the module and translate it to a Relax IRModule with weights as constants.

    ``bsr_schedule(weight, bh, bw, batch, relu)`` picks each block-sparse linear layer's kernel
    schedule (default: :func:`~compilers.tvm.kernels.bsr.default_schedule`; the backend passes
    :meth:`~compilers.tvm.bsr_tuning.BSRScheduleTable.choose` on tuned builds).
    """
    api = load()
    try:
        with torch.no_grad():
            exported = torch.export.export(model, (example_input,))
        sig = exported.graph_signature
        state = exported.state_dict
        tensors = {name: state[target] for name, target in sig.inputs_to_parameters.items()}
        tensors.update({n: state[t] for n, t in sig.inputs_to_buffers.items() if t in state})
        pooled: set = set()  # max-pool nodes fused into the conv before them
        with warnings.catch_warnings():
            # torch 2.13's run_decompositions() (called inside TVM's from_exported_program)
            # deep-copies the module call graph, and copying a pytree LeafSpec warns
            # "`isinstance(treespec, LeafSpec)` is deprecated" on every import. The warning is
            # attributed to copyreg (deepcopy's __newobj__), so this matches by message only.
            warnings.filterwarnings(
                "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                category=FutureWarning,
            )
            return api.from_exported_program(
                exported,
                keep_params_as_input=False,
                unwrap_unit_return_tuple=True,
                custom_convert_map={
                    OP_NAME: _bsr_converter(tensors, bsr_schedule or default_choice),
                    CONV_OP_NAME: _bsr_conv2d_converter(tensors, pooled),
                    **dict.fromkeys(POOL_OPS, _max_pool2d_converter(pooled)),
                    INT8_OP_NAME: _int8_converter(tensors),
                    CSR_OP_NAME: _csr_converter(tensors),
                },
            )
    except BuildFailed:
        raise
    except Exception as exc:
        raise BuildFailed(
            f"torch.export -> Relax import failed for {type(model).__name__}: {exc}"
        ) from exc
