"""The model's gather and attention entry points against plain loops and explicit softmax; the Triton kernels
against their references (output and every gradient); the one switch. (Training with the Triton ops, and their
compile for Hopper: e2e/test_triton_kernels.py.)"""
import importlib
import inspect

import pytest
import torch

import kernels
from kernels.attention import attention_reference, attention_triton
from kernels.masked_gather import (masked_gather_reference, masked_gather_triton, predictor_tokens_reference,
                                   predictor_tokens_triton)


def test_masked_gather_matches_a_loop_and_accumulates_repeated_indices():
    x = torch.randn(3, 10, 5, requires_grad=True)
    pos = torch.randn(10, 5, requires_grad=True)
    idx = torch.randint(0, 10, (2, 3, 4))
    idx[1, 0] = idx[0, 0]  # the same tokens in two masks
    out = kernels.masked_gather(x, idx, pos)
    want = torch.stack([x[b, idx[m, b]] + pos[idx[m, b]] for m in range(2) for b in range(3)])
    assert torch.equal(out, want)
    g = torch.randn_like(out)
    gx, gp = torch.autograd.grad(out, (x, pos), g)
    wx, wp = torch.autograd.grad(want, (x, pos), g)
    assert torch.allclose(gx, wx) and torch.allclose(gp, wp)
    shared = kernels.masked_gather(pos[None], idx)  # batch-1 source shared by every row
    assert torch.equal(shared, torch.stack([pos[idx[m, b]] for m in range(2) for b in range(3)]))


