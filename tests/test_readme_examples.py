"""The Python examples of the README and of docs/ run as printed (on CPU: "cuda" read as "cpu"), given only the
names their "# yours: ..." comment says the reader supplies (a model, a batch), and do what the text around them
says: a block copied into a fresh interpreter imports what it uses. Every python block is either run here or named
in NOT_RUN with where it is tested instead, so a new example cannot go untested unnoticed. A block may appear in
several of those files (the README's overview repeats some of docs/'s examples) only word for word."""
import builtins
import re
import symtable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.reference import penalty as ref_penalty

from helpers import require_fashion_mnist

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = sorted((README.parent / "docs").rglob("*.md"))
# python blocks not run here, by their key (_blocks): where the same call is tested
NOT_RUN: dict[str, str] = {}


def _key(block: str) -> str:
    """A block's first line that is not an import or a comment (several blocks start with the same imports)."""
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith(("import ", "from ", "#"))]
    return lines[0].split("   #")[0].strip()


def _blocks() -> dict[str, str]:
    """Python blocks (and pycon sessions) of the README and docs/ by _key."""
    blocks, where = {}, {}
    for path in [README, *DOCS]:
        for block in re.findall(r"^```(?:python|pycon)\n(.*?)^```", path.read_text(), flags=re.S | re.M):
            key, name = _key(block), path.relative_to(README.parent)
            assert blocks.get(key, block) == block, f"{name} and {where[key]} hold different blocks starting {key!r}"
            blocks[key], where[key] = block, where.get(key, name)
    return blocks


def _block(key: str) -> str:
    return _blocks()[key].replace('"cuda"', '"cpu"')


def _yours(block: str) -> set[str]:
    """The names a block's "# yours: a, b (what b is), c" comment says the reader supplies."""
    found = re.search(r"^# yours: (.*)$", block, flags=re.M)
    if not found:
        return set()
    return {re.match(r"\s*(\w+)", part).group(1) for part in re.sub(r"\([^)]*\)", "", found.group(1)).split(",")}


def _free_names(code: str) -> set[str]:
    """Names the code reads at module level or as globals of its functions and classes, and never binds."""
    top = symtable.symtable(code, "block", "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}
    read = set()

    def walk(table):
        for sym in table.get_symbols():
            if (sym.is_referenced() if table is top else sym.is_global()):
                read.add(sym.get_name())
        for child in table.get_children():
            walk(child)

    walk(top)
    return read - bound - set(dir(builtins))


def _run(key: str, edits=(), **namespace) -> dict:
    """Runs block `key` given `namespace`, which may hold only the names the block's "# yours:" comment lists (and
    those an edit brings in), with each (old, new) of `edits` replaced first; an `old` the block no longer holds
    fails (an edit silently not made would run the block unedited: 1000 training steps, or fastgan compared with
    itself)."""
    block = code = _block(key)
    for old, new in edits:
        assert old in code, f"README block {key!r} no longer holds {old!r}"
        code = code.replace(old, new)
    given = set(namespace) - _yours(block) - {name for _, new in edits for name in re.findall(r"\w+", new)}
    assert not given, f"block {key!r} is given {sorted(given)}, which its '# yours:' comment does not list"
    exec(compile(code, f"README.md block {key!r}", "exec"), namespace)
    return namespace


RUN_HERE = []


def runs(key: str):
    RUN_HERE.append(key)
    return lambda f: f


def _mlp_d():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))


def _params(D):
    return [p.detach().clone() for p in D.parameters()]


@runs('r = fastgan.train("configs/roth-mixture-gamma-annealed.yaml",')
def test_train_example(tmp_path, monkeypatch):
    """The config file with overrides, 20 steps instead of 1000, into tmp_path; the fields the block reads."""
    monkeypatch.chdir(README.parent)
    r = _run('r = fastgan.train("configs/roth-mixture-gamma-annealed.yaml",', edits=[
        ('"run.steps=1000"', f'"run.steps=20", "run.out_dir={tmp_path}", "run.progress=off"')])["r"]
    assert r.step == 20 and r.out_dir.parent == tmp_path and set(r.losses) >= {"d_loss", "g_loss"}
    assert r.penalty_modes == ("mlp",), "the comment's example: auto on the mixture's LeakyReLU MLP D"


