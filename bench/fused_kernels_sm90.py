"""Compile every kernel of the fused ViViT block for sm_90 (H100/H200) without a GPU, and print
ptxas's registers and spill stores and the shared memory of each: the way the tile defaults of
vivit_fused.KernelConfig were chosen (fewest spills), and a check that the kernels compile
(the interpreter does not catch every type error of compiled Triton).

    python bench/fused_kernels_sm90.py [spatial|temporal]
    CFG_BLOCK_M=64 CFG_NUM_WARPS_DX=4 python bench/fused_kernels_sm90.py   # other tiles

It records the launches that the custom ops' implementations make at the ViV1T widths (on CPU
tensors, kernels not run), then compiles each with triton.compile for GPUTarget("cuda", 90).
Needs Triton (with its bundled ptxas); no GPU.
"""
import os, sys
os.environ["TRITON_INTERPRET"] = "0"
import torch, triton
import triton.language as tl
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from neurotwin.models.cores import vivit_fused as vf
from neurotwin.models.cores import _vivit_fused_kernels as K

records = []
class Rec:
    def __init__(self, fn): self.fn = fn
    def __getitem__(self, grid):
        def call(*args, **kw):
            records.append((self.fn, grid, args, kw))
        return call
class FakeK:
    def __getattr__(self, name):
        return Rec(getattr(K, name))
vf._kernels = lambda: FakeK()
vf._groups = lambda n_tiles, n_chunks, device: (max(1, min(n_tiles, -(-528 // n_chunks))), -(-n_tiles // max(1, min(n_tiles, -(-528 // n_chunks)))))

for k_, v_ in os.environ.items():
    if k_.startswith("CFG_"):
        setattr(vf.CONFIG, k_[4:].lower(), int(v_))
print(vf.CONFIG)
kind = sys.argv[1] if len(sys.argv) > 1 else "spatial"
E, H, D, FF = 112, 2, 80, 224
N, L = (30, 600) if kind == "spatial" else (57, 324)
bf = torch.bfloat16
x = torch.randn(N, L, E)
lnw, lnb = torch.ones(E), torch.zeros(E)
w = torch.randn(3 * H * D, E, dtype=bf)
cos = torch.ones(L, D); sin = torch.zeros(L, D)
groups = 2 if kind == "spatial" else 1
q = torch.empty(N, H, L, D, dtype=bf)
# the custom ops' Python implementations, called directly
vf._qkv._init_fn(x, lnw, lnb, w, cos, sin, L, H, D, groups, 1e-5)
vf._qkv_backward._init_fn(q, q, q, x, lnw, lnb, w, cos, sin, L, H, D, groups, 1e-5)
wff, wout, wo = torch.randn(FF, E, dtype=bf), torch.randn(E, FF, dtype=bf), torch.randn(E, H * D, dtype=bf)
dp = torch.ones(N); seeds = torch.zeros(2, dtype=torch.int64)
vf._post._init_fn(x, q, lnw, lnb, wff, wout, wo, dp, dp, seeds, L, 0.21, 0.04, 0, 1e-5)
vf._post_backward._init_fn(x, x, q, lnw, lnb, wff, wout, wo, dp, dp, seeds, L, 0.21, 0.04, 0, 1e-5)

def ty(v):
    if isinstance(v, torch.Tensor):
        return "*" + {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int64: "i64"}[v.dtype]
    if isinstance(v, bool): return "i1"
    if isinstance(v, int): return "i32"
    if isinstance(v, float): return "fp32"
    raise TypeError(type(v))

target = GPUTarget("cuda", 90, 32)
for fn, grid, args, kw in records:
    names = fn.arg_names
    num_warps = kw.pop("num_warps"); num_stages = kw.pop("num_stages")
    sig, consts = {}, {}
    for n, v in zip(names, args):
        sig[n] = ty(v)
    for n, v in kw.items():
        sig[n] = "constexpr"; consts[n] = v
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    try:
        ck = triton.compile(src, target=target, options={"num_warps": num_warps, "num_stages": num_stages})
        md = ck.metadata
        import subprocess, tempfile, re
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(ck.asm["ptx"])
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"], capture_output=True, text=True).stderr
        regs = re.search(r"Used (\d+) registers", out); spill = re.search(r"(\d+) bytes spill stores", out)
        print(f"{fn.__name__:18s} w{num_warps} s{num_stages} BM {kw.get('BLOCK_M')} grid {str(grid):14s} shared {md.shared:6d} regs {regs.group(1) if regs else '?'} spill-stores {spill.group(1) if spill else '?'}", flush=True)
    except Exception as e:
        print(f"{fn.__name__}: FAILED {type(e).__name__}: {str(e)[:1500]}", flush=True)
