"""The fused ViViT block (vivit_fused) against the unfused ParallelBlock.

On a machine without CUDA the Triton kernels run under Triton's interpreter (TRITON_INTERPRET=1,
set here before the kernels are first imported; vivit_fused.CPU_INTERPRETER, set per test, sends
CPU tensors through it) at tiny sizes, in float32, so values and gradients must agree to float32
rounding (tolerances below). Without Triton those tests skip; the fallback test (CPU tensors take
the unfused path) and the tests of the core option core_fused_block run everywhere. The CUDA tests compare the
bf16 path (autocast) to the unfused block under the same autocast, to bf16 tolerance.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON and not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from neurotwin.errors import ConfigError  # noqa: E402
from neurotwin.models.cores import vivit, vivit_blocks  # noqa: E402
from neurotwin.models.cores import vivit_fused as vf  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread", "cpu_interpreter"),
    # the interpreter's own numpy deprecation, once per program
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning"),
]
needs_kernels = pytest.mark.skipif(
    not HAS_TRITON or not (HAS_CUDA or vf.interpreting()),
    reason="needs Triton (on CUDA, or its interpreter on the CPU)",
)
DEVICE = "cuda" if HAS_CUDA else "cpu"
ROOT = Path(__file__).resolve().parents[1]
E, HEADS, HEAD_DIM, FF = 24, 2, 12, 40  # inner 24, FF 40: chunks of 16 with ragged last ones


@pytest.fixture
def cpu_interpreter(monkeypatch):
    """CPU tensors through the fused kernels (Triton's interpreter), for this test only."""
    monkeypatch.setattr(vf, "CPU_INTERPRETER", not HAS_CUDA and vf.interpreting())


def core_options(**values) -> vivit.ViViTOptions:
    """A tiny ViViT core's options (widths of the blocks here, unfused unless asked)."""
    base = dict(core_emb_dim=E, core_num_heads=HEADS, core_head_dim=HEAD_DIM, core_ff_dim=FF,
                core_spatial_depth=1, core_temporal_depth=1, core_spatial_patch_size=3,
                core_spatial_patch_stride=2, core_fused_block=False)  # fmt: skip
    return vivit.ViViTOptions(**{**base, **values})


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 16 tokens and chunks of 16 columns, so tiny inputs span several tiles, chunks
    and weight-gradient groups (and the ragged edges of each)."""
    for name, value in dict(block_m=16, block_c=16, block_f=16, programs_per_sm=2).items():
        monkeypatch.setattr(vf.CONFIG, name, value)


def make_blocks(causal=False, activation="relu", p_mha=0.0, p_ff=0.0, drop_path=0.0, seed=0):
    """A ParallelBlock with non-trivial parameters (LN affine too) and its fused twin."""
    torch.manual_seed(seed)
    ref = vivit_blocks.ParallelBlock(E, HEADS, HEAD_DIM, FF, activation, p_mha, p_ff, drop_path,
                              False, causal)  # fmt: skip
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fused = vivit_blocks.ParallelBlock(E, HEADS, HEAD_DIM, FF, activation, p_mha, p_ff, drop_path,
                                False, causal)  # fmt: skip
    fused.load_state_dict(ref.state_dict())
    vf.use_fused_blocks(fused)
    assert isinstance(fused, vf.FusedParallelBlock) == HAS_TRITON
    return ref.to(DEVICE), fused.to(DEVICE)


def rope_case(kind: str, regs: int):
    """(sequence length, rope tables) of a spatial (2D, 3x5 patches) or temporal (1D, 7 frames)
    transformer with `regs` register tokens, or no RoPE."""
    if kind == "none":
        return regs + 9, None
    core = vivit.ViViTCore(1, (7, 11), core_options(core_reg_tokens=regs))
    if kind == "2d":
        return regs + core.grid[0] * core.grid[1], core._spatial_rope(regs, DEVICE)
    return regs + 7, core._temporal_rope(7, regs, DEVICE)


def grads(block, x, rope, g):
    y = block(x, rope)
    return [y, *torch.autograd.grad(y, [x, *block.parameters()], g)]


def assert_close_all(ref_out, fused_out, names, rtol):
    for name, a, b in zip(names, ref_out, fused_out):
        scale = a.abs().max().item()
        err = (a - b).abs().max().item()
        assert err <= rtol * scale + 1e-6, f"{name}: max error {err:.3g} (scale {scale:.3g})"


@needs_kernels
@pytest.mark.parametrize(
    "kind,regs,causal,activation",
    [("2d", 3, False, "relu"), ("1d", 2, True, "relu"), ("1d", 0, True, "gelu"),
     ("none", 1, False, "silu"), ("2d", 0, False, "elu")],
)  # fmt: skip
def test_fused_block_matches_unfused(small_tiles, kind, regs, causal, activation):
    """Values and gradients of x and every parameter, float32: relative error <= 1e-5 of each
    tensor's largest entry (float32 rounding of sums over <= 40 terms)."""
    length, rope = rope_case(kind, regs)
    ref, fused = make_blocks(causal, activation)
    x = torch.randn(3, length, E, device=DEVICE, requires_grad=True)  # 3 sequences, odd L
    g = torch.randn(3, length, E, device=DEVICE)
    names = ["y", "x", *(n for n, _ in ref.named_parameters())]
    assert_close_all(grads(ref, x, rope, g), grads(fused, x, rope, g), names, 1e-5)


@needs_kernels
def test_eval_mode_has_no_dropout(small_tiles):
    """With dropout and drop-path rates set, eval mode of both paths is the same function."""
    length, rope = rope_case("1d", 2)
    ref, fused = make_blocks(True, p_mha=0.3, p_ff=0.4, drop_path=0.5)
    ref.eval(), fused.eval()
    x = torch.randn(2, length, E, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, rope), ref(x, rope), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_drop_path_matches_unfused(small_tiles):
    """Training with drop-path only: both paths draw the per-sequence factors of the attention
    then the MLP branch from the same generator, so the same seed gives the same output."""
    length, rope = rope_case("2d", 1)
    ref, fused = make_blocks(False, drop_path=0.5)
    x = torch.randn(8, length, E, device=DEVICE, requires_grad=True)
    g = torch.randn(8, length, E, device=DEVICE)
    torch.manual_seed(5)
    want = grads(ref, x, rope, g)
    torch.manual_seed(5)
    got = grads(fused, x, rope, g)
    names = ["y", "x", *(n for n, _ in ref.named_parameters())]
    assert_close_all(want, got, names, 1e-5)
    dropped = ((want[0] - x).abs().amax(dim=(1, 2)) < 1e-6).sum().item()
    assert dropped < 8  # not every sequence dropped both branches (p = 0.25 each)


@needs_kernels
def test_dropout_gradient_is_the_gradient_of_the_forward(small_tiles):
    """Training with dropout: the backward regenerates the forward's masks (same seeds), so the
    directional derivative from central differences matches <grad, v> (float32, eps 1e-2:
    agreement to 1% of the derivative's size)."""
    length, rope = rope_case("1d", 2)
    _, fused = make_blocks(True, activation="gelu", p_mha=0.3, p_ff=0.3)
    x = torch.randn(2, length, E, device=DEVICE, requires_grad=True)
    g, v = torch.randn_like(x), torch.randn_like(x)

    def f(inp):
        torch.manual_seed(11)  # the same dropout seeds and drop-path factors every call
        return (fused(inp, rope) * g).sum()

    (dx,) = torch.autograd.grad(f(x), [x])
    eps = 1e-2
    with torch.no_grad():
        numeric = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
    analytic = (dx * v).sum()
    assert abs(numeric - analytic) <= 1e-2 * abs(analytic) + 1e-3, (numeric, analytic)


def _probe_post(seeds, p_mha, p_ff, tokens=512):
    """The post op set up so that its output minus x shows the dropout masks: the attention
    branch passes o = 1 through Wo = [I; 0] (inner columns), the MLP branch h = 1 through
    Wff = e_0 rows and Wout = [I 0] (first E of the FF columns); returns (attention mask
    values, MLP mask values), each 0 or 1/(1-p)."""
    inner = HEADS * HEAD_DIM
    n, length = tokens // 8, 8
    x = torch.zeros(n, length, E, device=DEVICE)
    o = torch.ones(n, HEADS, length, HEAD_DIM, device=DEVICE)
    ln_w, ln_b = torch.zeros(E, device=DEVICE), torch.ones(E, device=DEVICE)
    w_ff = torch.zeros(FF, E, device=DEVICE)
    w_ff[:, 0] = 1.0  # pre-activation = h_0 = 1 for every FF column
    w_out = torch.zeros(E, FF, device=DEVICE)
    w_o = torch.zeros(E, inner, device=DEVICE)
    one = torch.ones(n, device=DEVICE)
    zero = torch.zeros(n, device=DEVICE)
    post = torch.ops.neurotwin.vivit_fused_post
    w_o_id = w_o.clone()
    w_o_id[:inner, :inner] = torch.eye(inner)
    attn = post(x, o, ln_w, ln_b, w_ff, w_out, w_o_id, one, zero, seeds, length, p_ff, p_mha, 0,
                1e-5)  # fmt: skip
    w_out_id = w_out.clone()
    w_out_id[:, :E] = torch.eye(E)
    mlp = post(x, o, ln_w, ln_b, w_ff, w_out_id, w_o, zero, one, seeds, length, p_ff, p_mha, 0,
               1e-5)  # fmt: skip
    return attn[..., :inner].reshape(-1), mlp.reshape(-1)


@needs_kernels
@pytest.mark.parametrize("p", [0.1, 0.4])
def test_in_kernel_dropout_rate_and_scale(p):
    """The fraction dropped is p within 4 standard errors (12,288 attention and 12,288 MLP
    elements), and kept elements are scaled by exactly 1/(1-p) (float32)."""
    seeds = torch.tensor([1234, 99], device=DEVICE)
    for values in _probe_post(seeds, p, p):
        dropped = (values == 0).float().mean().item()
        se = (p * (1 - p) / values.numel()) ** 0.5
        assert abs(dropped - p) < 4 * se, (dropped, p)
        kept = values[values != 0]
        torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))


