"""Batch-invariant CPU kernels: every row of a batch computed as it would be alone.

Why: a seed run in a batch of seeds (`--seed-batch`, a sweep's seed batches) should give the
bits of the same seed run alone, and a sweep cell should regenerate bit for bit on its own. On
a CPU five of torch's kernel choices depend on the batch's size, and each rounds a row
differently in the last bits (a relative 1e-7 per call, which a sampler's feedback grows):

- oneDNN (mkldnn) convolution picks its blocking from the whole batch's shape;
- NNPACK convolution takes over from a batch of 16 on;
- a BLAS matrix product (aten::mm and aten::addmm: every nn.Linear, and the matmuls folded
  into them) blocks and vectorizes by its number of rows, so a row's sum over K is ordered one
  way in a 1-row product and another in a 64-row one;
- group norm and convolution of a channels-last input (what diffusers' attention blocks hand
  the next ResNet block, and nearest upsampling passes on) split their sums by the batch's size;
- with more than one thread, torch's own convolution runs a batch's samples on parallel
  threads, each sample's GEMMs on one thread, but a lone sample's GEMMs on every thread, where
  the BLAS may split a sum (seen in the backward pass of a one-channel input on an AMD EPYC host).

`enable()` turns oneDNN and NNPACK off, so torch's own convolution runs: im2col and one GEMM
per sample, the same shapes whatever the batch. It registers `_mm` and `_addmm` as the CPU
kernels of aten::mm and aten::addmm: products of ROWS rows at a time, the last block padded
with zeros, so that every product has the same shape and a row's result depends on its own
values only. Autograd's backward products go through them too, so gradients are invariant.
aten::group_norm and aten::conv2d (above autograd) make their input contiguous first, so the
forward and the backward take the kernels that treat each sample alike; with more than one
thread aten::conv2d convolves one sample at a time, so every sample's GEMMs run as a lone one's.
Tested in tests/test_batch_invariant.py: every method's seeds batched give the bits of the
seeds alone on the digits model (torch's default thread count: 2 here; 1 in
benchmarks/seed_batch.py) and on the tiny SD pipeline (1 thread), and a convolution's forward
and backward with 1 and 2 threads.

The cost is speed, which is why this is a choice (`--kernels batch-invariant`) and not the
default: torch's own convolution is slower than oneDNN's (on the digits model's 8 x 8 maps, 1.6x
for a batch of 64), a sample at a time more so, and a product pays a Python call per block
(docs/determinism.md has the figures). It is process-wide, like the thread count: the model,
the rewards and every other CPU kernel of this process. CUDA is untouched: cuBLAS and cuDNN
choose kernels by shape as well and torch has no switch that makes them batch-invariant, so the
loading option refuses a device other than the CPU.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor

ROWS = 64
"""The rows of every matrix product: big enough that a large product makes few Python calls,
small enough that padding one row to ROWS costs little."""
_state: dict = {}
"""While enabled: the aten override library and the convolution flags to restore."""


def enable() -> None:
    """Switch this process's CPU kernels to batch-invariant ones (idempotent)."""
    if _state:
        return
    _state["flags"] = (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled())
    torch.backends.mkldnn.enabled = False
    torch._C._set_nnpack_enabled(False)
    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # "Overriding a previously registered kernel": the point
        library.impl("mm", _mm, "CPU")
        library.impl("addmm", _addmm, "CPU")
        library.impl("group_norm", _group_norm, "CompositeImplicitAutograd")
        library.impl("conv2d", _conv2d, "CompositeImplicitAutograd")
    _state["library"] = library


def disable() -> None:
    """Back to torch's default kernels (idempotent)."""
    if not _state:
        return
    _state.pop("library")._destroy()
    mkldnn, nnpack = _state.pop("flags")
    torch.backends.mkldnn.enabled = mkldnn
    torch._C._set_nnpack_enabled(nnpack)


def enabled() -> bool:
    """Whether this process runs batch-invariant kernels (result.json records it)."""
    return bool(_state)


def _by_blocks(mat1: Tensor, columns: int, product: Callable[[Tensor, Tensor], None]) -> Tensor:
    """The (rows, columns) result of `product(block, out)` run on ROWS rows of mat1 at a time."""
    rows = mat1.shape[0]
    out = mat1.new_empty(rows, columns)
    for start in range(0, rows, ROWS):
        block = mat1[start:start + ROWS]
        if block.shape[0] == ROWS:
            product(block, out[start:start + ROWS])
            continue
        padded = mat1.new_zeros(ROWS, mat1.shape[1])
        padded[:block.shape[0]] = block
        full = mat1.new_empty(ROWS, columns)
        product(padded, full)
        out[start:] = full[:block.shape[0]]
    return out


def _mm(mat1: Tensor, mat2: Tensor) -> Tensor:
    """aten::mm, by blocks of ROWS rows."""
    return _by_blocks(mat1, mat2.shape[1], lambda block, out: torch.ops.aten.mm.out(block, mat2, out=out))


def _addmm(bias: Tensor, mat1: Tensor, mat2: Tensor, *, beta: float = 1, alpha: float = 1) -> Tensor:
    """aten::addmm = beta * bias + alpha * (mat1 @ mat2), the product by blocks of ROWS rows."""
    out = _mm(mat1, mat2)
    if alpha != 1:
        out.mul_(alpha)
    if beta == 0:                            # addmm's rule: bias ignored, NaN included
        return out
    return out.add_(bias if beta == 1 else bias * beta)


def _group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
                eps: float = 1e-5, cudnn_enabled: bool = True) -> Tensor:
    """aten::group_norm on a contiguous input (torch keeps a channels-last one channels-last)."""
    batch, channels = input.shape[:2]
    if input.device.type == "cpu":
        input = input.contiguous()
    return torch.ops.aten.native_group_norm(input, weight, bias, batch, channels, input.numel() // max(batch * channels, 1),
                                            num_groups, eps)[0]


def _conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=(1, 1), padding=(0, 0),
            dilation=(1, 1), groups: int = 1) -> Tensor:
    """aten::conv2d on a contiguous input (an unbatched one as a batch of one, as torch does); with
    more than one thread, one sample at a time.

    Why one at a time: torch's own convolution runs a batch's samples on parallel threads, each
    sample's GEMMs (forward and backward) on one thread, while a lone sample's GEMMs take every
    thread, and the BLAS may then split a sum over threads. With one thread both are the same
    one-thread GEMM, so the batch goes in one call."""
    if input.device.type == "cpu":
        input = input.contiguous()
    batched = input.unsqueeze(0) if input.dim() == 3 else input

    def convolution(samples: Tensor) -> Tensor:
        return torch.ops.aten.convolution(samples, weight, bias, stride, padding, dilation, False, (0, 0), groups)

    output = (convolution(batched) if torch.get_num_threads() == 1
              else torch.cat([convolution(sample) for sample in batched.split(1)]))
    return output if input.dim() == 4 else output.squeeze(0)
