"""Every Triton kernel the CPU tests launch through the interpreter, compiled for a GPU without one.

The interpreter runs the kernels' Python on CPU tensors; it never lowers them, so a kernel can pass every CPU test
and still fail to compile, or spill registers, on a GPU. Here the ops run once on CPU tensors under the interpreter
while each launch's specialization is recorded (the kernel, its argument types, its constexpr values); a child
process without the interpreter then compiles each one with Triton's compiler and bundled ptxas for sm_90 (the
H100/H200's architecture), sm_80 (A100, the oldest Ampere) and sm_75 (T4, RTX 20xx), one child per
architecture, side by side: every one must produce a cubin, and ptxas may spill at most a few bytes (the
denoiser's fused GEMMs: 32, see SPILL_BUDGET). Each launch is compiled as a GPU launch specializes it, which the
interpreter does not: int arguments equal to 1 as constants, multiples of 16 and 16-byte aligned pointers marked
divisible by 16 (before 2026-12-03 every int was compiled as a runtime i32, variants a GPU never runs). (These are
the specializations this CPU run launches: the noise, loss and penalty kernels pick their block sizes as on a GPU;
the denoiser's and BatchNorm passes' per-feature kernels pick smaller ones for the interpreter: the denoiser's are
also run here with the GPU's choice, and the GPU's own choice for the BatchNorm passes is compiled in
tests/ops/test_bn_closed_form.py.) 2026-11-30, triton 3.6: 56
specializations of the 15 kernels, 23-205 registers, no spills; 17 kernels since the denoiser's fused GEMMs,
18 since its corruption kernel (2026-12-04).
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

from fastgan.ops._dispatch import triton_interpret

triton = pytest.importorskip("triton")
if not triton_interpret():
    pytest.skip("records launches through the Triton interpreter (CPU runs; a GPU run compiles for real)",
                allow_module_level=True)

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

import fastgan.ops as ops  # noqa: E402
from fastgan.ops import bn_closed_form as bncf  # noqa: E402
from fastgan.ops import denoiser as den_ops  # noqa: E402

pytestmark = pytest.mark.triton

_DTYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
           torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8", torch.bool: "i1"}


def _typed(param, value):
    """("type", x, divisible by 16) for a runtime argument, ("constexpr", value, False) for a compile-time one, as
    a GPU launch specializes them: an int equal to 1 becomes a constant, and ints that are multiples of 16 and
    16-byte aligned pointers are compiled as such (what the GPU runs; the interpreter ignores both)."""
    ann = param.annotation
    if ann is triton.language.constexpr or value is None:
        if isinstance(value, triton.language.dtype):
            return "constexpr", {"tl_dtype": value.name}, False
        return "constexpr", value, False
    if isinstance(value, torch.Tensor):
        return "type", "*" + _DTYPES[value.dtype], value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return "type", "i1", False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", 1, False
        return "type", "i32" if -(2 ** 31) <= value < 2 ** 31 else "i64", value % 16 == 0
    if isinstance(value, float):
        return "type", "fp64" if ann is triton.language.float64 else "fp32", False
    raise TypeError(f"{param.name}: cannot type {type(value).__name__}")


def _record_launches(monkeypatch) -> dict:
    """Hooks kernel[grid](...) of the interpreter (its launch API differs between Triton versions; indexing by the
    grid is common to all) to record each launch's specialization."""
    seen: dict = {}
    real_getitem = InterpretedFunction.__getitem__

    def record(kernel, args, kwargs):
        params = list(inspect.signature(kernel.fn).parameters.values())
        bound = dict(zip([p.name for p in params], args)) | kwargs
        spec = {"module": kernel.fn.__module__, "name": kernel.fn.__name__, "signature": {}, "constexprs": {},
                "divisible": []}
        for p in params:
            kind, v, divisible = _typed(p, bound.get(p.name, p.default if p.default is not inspect.Parameter.empty
                                                     else None))
            spec["signature"][p.name] = "constexpr" if kind == "constexpr" else v
            if kind == "constexpr":
                spec["constexprs"][p.name] = v
            if divisible:
                spec["divisible"].append(p.name)
            if kind == "constexpr" and p.annotation is not triton.language.constexpr and v is not None:
                spec.setdefault("ones", []).append(p.name)  # a runtime int equal to 1
        spec["options"] = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        seen.setdefault(json.dumps(spec, sort_keys=True), spec)

    def getitem(self, grid):
        launch = real_getitem(self, grid)

        def recorded(*args, **kwargs):
            record(self, args, kwargs)
            return launch(*args, **kwargs)

        return recorded

    monkeypatch.setattr(InterpretedFunction, "__getitem__", getitem)
    return seen


