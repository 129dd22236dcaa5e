"""bench/costs.py counts the FLOPs and kernel-launching ops of a D update per penalty mode. The counts are exact
and device-independent, so the closed form's structural claims are asserted here (small widths, same op
sequence as the benchmarks): it never costs more matmul/convolution FLOPs than the double backward; without
BatchNorm and with piecewise-linear activations it shares one weight gradient per layer (FLOPs ~4/3 of the plain
update's; an MLP's last tangent GEMM folded away: ~1); with batch statistics its BatchNorm passes are fused (fewer than half the double backward's kernels)."""

import pytest
import torch

from fastgan.ops._dispatch import triton_interpret
from helpers import bench_module

costs = bench_module("costs")

# model -> batch; DCGAN width 16 (at width 8 the first layer's input gradient, which the plain update skips,
# weighs enough to lift the no-BatchNorm ratio to 1.46; 1.40 at 16, 1.35 at the benchmarks' 64)
CASES = {"mlp_leaky": 64, "mlp_tanh": 64, "dcgan32": 16, "dcgan32_nobn": 16}


@pytest.fixture(scope="module")
def counted():
    out = {}
    for model, batch in CASES.items():
        for mode in costs.MODES:
            out[(model, mode)] = costs.update_costs(model, mode, width=16, batch=batch)
    return out


def _ratio(counted, model, mode, what):
    return getattr(counted[(model, mode)], what) / getattr(counted[(model, "unregularized")], what)


@pytest.mark.parametrize("model", list(CASES))
def test_closed_form_needs_no_more_flops_than_double_backward(counted, model):
    assert counted[(model, "mlp")].flops <= counted[(model, "double_backward")].flops * 1.01
    assert counted[(model, "jvp")].flops > counted[(model, "double_backward")].flops  # the tangent pass's own GEMMs


def test_piecewise_linear_closed_form_shares_the_weight_gradient(counted):
    # forward + input-gradient chain + tangent pass + ONE weight gradient per layer: ~4/3 of forward+backward
    assert _ratio(counted, "dcgan32_nobn", "mlp", "flops") <= 1.45
    assert _ratio(counted, "dcgan32_nobn", "double_backward", "flops") >= 1.9


def test_mlp_closed_form_folds_the_last_tangent_gemm(counted):
    # d-n-n-1 LeakyReLU MLP: the tangent's only n x n GEMM is read off the weight gradient's (mlp_penalty.
    # fold_index), so the update needs the plain update's FLOPs; per-sample terms in one kernel for real and fake.
    # Kernels: 59 against the plain update's 57 until the joint pass contracted each batch apart on CUDA too
    # (closed_form_maps._apart, 2026-12-06: a GEMM or sum per batch and an add, 69); two passes take 90
    assert _ratio(counted, "mlp_leaky", "mlp", "flops") <= 1.05
    assert _ratio(counted, "mlp_leaky", "double_backward", "flops") >= 1.9
    c = counted[("mlp_leaky", "mlp")]
    assert c.ops["fastgan.grad_norm_penalty_terms"] == 1 and c.ops["fastgan.grad_norm_penalty"] == 0
    assert _ratio(counted, "mlp_leaky", "mlp", "kernels") <= 1.25


def test_smooth_activations_need_their_own_chain(counted):
    assert 1.8 <= _ratio(counted, "mlp_tanh", "mlp", "flops") <= 2.1


def test_batch_statistics_passes_are_fused(counted):
    c = counted[("dcgan32", "mlp")]
    # per BatchNorm layer and batch: stats + centered on the input-gradient chain, centered + vjp in the backward
    assert c.ops["fastgan.bn_cf_stats"] == 8 and c.ops["fastgan.bn_cf_vjp"] == 8
    assert c.ops["fastgan.bn_cf_centered"] == 16
    assert c.kernels < 0.5 * counted[("dcgan32", "double_backward")].kernels
    assert c.kernels < 0.5 * counted[("dcgan32", "jvp")].kernels
    assert c.flops <= counted[("dcgan32", "double_backward")].flops * 1.01


def test_the_joint_pass_is_counted_as_on_cuda(counted):
    # the MLP D's real and fake batches in one closed-form pass: one weight GEMM per layer for both
    assert counted[("mlp_leaky", "mlp")].ops["aten.mm"] <= counted[("mlp_leaky", "double_backward")].ops["aten.mm"]
    from fastgan.ops import closed_form_maps, penalty_jvp

    assert "cpu" not in penalty_jvp.JOINT_MLP_DEVICES  # switched on only while counting
    assert "cpu" in closed_form_maps.BLOCKED_SUM_DEVICES  # switched off only while counting


def test_the_resnet_d_is_counted_without_the_closed_form():
    """Roth et al.'s ResNet D (bench_penalty_modes.py's "resnet32", width 4 and B=4 here): counted in every mode but
    "mlp", which cannot run its residual shortcuts; its double backward needs a second backward through D (>= 1.9x
    the plain update's FLOPs) and jvp the tangent pass's GEMMs on top."""
    assert "resnet32" in costs.MODELS and costs.modes_of("resnet32") == ("unregularized", "double_backward", "jvp")
    assert costs.modes_of("dcgan32") == costs.MODES
    rows = costs.table(["resnet32"], width=4, batch=4)
    assert [r["mode"] for r in rows] == ["unregularized", "double_backward", "jvp"]
    assert all(r["width"] == 4 for r in rows)
    by = {r["mode"]: r for r in rows}
    assert by["double_backward"]["flops_vs_unregularized"] >= 1.9
    assert by["jvp"]["gflop"] > by["double_backward"]["gflop"]