@needs_kernels
def test_in_kernel_dropout_is_a_function_of_the_seed():
    """The same seeds give the same masks; another seed gives other masks; the attention and
    MLP dropouts use different streams."""
    a, b, c = (
        _probe_post(torch.tensor(s, device=DEVICE), 0.3, 0.3, tokens=128)
        for s in ([7, 8], [7, 8], [9, 10])
    )
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y)
        assert (x != z).float().mean() > 0.2  # independent masks differ in ~42% of elements
    n = min(a[0].numel(), a[1].numel())
    assert (a[0][:n] != a[1][:n]).float().mean() > 0.2


@needs_kernels
def test_whole_core_with_fused_blocks():
    """A ViViT core (registers, 2D and causal 1D RoPE) gives the same features and gradients
    with its blocks switched to the fused class; the state dict is unchanged."""
    torch.manual_seed(0)
    kw = dict(core_reg_tokens=2, core_temporal_depth=2, core_temporal_patch_size=3,
              core_p_dropout=0.0, core_mha_dropout=0.0, core_ff_dropout=0.0,
              core_drop_path=0.0)  # fmt: skip
    ref = vivit.ViViTCore(1, (7, 9), core_options(**kw)).to(DEVICE)
    fused = vivit.ViViTCore(1, (7, 9), core_options(**kw, core_fused_block=True)).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    blocks = [*fused.spatial.blocks, *fused.temporal.blocks]
    assert len(blocks) == 3 and all(type(b) is vf.FusedParallelBlock for b in blocks)
    assert {k: v.shape for k, v in fused.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    video = torch.randn(1, 1, 6, 7, 9, device=DEVICE)
    beh, pupil = torch.randn(1, 2, 6, device=DEVICE), torch.randn(1, 2, 6, device=DEVICE)
    outs = []
    for core in (ref, fused):
        y = core(video, beh, pupil)
        outs.append([y, *torch.autograd.grad(y.square().sum(), list(core.parameters()))])
    names = ["features", *(n for n, _ in ref.named_parameters())]
    assert_close_all(outs[0], outs[1], names, 2e-5)


def test_cpu_tensors_take_the_unfused_path(monkeypatch):
    """Without the interpreter, CPU inputs run ParallelBlock's own forward (bit-identical); a
    FusedParallelBlock runs it too where Triton is missing."""
    monkeypatch.setattr(vf, "CPU_INTERPRETER", False)
    ref, fused = make_blocks(True)
    ref, fused = ref.cpu(), fused.cpu()
    fused.__class__ = vf.FusedParallelBlock
    x = torch.randn(2, 5, E)
    assert vf.fused_block_reason(fused, x) is not None
    assert torch.equal(fused(x), ref(x))


def test_only_fusable_blocks_are_switched(monkeypatch):
    """use_fused_blocks leaves QK-norm blocks alone, and every block where Triton is missing."""
    blocks = torch.nn.ModuleList([
        vivit_blocks.ParallelBlock(E, HEADS, HEAD_DIM, FF, "relu", 0, 0, 0, False, False),
        vivit_blocks.ParallelBlock(E, HEADS, HEAD_DIM, FF, "relu", 0, 0, 0, True, False),
    ])  # fmt: skip
    assert vf.use_fused_blocks(blocks) == int(HAS_TRITON)
    assert type(blocks[1]) is vivit_blocks.ParallelBlock
    monkeypatch.setattr(vf, "HAS_TRITON", False)
    again = vivit_blocks.ParallelBlock(E, HEADS, HEAD_DIM, FF, "relu", 0, 0, 0, False, False)
    assert vf.use_fused_blocks(again) == 0 and "Triton" in vf.fused_block_reason(again)


def test_unsupported_blocks_are_named():
    """QK-norm, sequential blocks and approximate GELU are not fused, with the reason given."""
    x = torch.randn(1, 3, E)
    qk = vivit_blocks.ParallelBlock(E, HEADS, HEAD_DIM, FF, "relu", 0, 0, 0, True, False)
    seq = vivit_blocks.SequentialBlock(E, HEADS, HEAD_DIM, FF, "relu", 0, 0, 0, False, False)
    assert "QK-norm" in vf.fused_block_reason(qk, x)
    assert "parallel" in vf.fused_block_reason(seq, x)
    gelu = vivit_blocks.ParallelBlock(E, HEADS, HEAD_DIM, FF, "gelu", 0, 0, 0, False, False)
    gelu.ff_out[0] = torch.nn.GELU(approximate="tanh")
    assert "GELU" in vf.fused_block_reason(gelu, x)


def fused_blocks(core: vivit.ViViTCore) -> int:
    return sum(type(b) is vf.FusedParallelBlock for b in core.modules())


def test_core_fused_block_auto_false_and_true(monkeypatch):
    """core_fused_block: auto switches every fusable block where Triton is installed (none
    where it is not, or for QK-norm blocks), false none; true switches all or stops naming the
    block and the reason. The state dict is the unfused core's either way."""
    torch.manual_seed(0)
    plain = vivit.ViViTCore(1, (7, 9), core_options())
    auto = vivit.ViViTCore(1, (7, 9), core_options(core_fused_block="auto"))
    assert fused_blocks(plain) == 0
    assert fused_blocks(auto) == (2 if HAS_TRITON else 0)
    assert list(auto.state_dict()) == list(plain.state_dict())
    auto.load_state_dict(plain.state_dict())
    video = torch.randn(1, 1, 4, 7, 9)
    beh, pupil = torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    monkeypatch.setattr(vf, "CPU_INTERPRETER", False)  # CPU tensors: the unfused forward
    assert torch.equal(auto.eval()(video, beh, pupil), plain.eval()(video, beh, pupil))
    qk = vivit.ViViTCore(1, (7, 9), core_options(core_fused_block="auto", core_norm_qk=True))
    assert fused_blocks(qk) == 0
    with pytest.raises(ConfigError, match="spatial block 0 cannot be fused: QK-norm"):
        vivit.ViViTCore(1, (7, 9), core_options(core_fused_block=True, core_norm_qk=True))
    with pytest.raises(ConfigError, match="only parallel attention"):
        opts = core_options(core_fused_block=True, core_parallel_attention=False)
        vivit.ViViTCore(1, (7, 9), opts)
    monkeypatch.setattr(vf, "HAS_TRITON", False)
    assert fused_blocks(vivit.ViViTCore(1, (7, 9), core_options(core_fused_block="auto"))) == 0
    with pytest.raises(ConfigError, match="Triton is not installed"):
        vivit.ViViTCore(1, (7, 9), core_options(core_fused_block=True))


def test_core_fused_block_is_a_flag():
    """--core_fused_block reaches the vivit core's options (false, true, auto) and only its."""
    from neurotwin.config import parse_config

    assert (
        parse_config(["--core", "vivit"]).model.core.core_fused_block is False
    )  # measured slower: see RESULTS
    for text, value in (("false", False), ("true", True), ("auto", "auto")):
        config = parse_config(["--core", "vivit", "--core_fused_block", text])
        assert config.model.core.core_fused_block == value
    with pytest.raises(ConfigError, match="belongs to core vivit"):
        parse_config(["--core", "conv3d", "--core_fused_block", "false"])


@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA GPU and Triton")
@pytest.mark.parametrize("kind,causal", [("2d", False), ("1d", True)])
def test_cuda_bf16_matches_unfused(kind, causal):
    """bf16 autocast on the GPU, default tiles: values and gradients within 3% of each tensor's
    largest entry (both paths round q, k, v, o and the products' inputs to bf16)."""
    length, rope = rope_case(kind, 4)
    ref, fused = make_blocks(causal)
    x = torch.randn(64, length, E, device="cuda", requires_grad=True)
    g = torch.randn(64, length, E, device="cuda")
    names = ["y", "x", *(n for n, _ in ref.named_parameters())]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want, got = grads(ref, x, rope, g), grads(fused, x, rope, g)
    assert_close_all(want, got, names, 3e-2)


@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA GPU and Triton")
def test_cuda_fused_block_compiles():
    """torch.compile of a fused block (the custom ops are opaque to it) gives the eager result."""
    length, rope = rope_case("1d", 4)
    _, fused = make_blocks(True)
    x = torch.randn(16, length, E, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(torch.compile(fused)(x, rope), fused(x, rope))


@needs_kernels
def test_fused_block_benchmark_runs(capsys):
    """bench/fused_block.py end to end at smoke-test widths: all three parts print their rows,
    the fused errors pass the benchmark's own check, and the model step has a fused row."""
    spec = importlib.util.spec_from_file_location("fused_block", ROOT / "bench" / "fused_block.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = ("--core_emb_dim 16 --core_spatial_depth 1 --core_temporal_depth 1 --core_head_dim 8 "
            "--core_ff_dim 16 --core_reg_tokens 2 --core_temporal_patch_size 3")  # fmt: skip
    argv = ["--device", DEVICE, "--tiny", "--frames", "3", "--frame_shape", "9", "16",
            "--steps", "1", "--compile", "0", "--blocks", "temporal", "--variants", "unfused",
            "fused", "--model_frames", "6", "--model_steps", "1", "--model_warmup", "1",
            "--sessions", "1", "--neurons", "10", "--model_override", tiny]  # fmt: skip
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "FAILED" not in out and "CHECK" not in out and "skipped" not in out
    tables = out.split("\n## ")
    assert len(tables) == 4
    assert tables[1].count(" ok") == 7  # y, dx and the 5 parameters of a block
    assert "temporal |     fused" in tables[2]
    assert "    fused |     model" in tables[3]