def test_masked_gather_rejects_bad_shapes():
    with pytest.raises(ValueError, match="idx must be an int32/int64"):
        kernels.masked_gather(torch.randn(2, 4, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="x has batch 3 but idx has batch 2"):
        kernels.masked_gather(torch.randn(3, 4, 3), torch.zeros(2, 2, dtype=torch.long))


def test_every_registered_op_is_a_function_of_the_package_with_its_references_signature():
    """kernels/__init__.py defines one function per public op of REGISTRY, by hand: none may be missing or drift."""
    for group in kernels.REGISTRY.values():
        for name, reference in group.implementations[group.reference].items():
            op = getattr(kernels, name, None)
            assert inspect.isfunction(op) and op.__module__ == "kernels", f"kernels.{name} is not defined in kernels/"
            assert inspect.signature(op) == inspect.signature(reference), name


def test_attention_matches_explicit_softmax():
    q, k, v = torch.randn(3, 2, 3, 37, 24).unbind(0)
    assert torch.allclose(kernels.attention(q, k, v), attention_reference(q, k, v), atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# The Triton kernels against the references. On the CPU they run in Triton's interpreter (tests/conftest.py sets
# TRITON_INTERPRET=1), which computes in fp32 inside the kernels (its bf16 arithmetic is wrong, so the kernels upcast
# right after each load); fp16 and bf16 then differ from the reference only by the rounding of inputs and outputs.
attention_module = importlib.import_module("kernels.attention")  # `kernels.attention` itself is the public op
gather_module = importlib.import_module("kernels.masked_gather")

# Tolerance per input dtype, (atol, rtol), against the fp32 reference run on the same (already rounded) inputs and
# output gradient. "out" for the outputs, "grad" for every gradient. Seen in the interpreter (N ≤ 70, d ≤ 88):
# fp32 ≤ 1e-6, fp16 ≤ 5e-4, bf16 ≤ 8e-3 absolute; the GPU also rounds P and dS to the input dtype before its
# tensor-core dots, which the bf16/fp16 margins cover.
TOL = {
    torch.float32: {"out": (1e-5, 1e-5), "grad": (1e-4, 1e-4)},
    torch.float16: {"out": (2e-3, 2e-3), "grad": (4e-3, 4e-3)},
    torch.bfloat16: {"out": (2e-2, 2e-2), "grad": (3e-2, 3e-2)},
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _on_the_test_device():
    """Tensors are made on the GPU where there is one (the Triton kernels need CUDA there), else on the CPU."""
    with torch.device(DEVICE):
        yield


def _leaves(*shapes, dtype, scale=1.0):
    return [(torch.randn(*s) * scale).to(DEVICE, dtype).requires_grad_() for s in shapes]


def _fp32_copies(*tensors):
    return [t.detach().float().requires_grad_(t.requires_grad) for t in tensors]


def _assert_close(got, want, dtype, kind, what):
    atol, rtol = TOL[dtype][kind]
    err = (got.float() - want.float()).abs().max().item()
    assert torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol), f"{what}: max abs error {err:.3g}"


def _check_op_and_grads(op, reference, inputs, dtype, names):
    """op(*inputs) and every gradient against reference(*fp32 copies), with the same output gradient."""
    got = op(*inputs)
    grad_out = torch.randn(got.shape).to(got.device, got.dtype)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    got_grads = torch.autograd.grad(got, leaves, grad_out)
    ref_inputs = [_fp32_copies(t)[0] if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]
    want = reference(*ref_inputs)
    ref_leaves = [t for t in ref_inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    want_grads = torch.autograd.grad(want, ref_leaves, grad_out.float())
    _assert_close(got, want, dtype, "out", "output")
    for name, g, w in zip(names, got_grads, want_grads, strict=True):
        assert g.dtype == dict(zip(names, leaves))[name].dtype, f"grad of {name} has dtype {g.dtype}"
        _assert_close(g, w, dtype, "grad", f"grad of {name}")
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b, h, n, d", [(1, 2, 70, 24), (2, 1, 45, 80), (1, 1, 40, 88), (1, 1, 300, 64)])
def test_triton_attention_output_and_grads_match_reference(b, h, n, d, dtype):
    # N is not a multiple of the 32-token block (the interpreter's one config); d = 24, 80, 88 pad to 32 and 128;
    # N = 300 is the longest 224 px sequence this project runs.
    q, k, v = _leaves((b, h, n, d), (b, h, n, d), (b, h, n, d), dtype=dtype)
    out = _check_op_and_grads(attention_triton, attention_reference, [q, k, v], dtype, "qkv")
    assert out.shape == (b, h, n, d) and out.dtype == dtype


def test_triton_attention_takes_the_models_strided_qkv_and_returns_a_free_transpose():
    b, n, h, d = 2, 33, 2, 64
    qkv = torch.randn(b, n, 3 * h * d, device=DEVICE, requires_grad=True)

    def heads(fn):
        def run(packed):
            q, k, v = packed.reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # (B, H, N, d) views, non-contiguous
            return fn(q, k, v).transpose(1, 2).reshape(b, n, h * d)
        return run

    out = _check_op_and_grads(heads(attention_triton), heads(attention_reference), [qkv],
                              torch.float32, ["qkv"])
    raw = attention_triton(*qkv.detach().reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4))
    assert raw.transpose(1, 2).is_contiguous()  # stored (B, N, H, d): the model's reshape copies nothing
    assert out.shape == (b, n, h * d)


@pytest.mark.parametrize("n", [1, 5])
def test_triton_attention_on_sequences_shorter_than_a_block(n):
    q, k, v = _leaves((2, 2, n, 24), (2, 2, n, 24), (2, 2, n, 24), dtype=torch.float32)
    _check_op_and_grads(attention_triton, attention_reference, [q, k, v], torch.float32, "qkv")


def test_triton_attention_rejects_bad_inputs(monkeypatch):
    q = torch.randn(1, 2, 8, 24)
    with pytest.raises(ValueError, match="one shape"):
        attention_triton(q, q, q[:, :, :4])
    with pytest.raises(ValueError, match="share one dtype"):
        attention_triton(q, q, q.half())
    with pytest.raises(ValueError, match="head dim"):
        attention_triton(*[torch.randn(1, 1, 4, 320)] * 3)
    if not torch.cuda.is_available():
        monkeypatch.setattr(attention_module, "INTERPRET", False)
        with pytest.raises(RuntimeError, match="need CUDA tensors"):
            attention_triton(q, q, q)


def _repeating_idx(m, b, k, n, dtype):
    idx = torch.stack([torch.stack([torch.randperm(n)[:k] for _ in range(b)]) for _ in range(m)])  # (M, B, K)
    idx[1] = idx[0]  # mask 1 repeats mask 0: the backward must add both
    idx[-1, 0, : k // 2] = idx[-1, 0, 0]  # and one row repeats a token within itself
    return idx.to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d, idx_dtype", [(24, torch.int64), (80, torch.int32), (88, torch.int64)])
def test_triton_gather_output_and_grads_match_reference(d, idx_dtype, dtype):
    x, pos = _leaves((2, 37, d), (37, d), dtype=dtype)
    idx = _repeating_idx(3, 2, 13, 37, idx_dtype)
    got = _check_op_and_grads(masked_gather_triton, masked_gather_reference, [x, idx, pos], dtype,
                              ["x", "pos"])
    assert torch.equal(got, masked_gather_reference(x, idx, pos))  # a copy and one add: bit-exact
    no_pos = _check_op_and_grads(masked_gather_triton, masked_gather_reference, [x, idx[0]], dtype,
                                 ["x"])
    assert no_pos.shape == (2, 13, d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_gather_from_a_shared_source_accumulates_every_row(dtype):
    (table,) = _leaves((1, 29, 80), dtype=dtype)  # batch-1 source read by every (mask, batch) row
    idx = _repeating_idx(4, 3, 9, 29, torch.int64)
    _check_op_and_grads(masked_gather_triton, masked_gather_reference, [table, idx], dtype, ["table"])


def test_triton_gather_promotes_like_the_reference():
    """The encoder's case: bf16 patch tokens, laid out as timm's PatchEmbed leaves them ((B, N, D) with strides
    (N·D, 1, N)), + the fp32 positional table → fp32 tokens, as x + pos promotes."""
    x, pos = torch.randn(2, 24, 20, dtype=torch.bfloat16).transpose(1, 2), torch.randn(20, 24)
    idx = torch.randint(0, 20, (2, 7))
    got = masked_gather_triton(x, idx, pos)
    assert got.dtype == torch.float32 and torch.equal(got, masked_gather_reference(x, idx, pos))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [24, 88])
def test_triton_predictor_tokens_output_and_grads_match_reference(d, dtype):
    x_ctx, pos, token = _leaves((2, 11, d), (37, d), (1, 1, d), dtype=dtype)
    ctx_idx = torch.stack([torch.randperm(37)[:11] for _ in range(2)]).to(DEVICE)
    tgt_idx = _repeating_idx(3, 2, 5, 37, torch.int32)
    got = _check_op_and_grads(predictor_tokens_triton, predictor_tokens_reference,
                              [x_ctx, ctx_idx, tgt_idx, pos, token], dtype, ["x_ctx", "pos", "mask_token"])
    assert got.shape == (3 * 2, 11 + 5, d)
    assert torch.equal(got, predictor_tokens_reference(x_ctx, ctx_idx, tgt_idx, pos, token))


def test_predictor_tokens_is_the_official_repeat_gather_cat_chain():
    """The contract written out: row m·B + b = [x_ctx[b] + pos[ctx_idx[b]] ‖ token + pos[tgt_idx[m, b]]]."""
    x_ctx, pos, token = torch.randn(2, 3, 8), torch.randn(10, 8), torch.randn(1, 1, 8)
    ctx_idx, tgt_idx = torch.randint(0, 10, (2, 3)), torch.randint(0, 10, (2, 2, 4))
    want = torch.stack([torch.cat([x_ctx[b] + pos[ctx_idx[b]], token[0] + pos[tgt_idx[m, b]]])
                        for m in range(2) for b in range(2)])
    for op in (predictor_tokens_reference, predictor_tokens_triton):
        assert torch.allclose(op(x_ctx, ctx_idx, tgt_idx, pos, token), want)


def test_predictor_tokens_follows_the_mixed_precision_of_the_model():
    """bf16 context features (autocast Linear) + fp32 positions and token → fp32, each grad in its input's dtype."""
    x_ctx = torch.randn(2, 6, 24, dtype=torch.bfloat16, requires_grad=True)
    pos, token = torch.randn(16, 24), torch.randn(1, 1, 24, requires_grad=True)
    ctx_idx, tgt_idx = torch.randint(0, 16, (2, 6)), torch.randint(0, 16, (4, 2, 3))
    got = predictor_tokens_triton(x_ctx, ctx_idx, tgt_idx, pos, token)
    want = predictor_tokens_reference(x_ctx, ctx_idx, tgt_idx, pos, token)
    assert got.dtype == want.dtype == torch.float32 and torch.equal(got, want)
    gx, gt = torch.autograd.grad(got.square().sum(), (x_ctx, token))
    assert gx.dtype == torch.bfloat16 and gt.shape == token.shape


@pytest.mark.parametrize("op", ["triton", "reference"])
def test_out_of_range_indices_are_named(op, clean_switch):
    kernels.configure(check_indices="always")  # on CUDA, "first" may have spent its one check in an earlier test
    gather = {"triton": masked_gather_triton, "reference": masked_gather_reference}[op]
    tokens = {"triton": predictor_tokens_triton, "reference": predictor_tokens_reference}[op]
    x = torch.randn(2, 10, 24)
    idx = torch.randint(0, 10, (3, 2, 4))
    idx[2, 1, 3] = 10
    with pytest.raises(IndexError, match=r"idx\[2, 1, 3\] = 10 is out of range: the source has 10 tokens"):
        gather(x, idx)
    idx[2, 1, 3] = -1
    with pytest.raises(IndexError, match=r"= -1 is out of range"):
        gather(x, idx)
    ctx_idx = torch.tensor([[0, 1], [2, 12]])
    with pytest.raises(IndexError, match=r"ctx_idx\[1, 1\] = 12"):
        tokens(torch.randn(2, 2, 24), ctx_idx, torch.zeros(3, 2, 4, dtype=torch.long), x[0], torch.randn(24))


def test_triton_gather_rejects_bad_shapes_like_the_reference():
    with pytest.raises(ValueError, match="idx must be an int32/int64"):
        masked_gather_triton(torch.randn(2, 4, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="pos must be"):
        masked_gather_triton(torch.randn(2, 4, 3), torch.zeros(2, 2, dtype=torch.long), torch.randn(4, 2))
    with pytest.raises(ValueError, match="mask_token must hold 3 values"):
        predictor_tokens_triton(torch.randn(2, 2, 3), torch.zeros(2, 2, dtype=torch.long),
                                        torch.zeros(1, 2, 1, dtype=torch.long), torch.randn(4, 3), torch.randn(4))


# ------------------------------------------------------------------------------------------------------- the switch
def test_switch_flips_every_op_and_each_implementation_agrees(clean_switch):
    q, k, v = torch.randn(3, 2, 2, 37, 24).unbind(0)
    x, pos = torch.randn(2, 37, 24), torch.randn(37, 24)
    idx = _repeating_idx(3, 2, 6, 37, torch.int64)
    token = torch.randn(1, 1, 24)
    want_attn = attention_reference(q, k, v)
    want_gather = masked_gather_reference(x, idx, pos)
    want_tokens = predictor_tokens_reference(x[:, :5], idx[0, :, :5], idx, pos, token)
    for attention, gather in [("triton", "triton"), ("sdpa", "reference"), ("sdpa-cudnn", "triton"),
                              ("reference", "triton")]:
        assert kernels.configure(attention=attention, gather=gather) == {"attention": attention, "gather": gather}
        assert kernels.implementations() == {"attention": attention, "gather": gather}
        assert torch.allclose(kernels.attention(q, k, v), want_attn, atol=1e-5), attention
        assert torch.allclose(kernels.masked_gather(x, idx, pos), want_gather), gather
        assert torch.allclose(kernels.predictor_tokens(x[:, :5], idx[0, :, :5], idx, pos, token), want_tokens), gather
    if not torch.cuda.is_available():  # what auto means on this device class
        assert kernels.configure() == {name: op.auto["cpu"] for name, op in kernels.REGISTRY.items()}


def test_environment_overrides_the_config(clean_switch, monkeypatch):
    monkeypatch.setenv("IJEPA_ATTENTION", "reference")
    monkeypatch.setenv("IJEPA_GATHER", "triton")
    assert kernels.configure(attention="sdpa", gather="reference") == {"attention": "reference", "gather": "triton"}
    monkeypatch.setenv("IJEPA_ATTENTION", "flash")
    with pytest.raises(ValueError, match="attention implementation must be one of .* got 'flash'.*IJEPA_ATTENTION"):
        kernels.configure()


def test_triton_on_a_cpu_without_the_interpreter_is_refused(clean_switch, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="attention=triton needs a CUDA device"):
        kernels.configure(attention="triton", device="cpu")
    with pytest.raises(ValueError, match="gather=triton needs a CUDA device"):
        kernels.configure(gather="triton", device="cpu")
    assert kernels.configure(device="cpu") == {name: op.auto["cpu"] for name, op in kernels.REGISTRY.items()}


def test_index_check_modes(clean_switch):
    kernels.configure(check_indices="always")
    assert gather_module._check_every_call
    kernels.configure()
    assert not gather_module._check_every_call
    with pytest.raises(ValueError, match="'first' or 'always'"):
        kernels.configure(check_indices="never")


# ------------------------------------------------------------------------------------------------- GPU-only checks
# bf16 at the project's shapes (ViT-H/14 N = 256 and a ~70-token context with d = 80, the predictor's N ≈ 113 with
# d = 24, 448 px N = 784, ViT-g d = 88), against the fp32 reference: error relative to the reference's largest value.
GPU_REL_TOL = 2e-2


def _rel_err(got, want):
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "sdpa", "sdpa-cudnn"])
@pytest.mark.parametrize("b, h, n, d", [(2, 16, 256, 80), (4, 16, 69, 80), (4, 16, 113, 24), (1, 16, 784, 64),
                                        (1, 8, 300, 88)])
def test_gpu_attention_bf16(b, h, n, d, impl):
    """Every CUDA attention implementation in bf16 against the fp32 explicit softmax, output and every gradient."""
    q, k, v = _leaves((b, h, n, d), (b, h, n, d), (b, h, n, d), dtype=torch.bfloat16)
    got = attention_module.IMPLEMENTATIONS[impl]["attention"](q, k, v)
    grad_out = torch.randn_like(got)
    grads = torch.autograd.grad(got, (q, k, v), grad_out)
    qf, kf, vf = _fp32_copies(q, k, v)
    want = attention_reference(qf, kf, vf)
    want_grads = torch.autograd.grad(want, (qf, kf, vf), grad_out.float())
    assert _rel_err(got, want) < GPU_REL_TOL
    for name, g, w in zip("qkv", grads, want_grads):
        assert _rel_err(g, w) < GPU_REL_TOL, name


@pytest.mark.gpu
def test_gpu_triton_gather_and_predictor_tokens_bf16():
    x, pos = _leaves((8, 256, 1280), (256, 1280), dtype=torch.bfloat16)
    idx = _repeating_idx(4, 8, 43, 256, torch.int64)
    _check_op_and_grads(masked_gather_triton, masked_gather_reference, [x, idx, pos], torch.bfloat16,
                        ["x", "pos"])
    x_ctx, ppos, token = _leaves((8, 69, 384), (256, 384), (1, 1, 384), dtype=torch.bfloat16)
    ctx_idx = torch.stack([torch.randperm(256)[:69] for _ in range(8)]).to(DEVICE)
    _check_op_and_grads(predictor_tokens_triton, predictor_tokens_reference,
                        [x_ctx, ctx_idx, idx, ppos, token], torch.bfloat16, ["x_ctx", "pos", "mask_token"])