@pytest.mark.skipif(not triton_interpret(), reason="counts Triton launches under the interpreter")
@pytest.mark.triton
@pytest.mark.parametrize("depth", [1, 3])
def test_denoiser_step_kernel_counts(depth):
    """One denoiser training step: the Triton backend's fused tl.dot GEMMs launch one kernel per GEMM (depth + 1
    forward, dW per layer and dX below each but the first: 3 depth + 2) and two torch ops around them (the mean and
    its backward's seed: the GEMMs count the batch and divide the mean's gradient, and write the running
    statistics, not copied), with the tiles a GPU picks; fewer than half the reference's kernels, and fewer than the
    torch-GEMM backends' (which need a BatchNorm kernel after each GEMM). The Triton backend's default is the
    torch-GEMM one: the cuda backend's launches, op for op, and the cpu backend's but for the weight gradients
    (n_features == n_h here: every layer's weight the same shape), one batched GEMM on the GPU backends, a GEMM a
    layer on the cpu one."""
    cd = bench_module("costs_denoiser")
    ref, fused, triton, gemm = (cd.step_kernels(impl, n_h=16, depth=depth, B=8)
                                for impl in ("reference", "cpu", "triton", "triton-tl.dot"))
    per_layer_dw = {**triton["ops"], "aten.mm": triton["ops"]["aten.mm"] + depth + 1}
    del per_layer_dw["aten.bmm"]
    assert (fused["ops"], fused["fastgan_kernels"]) == (per_layer_dw, triton["fastgan_kernels"]), (triton, fused)
    assert fused["fastgan_kernels"] == 2 * depth + 3  # corruption, recon and its backward, BatchNorm each way
    assert gemm["fastgan_kernels"] == 3 * depth + 2, gemm
    # 16 features are one column tile: no sum of the per-sample loss's tile partials (below)
    assert gemm["ops"] == {"aten.mean": 1, "aten.ones_like": 1}, gemm["ops"]
    # the torch-GEMM step's loss kernel divides the mean's gradient by B itself, and its BatchNorm kernels count
    # the batch: no division or batch-counter launch of their own
    assert "aten.div" not in fused["ops"] and fused["ops"]["aten.mean"] == 1, fused["ops"]
    assert "aten._foreach_add_" not in fused["ops"], fused["ops"]
    assert "aten._foreach_copy_" not in gemm["ops"] and "aten._foreach_copy_" not in fused["ops"]
    # forward: depth + 1, the backward's dX: depth, its dW: one bmm (the reference: 3 depth + 2 GEMMs)
    assert triton["ops"]["aten.mm"] == 2 * depth + 1 and triton["ops"]["aten.bmm"] == 1, triton["ops"]
    assert gemm["total"] < triton["total"] < ref["total"] and fused["total"] < ref["total"]
    assert gemm["total"] <= 0.45 * ref["total"], (gemm["total"], ref["total"])


@pytest.mark.skipif(not triton_interpret(), reason="counts Triton launches under the interpreter")
@pytest.mark.triton
def test_denoiser_step_counts_the_gpus_tiles():
    """The fused GEMMs' count takes the tiles an H200 picks (costs_denoiser.GPU_TILES), not the interpreter's: at 64
    features and B = 64 its 16 x 16 tiles split the output layer in four column tiles, whose per-sample partials
    one torch sum adds up (the interpreter's 64-wide tiles would hide that launch)."""
    cd = bench_module("costs_denoiser")
    from fastgan.kernels import denoiser_gemm

    assert denoiser_gemm.gpu_rule(64, 64, *cd.GPU_TILES, torch.float32)[:2] == (16, 16)
    gemm = cd.step_kernels("triton-tl.dot", n_h=64, depth=2, B=64)
    assert gemm["ops"] == {"aten.mean": 1, "aten.ones_like": 1, "aten.sum": 1}, gemm["ops"]
    assert gemm["fastgan_kernels"] == 3 * 2 + 2, gemm


@pytest.mark.parametrize("depth,n_h,B", [(1, 8, 5), (3, 16, 8), (6, 12, 7)])
@pytest.mark.parametrize("impl", ["reference", "cpu"])
def test_denoiser_gemm_flops_are_the_counted_ones(impl, depth, n_h, B, monkeypatch):
    """bench/goals.py's FLOPs of a denoiser step's GEMMs (3 depth + 2 of 2 B n_h^2), from which it reads the float32
    rate the 2x goal asks, are what the reference step and the torch-GEMM backends run, counted op by op."""
    from fastgan.ops import denoiser_eager

    goals = bench_module("goals")
    bd = bench_module("bench_denoiser")
    # the eager Functions, as a step runs them: under a dispatch mode they would take the (opaque) custom ops
    monkeypatch.setattr(denoiser_eager, "_custom_ops", lambda *tensors: False)
    den, net, h, noise = bd._setup("cpu", impl, n_h, depth, B)
    bd.loss_step(impl, den, net, h, noise)
    counted = costs.Costs()
    with counted:
        bd.loss_step(impl, den, net, h, noise)
    assert counted.flops == goals.denoiser_gemm_flops(n_h, depth, B) > 0