@runs("for x_real in loader:")
def test_user_loop_steps_d_as_the_reference_penalty_does():
    """The drop-in loop: D's parameters after two steps equal those of the same loop on the reference."""
    B, z_dim = 8, 4
    torch.manual_seed(1)
    loader = [torch.randn(B, 3) for _ in range(2)]
    G = nn.Linear(z_dim, 3)
    results = []
    for source in ("fastgan", "reference"):
        D = _mlp_d()
        opt_D = torch.optim.Adam(D.parameters(), 1e-2)
        namespace = dict(loader=loader, G=G, B=B, z_dim=z_dim, D=D, opt_D=opt_D, gamma=10.0)
        torch.manual_seed(2)
        if source == "fastgan":
            _run("for x_real in loader:", **namespace)
        else:
            _run("for x_real in loader:", edits=[("fastgan.ops.js_penalty", "ref_js_penalty")],
                 ref_js_penalty=ref_penalty.js_penalty, **namespace)
        results.append(_params(D))
    assert not all(torch.equal(a, b) for a, b in zip(results[0], _params(_mlp_d()))), "D did not step"
    torch.testing.assert_close(results[0], results[1])


@runs('penalty, logits_real, logits_fake = fastgan.ops.js_penalty(D, x_real, x_fake, mode="auto")')
def test_auto_mode_gives_the_reference_gradients():
    torch.manual_seed(0)
    x_real, x_fake = torch.randn(16, 3), torch.randn(16, 3)
    D, D_ref = _mlp_d(), _mlp_d()
    _run('penalty, logits_real, logits_fake = fastgan.ops.js_penalty(D, x_real, x_fake, mode="auto")',
         D=D, x_real=x_real, x_fake=x_fake, gamma=10.0)
    pen, lr, lf = ref_penalty.js_penalty(D_ref, x_real, x_fake)
    (F.softplus(-lr).mean() + F.softplus(lf).mean() + 5.0 * pen).backward()
    torch.testing.assert_close([p.grad for p in D.parameters()], [p.grad for p in D_ref.parameters()])
    assert fastgan.ops.penalty_mode(D, x_real)[0] == "mlp"


@runs(">>> fastgan.ops.penalty_mode(D, x_real)")
def test_penalty_mode_prints_what_the_readme_shows():
    """The session shown: a D whose layer 4 is a GroupNorm, on CPU."""
    lines = _blocks()[">>> fastgan.ops.penalty_mode(D, x_real)"].splitlines()
    D = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 4, 2, 1), nn.LeakyReLU(0.2),
                      nn.GroupNorm(4, 16), nn.Flatten(), nn.Linear(16 * 8 * 8, 1))
    x_real = torch.randn(4, 3, 32, 32)
    assert repr(eval(lines[0].removeprefix(">>> "), dict(fastgan=fastgan, D=D, x_real=x_real))) == lines[1]


@runs("class MyD(nn.Module):")
def test_a_module_with_as_sequential_takes_the_closed_form():
    torch.manual_seed(0)
    x_real, x_fake = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    ns = _run("class MyD(nn.Module):", x_real=x_real, x_fake=x_fake)
    assert fastgan.ops.penalty_mode(ns["MyD"](), x_real)[0] == "mlp", "the comment says: closed form"
    torch.manual_seed(3)
    D = ns["MyD"]()
    pen, lr, lf = fastgan.ops.js_penalty(D, x_real, x_fake, mode="mlp")
    want = ref_penalty.js_penalty(D, x_real, x_fake)
    torch.testing.assert_close((pen, lr, lf), want)
    assert torch.isfinite(ns["penalty"])


@runs("@torch.compile(fullgraph=True)")
def test_compiled_closed_form_loss():
    """fullgraph compiles it (aot_eager here: inductor's C++ build would take a minute on CI's CPU, and the claim
    is that Dynamo traces the op without a graph break). Where fastgan does not let Dynamo trace the closed form
    (torch < 2.7: penalty_jvp.CLOSED_FORM_TRACED) it runs eagerly, a graph break, as the README says
    above the block: there without fullgraph."""
    from fastgan.ops import penalty_jvp

    torch._dynamo.reset()
    torch.manual_seed(0)
    D = _mlp_d()
    x_real, x_fake = torch.randn(16, 3), torch.randn(16, 3)
    ns = _run("@torch.compile(fullgraph=True)", D=D, gamma=10.0, edits=[
        ("fullgraph=True)", f'fullgraph={penalty_jvp.CLOSED_FORM_TRACED}, backend="aot_eager")')])
    got = ns["d_loss"](x_real, x_fake)
    pen, lr, lf = ref_penalty.js_penalty(D, x_real, x_fake)
    torch.testing.assert_close(got, F.softplus(-lr).mean() + F.softplus(lf).mean() + 5.0 * pen)
    torch._dynamo.reset()


