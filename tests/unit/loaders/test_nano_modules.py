"""NanoLinear, NanoEmbedding and NanoTiedHead against ``x @ dequant(W).T`` from the numpy reference."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import nanofmt

torch = pytest.importorskip("torch")
M = pytest.importorskip("nanofmt.loaders.nano_modules")
from nanofmt.loaders import nano_fused  # noqa: E402
from nanofmt.loaders.nano_kernels import Scheme  # noqa: E402

Q4 = nanofmt.Scheme("affine", bits=4, group_size=32)
LINEAR_SCHEMES = (
    [nanofmt.Scheme("int8_row", bits=8)]
    + [nanofmt.Scheme("affine", bits=b, group_size=32) for b in (2, 3, 4, 5, 6, 8)]
    + [nanofmt.Scheme("affine", bits=4, group_size=g) for g in (64, 128)]
    + [nanofmt.Scheme("affine_dq", bits=b, group_size=32, meta_bits=6) for b in (3, 4)]
    + [nanofmt.Scheme("affine_dq", bits=4, group_size=128, meta_bits=8)]
)
FUSABLE = [Q4, nanofmt.Scheme("affine", bits=4, group_size=64), nanofmt.Scheme("affine", bits=4, group_size=128), nanofmt.Scheme("affine_dq", bits=4, group_size=32, meta_bits=6), nanofmt.Scheme("int8_row", bits=8)]


@functools.cache
def quantized(scheme: nanofmt.Scheme, rows: int, cols: int, seed: int) -> nanofmt.QuantizedTensor:
    return nanofmt.quantize(np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32), scheme)


def packed(cls: type, scheme: nanofmt.Scheme, rows: int, cols: int, seed: int = 0, **kw: object) -> tuple[object, torch.Tensor]:
    """A filled module of ``cls`` and the reference weight (float64, from nanofmt.dequantize)."""
    qt = quantized(scheme, rows, cols, seed)
    args = (cols, rows) if cls is M.NanoLinear else (rows, cols)
    module = cls(*args, Scheme(scheme.name, scheme.bits, scheme.group_size, scheme.meta_bits), device="cpu", **kw)
    module.set_parts({role: torch.from_numpy(np.ascontiguousarray(p)) for role, p in qt.parts.items()})
    return module, torch.from_numpy(nanofmt.dequantize(qt, "f32")).double()


@pytest.mark.parametrize("scheme", LINEAR_SCHEMES, ids=lambda s: s.label())
@pytest.mark.parametrize("shape", [(37, 100), (64, 256)], ids=str)
@pytest.mark.parametrize("chunk_rows", [1, 5, None])
def test_nano_module_linear_matches_reference(scheme: nanofmt.Scheme, shape: tuple[int, int], chunk_rows: int | None) -> None:
    rows, cols = shape
    linear, w = packed(M.NanoLinear, scheme, rows, cols, bias=True, dtype=torch.float32)
    linear.compute_dtype = torch.float32
    linear.bias.data = torch.randn(rows)
    linear.chunk_bytes = None if chunk_rows is None else chunk_rows * cols * 4
    x = torch.randn(2, 3, cols)
    want = x.double() @ w.T + linear.bias.double()
    got = linear(x)
    assert got.shape == (2, 3, rows) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nano_module_linear_16bit_uses_reference_weights(dtype: torch.dtype) -> None:
    linear, w = packed(M.NanoLinear, nanofmt.Scheme("affine_dq", bits=4, group_size=32, meta_bits=6), 40, 96, dtype=dtype)
    linear.chunk_bytes = 7 * 96 * 4
    x = torch.randn(5, 96).to(dtype)
    want = torch.nn.functional.linear(x, w.to(dtype))  # the weight cast once from the exact decode
    torch.testing.assert_close(linear(x), want)


@pytest.mark.parametrize("scheme", FUSABLE, ids=lambda s: s.label())
@pytest.mark.parametrize("shape", [(64, 256), (48, 128)], ids=str)
def test_nano_module_fused_equals_chunked(scheme: nanofmt.Scheme, shape: tuple[int, int]) -> None:
    """The kernel path takes its scales in bf16: equal to the chunked path up to that rounding."""
    rows, cols = shape
    chunked, w = packed(M.NanoLinear, scheme, rows, cols, dtype=torch.bfloat16)
    fused, _ = packed(M.NanoLinear, scheme, rows, cols, dtype=torch.bfloat16)
    assert fused.use_fused() is None and fused.path in ("int4", "int8")
    x = torch.randn(3, cols, dtype=torch.bfloat16)
    a, b = chunked(x).double(), fused(x).double()
    exact = x.double() @ w.T
    scale = float(exact.abs().max())
    assert float((a - b).abs().max()) <= 0.02 * scale
    assert float((b - exact).abs().max()) <= 0.02 * scale
    assert "weight_codes" not in dict(fused.named_buffers()) or fused.path == "int8"  # int4: codes stored once, in the kernel layout


# <= 4-bit codes at any width: 2/3-bit codes are valid int4 codes; tails and odd rows are padded
WIDENED = [
    nanofmt.Scheme("affine", bits=2, group_size=32),
    nanofmt.Scheme("affine", bits=3, group_size=64),
    nanofmt.Scheme("affine_dq", bits=3, group_size=32, meta_bits=4),
    nanofmt.Scheme("affine_dq", bits=2, group_size=128, meta_bits=6),
    nanofmt.Scheme("affine_dq", bits=4, group_size=128, meta_bits=6),
    nanofmt.Scheme("affine", bits=4, group_size=64),
]


@pytest.mark.parametrize("scheme", WIDENED, ids=lambda s: s.label())
@pytest.mark.parametrize("shape", [(64, 576), (40, 100), (48, 128)], ids=str)
def test_nano_module_fused_takes_narrow_codes_and_tail_groups(scheme: nanofmt.Scheme, shape: tuple[int, int]) -> None:
    """Same tolerance as the 4-bit fused test: only the bf16 rounding of scales and zeros differs."""
    rows, cols = shape
    fused, w = packed(M.NanoLinear, scheme, rows, cols, dtype=torch.bfloat16)
    assert fused.use_fused() is None and fused.path == "int4"
    assert "weight_codes" not in dict(fused.named_buffers())
    x = torch.randn(3, cols, dtype=torch.bfloat16)
    exact = x.double() @ w.T
    got = fused(x)
    assert got.shape == (3, rows) and got.dtype == torch.bfloat16
    assert float((got.double() - exact).abs().max()) <= 0.02 * float(exact.abs().max())


def test_nano_module_fused_tied_table_with_tail_and_odd_rows() -> None:
    table, w = packed(M.NanoEmbedding, nanofmt.Scheme("affine_dq", bits=3, group_size=128, meta_bits=6), 150, 576, dtype=torch.bfloat16)
    assert table.use_fused(keep_rows=True) is None and table.path == "int4"
    ids = torch.tensor([0, 63, 64, 149])
    assert torch.equal(table(ids), w[ids].bfloat16())  # rows read back from the padded kernel layout, exact
    h = torch.randn(4, 576, dtype=torch.bfloat16)
    exact = h.double() @ w.T
    assert float((M.NanoTiedHead(table)(h).double() - exact).abs().max()) <= 0.02 * float(exact.abs().max())


def test_nano_module_fused_refuses_wide_codes() -> None:
    linear, w = packed(M.NanoLinear, nanofmt.Scheme("affine", bits=5, group_size=32), 64, 64, dtype=torch.bfloat16)
    assert "no int4 kernel" in linear.use_fused()
    assert linear.path == "chunked"
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    torch.testing.assert_close(linear(x), torch.nn.functional.linear(x, w.bfloat16()))


def test_nano_module_fused_missing_op_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nano_fused, "_op", lambda name: None)
    linear, _ = packed(M.NanoLinear, Q4, 64, 64, dtype=torch.bfloat16)
    assert "no CPU int4 kernel" in linear.use_fused() and linear.path == "chunked"


def test_nano_module_cpu_int4_layout_reads_rows_back() -> None:
    for rows in (64, 80, 304, 4096 + 48):
        layout = nano_fused.cpu_int4_layout(rows)
        assert layout is not None
        q = torch.randint(0, 16, (rows, 64), dtype=torch.int32)
        kernel = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        ids = torch.tensor([0, rows - 1, rows // 2, 17])
        assert torch.equal(nano_fused.gather_int4_cpu(kernel, ids, rows, 64, layout), q[ids].to(torch.uint8))
        nano = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
        assert torch.equal(nano_fused.pack_int4(nano, 64), kernel)


def test_nano_module_embedding_decodes_only_requested_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    table, w = packed(M.NanoEmbedding, nanofmt.Scheme("affine_dq", bits=4, group_size=32, meta_bits=6), 300, 64, dtype=torch.float32)
    decoded: list[int] = []
    real = M.decode_rows

    def counting(parts: dict, *args: object, **kw: object) -> torch.Tensor:
        decoded.append(next(iter(parts.values())).shape[0])
        return real(parts, *args, **kw)

    monkeypatch.setattr(M, "decode_rows", counting)
    ids = torch.tensor([[3, 7], [3, 299]])
    out = table(ids)
    assert decoded == [4]  # the four requested positions, not the 300-row table
    assert out.shape == (2, 2, 64) and out.dtype == torch.float32
    assert torch.equal(out.double(), w[ids])


def test_nano_module_embedding_scale_and_dtype() -> None:
    table, w = packed(M.NanoEmbedding, Q4, 64, 64, dtype=torch.bfloat16, embed_scale=8.0)
    out = table(torch.tensor([5, 6]))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, w[[5, 6]].bfloat16() * 8)


def test_nano_module_tied_head_equals_table_matmul() -> None:
    table, w = packed(M.NanoEmbedding, Q4, 160, 64, dtype=torch.float32)
    head = M.NanoTiedHead(table)
    assert list(head.state_dict()) == []  # the table is stored once, in the embedding
    table.chunk_bytes = 64 * 4 * 50  # 50 vocabulary rows at a time
    h = torch.randn(2, 3, 64)
    torch.testing.assert_close(head(h).double(), h.double() @ w.T, rtol=1e-5, atol=1e-4)


def test_nano_module_tied_head_fused_keeps_exact_rows() -> None:
    table, w = packed(M.NanoEmbedding, nanofmt.Scheme("affine_dq", bits=4, group_size=32, meta_bits=6), 160, 64, dtype=torch.bfloat16)
    assert table.use_fused(keep_rows=True) is None and table.path == "int4"
    ids = torch.tensor([0, 63, 64, 159])
    assert torch.equal(table(ids), w[ids].bfloat16())  # rows read back from the kernel layout, exact metadata
    h = torch.randn(4, 64, dtype=torch.bfloat16)
    exact = h.double() @ w.T
    assert float((M.NanoTiedHead(table)(h).double() - exact).abs().max()) <= 0.02 * float(exact.abs().max())


def test_nano_module_state_dict_keys_are_stored_names() -> None:
    linear, _ = packed(M.NanoLinear, nanofmt.Scheme("affine_dq", bits=4, group_size=32, meta_bits=6), 32, 64, bias=True)
    assert sorted(linear.state_dict()) == sorted(["weight_codes", "weight_qscales", "weight_qoffsets", "weight_super_scales", "weight_super_offsets", "bias"])


def test_nano_module_to_dtype_changes_compute_dtype_only() -> None:
    linear, w = packed(M.NanoLinear, Q4, 32, 64, dtype=torch.float32)
    scales = linear.weight_scales.clone()
    linear.to(torch.bfloat16)
    assert linear.compute_dtype == torch.bfloat16
    assert linear.weight_scales.dtype == torch.float16 and torch.equal(linear.weight_scales, scales)  # never rounded to bf16
    linear.half()
    assert linear.compute_dtype == torch.float16 and linear.weight_codes.dtype == torch.uint8
    linear.to("meta")
    assert linear.weight_codes.is_meta and linear.weight_scales.dtype == torch.float16


def test_nano_module_int4_layout_stays_on_its_device() -> None:
    linear, _ = packed(M.NanoLinear, Q4, 32, 64, dtype=torch.bfloat16)
    assert linear.use_fused() is None
    linear.float()  # a dtype change is fine: the kernel runs in bf16 and casts back
    assert linear(torch.randn(1, 64)).dtype == torch.float32
    with pytest.raises(RuntimeError, match="load the model again"):
        linear.to("meta")
    assert not linear.weight_packed.is_meta  # nothing moved


def test_nano_module_chunked_scratch_is_bounded() -> None:
    M.release_scratch()
    linear, _ = packed(M.NanoLinear, Q4, 300, 128, dtype=torch.bfloat16)
    linear.chunk_bytes = cap = 20 * 128 * 4  # 20 rows of float32 at a time
    linear(torch.randn(2, 128, dtype=torch.bfloat16))
    assert sum(buf.numel() * buf.element_size() for buf in M._SCRATCH.values()) <= 3 * cap  # the documented bound
    # scratch is shared: a second module reuses the same buffers
    before = {k: v.data_ptr() for k, v in M._SCRATCH.items()}
    other, _ = packed(M.NanoLinear, Q4, 200, 128, dtype=torch.bfloat16)
    other.chunk_bytes = 20 * 128 * 4
    other(torch.randn(2, 128, dtype=torch.bfloat16))
    assert {k: v.data_ptr() for k, v in M._SCRATCH.items()} == before


def test_nano_module_set_parts_checks_layout() -> None:
    linear = M.NanoLinear(64, 32, Scheme("affine", 4, 32), device="cpu")
    with pytest.raises(ValueError, match="weight_codes must be U8"):
        linear.set_parts({"codes": torch.zeros(32, 16, dtype=torch.uint8), "scales": torch.zeros(32, 2, dtype=torch.float16), "offsets": torch.zeros(32, 2, dtype=torch.float16)})


def test_nano_module_scratch_survives_inference_mode() -> None:
    """A scratch buffer first made under inference_mode must stay writable outside it (and back)."""
    M.release_scratch()
    linear, w = packed(M.NanoLinear, Q4, 64, 64, dtype=torch.float32)
    x = torch.randn(2, 64)
    with torch.inference_mode():
        first = linear(x)
    with torch.no_grad():
        second = linear(x)
    assert torch.equal(first, second)