def _run_every_op():
    """Each op's Triton paths on small CPU tensors: short and long penalty rows, both noise modes with each kind of
    noise and vectorizable rows, the one- and two-pass loss reductions, the denoiser's layers, the BatchNorm passes."""
    g = torch.Generator().manual_seed(0)
    for B, F in ((64, 3), (8, 3 * 32 * 32)):
        for dtype in (torch.float32, torch.bfloat16):
            grad = torch.randn(B, F, generator=g).to(dtype).requires_grad_(True)
            logits = torch.randn(B, generator=g, requires_grad=True)
            ops.grad_norm_penalty(grad, logits, "js_real", "mean", backend="triton").backward()
            if dtype == torch.float32 and F == 3:  # the f-GAN weights (a logistic and an exponential)
                for weight in ("sigmoid", "exp", "kl"):
                    ops.grad_norm_penalty(grad, logits, weight, "mean", backend="triton").backward()
            # the closed forms' terms: the backward kernel with a constant upstream, per written, two weights
            for div in (1, B):  # mode="mlp" divides by 1, mode="jvp" by the batch
                ops.penalty.terms(grad.detach(), logits.detach(), 1, 2, B // 2, div, "triton")
    for F in ((2,), (3, 4, 4)):
        xr = torch.randn(6, *F, generator=g, requires_grad=True)
        xf = torch.randn(6, *F, generator=g, requires_grad=True)
        sigma = torch.tensor(0.3, requires_grad=True)
        for mode, rows in (("double", 6), ("half", 3)):  # the generator's noise: one row per noisy row
            eps = torch.randn(rows, *F, generator=g, requires_grad=True)
            for noise in (0.5, sigma, eps):
                r, f = ops.noisy_clean_batch(xr, xf, noise, mode, backend="triton")
                (r.sum() + f.square().sum()).backward()
    for n in (16, 5000):
        lr = torch.randn(n, generator=g, requires_grad=True)
        lf = torch.randn(n, generator=g, requires_grad=True)
        loss, wr, wf = ops.nt_losses(lr, lf, 0.4, js_weights=True, backend="triton")
        (loss + wr.sum() + wf.sum()).backward()
        ops.nt_losses(lr, lf, 0.4, loss="g", backend="triton").backward()
    # the noise and loss kernels' int64 variants (batches or sides past 2**31 elements), at small sizes
    from fastgan.kernels import noise as noise_kernels, nt_losses as loss_kernels

    with pytest.MonkeyPatch.context() as mp:
        for module in (noise_kernels, loss_kernels):
            mp.setattr(module, "WIDE_FROM", 0)
        # a batch of one too: a launch makes M = 1 a constant, on which the int64 cast failed to compile
        for m in (6, 1):
            xr = torch.randn(m, 3, 4, 4, generator=g, requires_grad=True)
            for mode in ("double", "half"):
                r, f = ops.noisy_clean_batch(xr, xr, torch.tensor(0.3, requires_grad=True), mode, backend="triton")
                (r.sum() + f.square().sum()).backward()
        for n in (16, 5000):
            lr = torch.randn(n, generator=g, requires_grad=True)
            loss, wr, wf = ops.nt_losses(lr, lr, 0.4, js_weights=True, backend="triton")
            (loss + wr.sum() + wf.sum()).backward()
            ops.nt_losses(lr, lr, 0.4, loss="g", backend="triton").backward()
    from fastgan.kernels import denoiser_gemm

    # the denoiser's GEMMs with every tile a GPU can pick (float32 64 x 64 x 32 halved down to 16 x 16 x 32, on sm_75
    # 32 x 64 x 16 down to 16 x 16 x 16; float64 32 x 32 x 16 down to 16 x 16 x 16) and the interpreter's (asked for
    # by FASTGAN_DENOISER_TRITON_GEMM=tl.dot); then its default, the per-layer kernels and the corruption around
    # torch's GEMMs
    from fastgan.ops import _dispatch, denoiser_backends

    float64_dot = (_dispatch.triton_version() or (99,)) >= denoiser_backends.TRITON_FLOAT64_DOT  # none on triton 3.4
    gpu = {(t, dt) for major in (9, 8, 7) for dt in (torch.float32, torch.float64)
           for t in denoiser_gemm.gpu_tiles(major, dt)}  # (BM, BN, BK, warps): sm_80's 64 x 64 take 8 warps
    def denoiser_steps(dtype):
        d = den_ops.Denoiser(8, 16, depth=2, backend="triton", dtype=dtype)
        h = torch.randn(12, 8, generator=g, dtype=dtype, requires_grad=True)
        d.loss(h, detach=False).backward()
        # the loss gradient per row, and shared by the rows: go / B (the mean), go / 1 (the sum: a constant 1)
        d.loss(h, reduction="none").sum().backward()
        d.loss(h, reduction="sum").backward()
        d.generator_loss(torch.randn(12, 8, generator=g, dtype=dtype, requires_grad=True)).backward()
        d(h).sum().backward()
        d.eval()
        d.loss(h).backward()

    with pytest.MonkeyPatch.context() as mp:  # the variable as it was before, set or not, afterwards
        # a reduced loss's shared gradient as a GPU's kernels take it (the product with the rounded 1 / B, as torch
        # divides there; the interpreter's CPU tensors divide)
        from fastgan.kernels import denoiser as layers

        for module in (layers, denoiser_gemm):
            mp.setattr(module, "reciprocal_go", lambda t: True)
        mp.setenv(denoiser_backends.TRITON_GEMM_ENV, "tl.dot")
        for tiles, dtype in [*sorted(gpu, key=str), (None, torch.float32)]:
            if dtype == torch.float64 and not float64_dot:
                continue
            mp.setattr(denoiser_gemm, "TILES", tiles)
            denoiser_steps(dtype)
        mp.setenv(denoiser_backends.TRITON_GEMM_ENV, "torch")
        for dtype in (torch.float32, torch.float64):
            denoiser_steps(dtype)
        # the per-feature kernels with the blocks a GPU picks (64 rows by 16 features below 2048 features, by 32
        # from there), not the interpreter's; the recon forward's row tiles at the widths a GPU meets
        gpu_blocks, gpu = layers._col_blocks, torch.device("cuda")
        mp.setattr(layers, "_col_warps", lambda device, w=layers._col_warps(gpu): w)
        for width in (16, 2048):
            mp.setattr(layers, "_col_blocks", lambda B, N, device, w=width: gpu_blocks(B, w, gpu))
            for dtype in (torch.float32, torch.float64):
                denoiser_steps(dtype)
        for N in (512, 2048):
            y, t = torch.randn(4, N, generator=g), torch.randn(4, N, generator=g)
            layers.recon_forward(y, torch.randn(N, generator=g), t, y.new_empty(4))
    for shape in ((6, 4), (3, 4, 5, 5)):
        x = torch.randn(*shape, generator=g)
        gamma = torch.rand(shape[1], generator=g)
        xhat, rstd = bncf.stats(x, 1e-5, "triton")
        out, mt, q = bncf.centered(xhat, x, rstd, gamma, "triton")
        bncf.vjp(out, x, xhat, x, rstd, gamma, mt, q, "triton")
        bncf.vjp(out, x, xhat, x, rstd, None, mt, q, "triton")


_COMPILE = r"""
import importlib, json, os, re, subprocess, sys, tempfile
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import inspect
from triton.backends.nvidia.compiler import get_ptxas
ARCH = int(sys.argv[1])
# the ptxas Triton itself compiles with (3.9 bundles two: "ptxas" is too old for its own PTX); get_ptxas() takes the
# architecture from triton 3.6 on
PTXAS = (get_ptxas(ARCH) if inspect.signature(get_ptxas).parameters else get_ptxas()).path
SM = "sm_90a" if ARCH == 90 else f"sm_{ARCH}"  # Triton's own choice for Hopper
results = []
for spec in json.load(sys.stdin):
    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    consts = {k: (tl.dtype(v["tl_dtype"]) if isinstance(v, dict) else v) for k, v in spec["constexprs"].items()}
    src = ASTSource(fn=fn, signature=spec["signature"],
                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                    attrs={(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in spec["divisible"]})
    name = spec["module"] + "." + spec["name"]
    try:
        ck = triton.compile(src, target=GPUTarget("cuda", ARCH, 32), options=spec["options"] or None)
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(ck.asm["ptx"])
        info = subprocess.run([PTXAS, f"-arch={SM}", "-v", f.name, "-o", os.devnull], capture_output=True,
                              text=True).stderr
        os.unlink(f.name)
        regs = re.search(r"Used (\d+) registers", info)
        spill = re.search(r"(\d+) bytes spill stores", info)
        ptx = ck.asm["ptx"]
        results.append({"kernel": name, "consts": {**spec["constexprs"], **spec["options"]},
                        "ok": len(ck.asm["cubin"]) > 0,
                        "i32_loops": len(re.findall(r"scf\.for\b[^\n]*: i32 \{", ck.asm["ttir"])),
                        "ptx": {"mma": "mma" in ptx, "tf32": "cvt.rna.tf32" in ptx, "bf16": "bf16" in ptx},
                        "fp32": "*fp32" in spec["signature"].values(),
                        "registers": int(regs.group(1)) if regs else None,
                        "spill_bytes": int(spill.group(1)) if spill else None, "error": ""})
    except Exception as e:
        results.append({"kernel": name, "consts": spec["constexprs"], "ok": False, "error": repr(e)[:500]})
print(json.dumps(results))
"""


ARCHS = (90, 80, 75)
# the kernel modules whose loops run over a size that can come within a block of 2**31 (nt_losses keeps such sizes
# on its WIDE variant; the fused GEMMs take fewer than 2**31 elements; noise's loops count 4-element groups)
INT64_LOOPS = {"fastgan.kernels.bn_closed_form", "fastgan.kernels.penalty", "fastgan.kernels.denoiser"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{arch: (child's return code, stderr, results)}: the ops run once under the interpreter, their launches'
    specializations compiled for each architecture by children running side by side."""
    with pytest.MonkeyPatch.context() as mp:
        seen = _record_launches(mp)
        _run_every_op()
    specs = list(seen.values())
    kernels = {(s["module"].rsplit(".", 1)[-1], s["name"]) for s in specs}
    assert {m for m, _ in kernels} == {"penalty", "noise", "nt_losses", "denoiser", "denoiser_gemm",
                                       "bn_closed_form"}, kernels
    assert len(kernels) == 18, sorted(kernels)  # every @triton.jit kernel the package launches
    # launches specialized as on a GPU: ints equal to 1 made constants (unit strides; the noise backward's C for
    # a scalar sigma), arguments marked divisible by 16
    assert any("C" in s.get("ones", ()) for s in specs if s["name"] == "_backward_kernel" and "noise" in s["module"])
    assert any("sf" in s.get("ones", ()) for s in specs if "penalty" in s["module"])
    assert any(s["divisible"] for s in specs)
    specs += _emulated_dot_variants(specs)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # cwd: not the checkout, whose source tree (without fastgan.kernels) would shadow the installed package
    cwd = tmp_path_factory.mktemp("compile")
    children = {arch: subprocess.Popen([sys.executable, "-c", _COMPILE, str(arch)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
                for arch in ARCHS}
    out = {}
    for arch, child in children.items():
        mine = [s for s in specs if s.get("min_arch", 0) <= arch and _launched_on(s, arch)]
        stdout, stderr = child.communicate(json.dumps(mine), timeout=900)
        results = json.loads(stdout.strip().splitlines()[-1]) if child.returncode == 0 else None
        out[arch] = (child.returncode, stderr, results, len(mine))
    return out


EMULATED_DOTS = ("tf32x3", "bf16x6")  # FASTGAN_DENOISER_TRITON_GEMM=tl.dot-<this>: float32 on sm_80 and newer


def _offered_emulations() -> tuple:
    """The emulations this triton's tl.dot offers (3.4's and 3.5.1's: tf32x3 only), as fastgan/ops/denoiser_backends.py
    reads them: a mode it lacks is refused there, so it is not compiled here."""
    from fastgan.ops import denoiser_backends

    offered = denoiser_backends._triton_dot_precisions()
    return tuple(p for p in EMULATED_DOTS if p in offered)


def _emulated_dot_variants(specs: list) -> list:
    """The fused GEMMs' float32 launches at a GPU's tiles (IEEE on CPU tensors) again with each tensor-core emulation
    of a float32 product, which a GPU of sm_80 or newer runs when asked (fastgan/ops/denoiser_backends.py dot_precision); the
    interpreter cannot run them, so they are compiled from the recorded launches."""
    from fastgan.kernels import denoiser_gemm

    tiles = denoiser_gemm.gpu_tiles(9, torch.float32) | denoiser_gemm.gpu_tiles(8, torch.float32)
    out = []
    for spec in specs:
        c = spec["constexprs"]
        if spec["module"].endswith("denoiser_gemm") and c.get("PREC") == "ieee" and \
                "*fp32" in spec["signature"].values() and _tile(c, spec["options"]) in tiles:
            out += [{**spec, "constexprs": {**spec["constexprs"], "PREC": prec}, "min_arch": 80}
                    for prec in _offered_emulations()]
    assert out or not _offered_emulations(), "no float32 fused-GEMM launch recorded"
    return out


def test_the_emulated_dot_variants_compile_to_tensor_core_code(compiled):
    """Each emulation this triton offers compiles, for sm_80 and sm_90 only (sm_75 has no TF32 or bf16 tensor cores),
    into tensor-core instructions on operands split as it says (a tl.dot that ignored the precision would compile
    the IEEE FMA loop, with no mma); the IEEE float32 GEMMs have no mma."""
    for arch, (returncode, stderr, results, _) in compiled.items():
        assert returncode == 0, stderr[-3000:]
        gemms = [r for r in results if r["kernel"].startswith("fastgan.kernels.denoiser_gemm.")]
        for prec, mark in (("tf32x3", "tf32"), ("bf16x6", "bf16")):
            mine = [r for r in gemms if r["consts"].get("PREC") == prec]
            assert bool(mine) == (arch >= 80 and prec in _offered_emulations()), (arch, prec)
            bad = [(r["kernel"], r.get("ptx"), r["error"]) for r in mine
                   if not (r["ok"] and r["ptx"]["mma"] and r["ptx"][mark])]
            assert not bad, bad
        ieee32 = [r for r in gemms if r["consts"].get("PREC") == "ieee" and r.get("fp32")]
        assert ieee32 and not any(r["ptx"]["mma"] for r in ieee32), "an IEEE float32 GEMM compiled to mma"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_launched_kernel_compiles(compiled, arch):
    returncode, stderr, results, n_specs = compiled[arch]
    assert returncode == 0, stderr[-3000:]
    assert len(results) == n_specs
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed
    assert all(r["registers"] for r in results), [r for r in results if not r["registers"]]  # ptxas -v was read
    # every tile the GEMMs can launch on this architecture was compiled, and no other (the fixture's _launched_on)
    from fastgan.kernels import denoiser_gemm
    from fastgan.ops import _dispatch, denoiser_backends

    dtypes = [torch.float32] + [torch.float64] * ((_dispatch.triton_version() or (99,))
                                                  >= denoiser_backends.TRITON_FLOAT64_DOT)
    compiled_tiles = {_tile(r["consts"]) for r in results if r["kernel"].startswith("fastgan.kernels.denoiser_gemm.")}
    assert compiled_tiles == set().union(*(denoiser_gemm.gpu_tiles(arch // 10, dt) for dt in dtypes)), compiled_tiles
    spilled = [(r["kernel"], r["consts"], r["spill_bytes"]) for r in results
               if (r["spill_bytes"] or 0) > _spill_budget(r["kernel"].rsplit(".", 1)[0], arch)]
    assert not spilled, f"register spills: {spilled}"
    # loops over a runtime size count in int64: an i32 counter given a bound within a block of 2**31 wrapped
    # negative and the loop went on, loading and storing at negative offsets (a Triton review, 2026-12-07)
    wrapping = [r["kernel"] for r in results if r.get("i32_loops") and r["kernel"].rsplit(".", 1)[0] in INT64_LOOPS]
    assert not wrapping, wrapping


# The denoiser's fused GEMMs keep a tile, both operands and a layer's BatchNorm coefficients live; ptxas spills
# 4-24 bytes in some of their variants (sm_90, 32 x 64 tiles; 4-16 bytes on sm_80 and sm_75) while using 72-96 of
# 255 registers, and 160-188 bytes in the forward GEMM with a BatchNorm prologue at the 64 x 64 x 32 tiles and 4
# warps sm_90 picks for large layers: measured, not guessed (an H200 ran n_h=2048, B=512 1.41x faster so than at 8
# warps without spills; bench/results/h200-2026-12-04.json). sm_8x takes 8 warps at that tile (denoiser_gemm.gpu_warps:
# at 4, triton 3.8 spilled 5572 bytes in the weight-gradient GEMM for sm_80, which this test caught on torch 2.14.1).
# A budget of 192 still catches a shortage's hundreds more. Every other kernel may
# spill a few bytes, as ptxas chooses to far below the register limit: compiled as a GPU launch specializes it
# (go_div = B a runtime int), the penalty's terms pass over 3x32x32 rows in chunks spills 4 bytes at 96 of 255
# registers on sm_90 (none at 8 warps; the 4 warps are what the chunked path measured best with on an H100);
# Triton 3.9 spills 4 bytes in two backward variants on sm_80 (at 128 and 80 registers). A real shortage spills
# hundreds.
SPILL_BUDGET = {"fastgan.kernels.denoiser_gemm": 192}
OTHER_SPILL_BUDGET = 8


def _launched_on(spec: dict, arch: int) -> bool:
    """Whether a GPU of this architecture launches the recorded specialization, so that the fixture compiles it for
    that architecture: the denoiser's GEMMs only at the tiles and warps `_tiles` picks there for their dtype
    (sm_90's 64 x 64 x 32 at 4 warps never runs on sm_80 or sm_75, nor float32's K-steps of 32 on sm_75). Compiling
    only those cut the specializations compiled from 2280 (880, 880 and 520 a child) to 1680 (670, 670 and 340): the
    compiles are most of this file's time, and with a cold triton cache (a fresh CI machine) of the suite's."""
    if not spec["module"].endswith(".denoiser_gemm"):
        return True
    from fastgan.kernels import denoiser_gemm

    return _tile(spec["constexprs"], spec["options"]) in denoiser_gemm.gpu_tiles(arch // 10, _gemm_dtype(spec))


def _gemm_dtype(spec: dict) -> torch.dtype:
    """A fused GEMM's operand dtype: float32 or float64 (every variant also takes a float64 pointer, its scalars)."""
    types = set(spec["signature"].values())
    assert not types & {"*fp16", "*bf16"}, spec["signature"]
    return torch.float32 if "*fp32" in types else torch.float64


def _tile(consts: dict, options: dict = None) -> tuple:
    """(BM, BN, BK, warps) of a fused-GEMM launch, as denoiser_gemm.gpu_tiles lists them."""
    opts = consts if options is None else options
    return consts["BM"], consts["BN"], consts["BK"], opts.get("num_warps", 4)


def _spill_budget(module: str, arch: int) -> int:
    return SPILL_BUDGET.get(module, OTHER_SPILL_BUDGET)