@runs("if step % k == 0:")
def test_lazy_regularization_fragment():
    """Every k-th step adds k·γ/2·Ω; the others are the plain loss."""
    torch.manual_seed(0)
    x_real, x_fake = torch.randn(8, 3), torch.randn(8, 3)
    D = _mlp_d()
    plain = F.softplus(-D(x_real)).mean() + F.softplus(D(x_fake)).mean()
    for step, with_penalty in ((0, True), (1, False)):
        ns = _run("if step % k == 0:", step=step, k=4, D=D, x_real=x_real, x_fake=x_fake, gamma=10.0)
        pen = ref_penalty.js_penalty(D, x_real, x_fake)[0]
        want = plain + (4 * 10.0 / 2 * pen if with_penalty else 0)
        torch.testing.assert_close(ns["loss_D"], want)


@runs('device = "cuda" if torch.cuda.is_available() else "cpu"')
def test_ntgan_ops_example():
    torch.manual_seed(0)
    G, D = nn.Linear(4, 3), _mlp_d()
    ns = _run('device = "cuda" if torch.cuda.is_available() else "cpu"',
              x_real=torch.randn(8, 3), G=G, z=torch.randn(8, 4), D=lambda x: D(x).squeeze(1))
    assert ns["real_b"].shape == ns["fake_b"].shape == (16, 3)
    assert ns["w_r"].shape == ns["w_f"].shape == (16,)
    ns["loss_d"].backward(inputs=[ns["log_sigma"]])
    assert ns["log_sigma"].grad is not None and torch.isfinite(ns["log_sigma"].grad)
    ns["loss_g"].backward()
    assert all(p.grad is not None for p in G.parameters()), "G's loss reaches G through the noisy batch"


@runs("den = Denoiser(n_features=256, hidden=256, depth=3, sigma=1.0)")
def test_denoiser_example():
    torch.manual_seed(0)

    class MyD(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(3, 256)

        def features(self, x):
            return torch.relu(self.body(x))

    G = nn.Linear(4, 3)
    ns = _run("den = Denoiser(n_features=256, hidden=256, depth=3, sigma=1.0)", my_discriminator=MyD(),
              x_real=torch.randn(8, 3), G=G, z=torch.randn(8, 4), adv_loss=torch.zeros(()))
    den = ns["den"]
    assert den.lambda_denoise == pytest.approx(0.03 / 256)
    assert all(p.grad is not None for p in den.parameters()), "opt_r stepped on the denoiser's gradients"
    ns["loss_g"].backward()
    assert all(p.grad is not None for p in G.parameters())


@runs('ds = build_dataset(DataConfig(name="fashion_mnist"), device="cpu")')
def test_dataset_example():
    require_fashion_mnist()
    ns = _run('ds = build_dataset(DataConfig(name="fashion_mnist"), device="cpu")')
    x = ns["x"]
    assert x.shape == (64, 1, 28, 28) and x.min() >= -1 and x.max() <= 1 and x.min() < 0 < x.max()
    mean = ns["mean"]
    assert mean.shape == (1, 28, 28) and mean.dtype == torch.float64 and -1 <= mean.min() < mean.max() <= 1


@runs("D = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))")
def test_use_backend_example():
    from fastgan.ops import _dispatch

    before = dict(_dispatch.counts)
    _run("D = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))")
    ran = {k: n - before.get(k, 0) for k, n in _dispatch.counts.items()
           if k[0] == "grad_norm_penalty" and n > before.get(k, 0)}
    assert ran == {("grad_norm_penalty", "reference"): 2, ("grad_norm_penalty", "cpu"): 2}, ran  # real and fake


@pytest.mark.parametrize("key", [k for k, b in _blocks().items() if not b.startswith(">>>")])
def test_a_block_reads_no_name_it_neither_binds_nor_lists_as_yours(key):
    """Copied into a fresh interpreter a block runs once the reader defines what its "# yours:" comment lists: it
    imports torch, F, nn and fastgan itself (13 of 14 blocks failed so on 2026-12-05, NameError or "cuda" on a
    CPU machine, the test harness having supplied those names)."""
    block = _blocks()[key]
    free, yours = _free_names(block), _yours(block)
    assert free <= yours, f"block {key!r} reads {sorted(free - yours)} without binding them or listing them as yours"
    assert yours <= free, f"block {key!r} lists {sorted(yours - free)} as yours but never reads them"


def test_every_python_block_is_run_or_named():
    keys = set(_blocks())
    assert keys == set(RUN_HERE) | set(NOT_RUN), (
        f"README python blocks not covered: {sorted(keys - set(RUN_HERE) - set(NOT_RUN))}; "
        f"covered blocks no longer in the README: {sorted(set(RUN_HERE) | set(NOT_RUN) - keys)}")
