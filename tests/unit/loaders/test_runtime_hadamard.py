"""The runtime's ``hadamard`` transform: the torch rotation against an explicit Hadamard matrix,
the modules against the numpy reference decode, and the reader's checks of the record fields."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

import nanofmt
from nanofmt.schemes import component_layout as core_layout
from nanofmt.transforms import hadamard_unrotate

torch = pytest.importorskip("torch")
M = pytest.importorskip("nanofmt.loaders.nano_modules")
from nanofmt.loaders import nano_hadamard as H  # noqa: E402
from nanofmt.loaders import nano_kernels as K  # noqa: E402
from nanofmt.loaders.nano_io import NanoLoadError, Shard  # noqa: E402


def hadamard(scheme: str, block: int, bits: int | None = 4, group: int | None = 32, meta: int | None = None) -> nanofmt.Scheme:
    if scheme == "int8_row":
        bits, group = 8, None
    return nanofmt.Scheme(scheme, bits=bits, group_size=group, meta_bits=meta, transform="hadamard", transform_block=block)


LINEAR = [
    hadamard("affine", 64),
    hadamard("affine", 16, bits=3),
    hadamard("affine_dq", 64, meta=6),
    hadamard("affine_dq", 256, bits=5, group=128, meta=8),
    hadamard("int8_row", 64),
]


def explicit(cols: int, block: int, signs: np.ndarray) -> np.ndarray:
    """diag(s) @ blockdiag(H_b), in float64, H_b built by the Sylvester recursion (not the runtime's formula)."""
    h = np.ones((1, 1))
    while h.shape[0] < block:
        h = np.block([[h, h], [h, -h]])
    return np.diag(np.where(signs, -1.0, 1.0)) @ np.kron(np.eye(cols // block), h / np.sqrt(block))


def runtime_scheme(s: nanofmt.Scheme) -> K.Scheme:
    return K.Scheme(s.name, s.bits, s.group_size, s.meta_bits, s.transform, s.transform_block)


@functools.cache
def quantized(scheme: nanofmt.Scheme, rows: int, cols: int, seed: int = 0) -> nanofmt.QuantizedTensor:
    values = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    values[:, 5] *= 20  # an outlier column: what the rotation is for
    return nanofmt.quantize(values, scheme, seed=seed)


def packed(cls: type, scheme: nanofmt.Scheme, rows: int, cols: int, **kw: object) -> tuple[object, torch.Tensor]:
    """A filled module and the reference weight (float64, from nanofmt.dequantize)."""
    qt = quantized(scheme, rows, cols)
    module = cls(*((cols, rows) if cls is M.NanoLinear else (rows, cols)), runtime_scheme(scheme), device="cpu", **kw)
    module.set_parts({role: torch.from_numpy(np.ascontiguousarray(p)) for role, p in qt.parts.items()})
    return module, torch.from_numpy(nanofmt.dequantize(qt, "f32")).double()


def close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    assert float((got.double() - want).abs().max()) <= rel * float(want.abs().max()), float((got.double() - want).abs().max())


# --- the rotation itself -------------------------------------------------------------------------


@pytest.mark.parametrize("block", H.HADAMARD_BLOCKS[:4])
def test_runtime_hadamard_rotation_equals_explicit_matrix(block: int) -> None:
    rng = np.random.default_rng(block)
    cols = 2 * block
    signs = rng.integers(0, 2, cols).astype(bool)
    factors = H.unpack_signs(torch.from_numpy(np.packbits(signs, bitorder="little")), cols)
    assert torch.equal(factors, torch.from_numpy(np.where(signs, -1.0, 1.0).astype(np.float32)))
    h = H.hadamard_matrix(block, torch.device("cpu")).double()
    torch.testing.assert_close(h @ h, torch.eye(block, dtype=torch.float64), rtol=0, atol=1e-12)
    x = rng.standard_normal((3, 2, cols)).astype(np.float32)
    want = torch.from_numpy(x.astype(np.float64) @ explicit(cols, block, signs))  # H (s * x), row-vector form
    got = H.rotate_input(torch.from_numpy(x), factors, block)
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    got16 = H.rotate_input(torch.from_numpy(x).bfloat16(), factors, block)
    assert got16.dtype == torch.bfloat16
    close(got16, want, 2**-7)
    # the inverse direction (rows u -> (u H) * s) is its transpose, and bit-exact to the reference
    u = rng.standard_normal((4, cols)).astype(np.float32)
    unrotated = H.unrotate_rows(torch.from_numpy(u.copy()), factors, block)
    torch.testing.assert_close(unrotated.double(), torch.from_numpy(u.astype(np.float64) @ explicit(cols, block, signs).T), rtol=1e-5, atol=1e-5)
    reference = hadamard_unrotate(u, block, signs)
    assert np.array_equal(unrotated.numpy().view(np.uint32), reference.view(np.uint32))


def test_runtime_hadamard_shared_rotation_is_reused_only_while_valid() -> None:
    """q/k/v read one activation: one rotation serves them, until the activation changes."""
    packed_signs = torch.from_numpy(np.packbits(np.random.default_rng(0).integers(0, 2, 128).astype(bool), bitorder="little"))
    signs = H.shared_signs(packed_signs, 128, torch.device("cpu"))
    assert H.shared_signs(packed_signs.clone(), 128, torch.device("cpu")) is signs  # equal components, one tensor
    x = torch.randn(3, 128)
    first = H.rotate_shared(x, signs, 64)
    assert H.rotate_shared(x.view(3, 128), signs, 64) is first  # a view of the same memory
    assert H.rotate_shared(x, signs, 16) is not first  # another block
    x.mul_(2)  # an in-place write bumps the version counter
    again = H.rotate_shared(x, signs, 64)
    assert again is not first and torch.equal(again, 2 * first)
    with torch.inference_mode():
        y = torch.randn(3, 128)
        assert H.rotate_shared(y, signs, 64) is not H.rotate_shared(y, signs, 64)  # no version counter: never reused
    H.release_rotations()
    assert H.rotate_shared(x, signs, 64) is not again


@pytest.mark.parametrize("scheme", LINEAR, ids=lambda s: s.label())
def test_runtime_hadamard_layout_and_decode_match_core(scheme: nanofmt.Scheme) -> None:
    shape = (5, 256)
    expected = {role: (c.dtype, c.shape) for role, c in core_layout(scheme, shape, "x").items()}
    assert list(K.component_layout(runtime_scheme(scheme), shape).items()) == list(expected.items())
    qt = quantized(scheme, *shape)
    values = K.decode_values({r: torch.from_numpy(np.ascontiguousarray(p)) for r, p in qt.parts.items()}, runtime_scheme(scheme), shape[1])
    assert np.array_equal(values.numpy().view(np.uint32), nanofmt.dequantize(qt, "f32").view(np.uint32))


# --- the modules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", LINEAR, ids=lambda s: s.label())
@pytest.mark.parametrize("chunk_rows", [5, None])
def test_runtime_hadamard_linear_matches_reference(scheme: nanofmt.Scheme, chunk_rows: int | None) -> None:
    linear, w = packed(M.NanoLinear, scheme, 37, 256, bias=True, dtype=torch.float32)
    linear.bias.data = torch.randn(37)
    linear.chunk_bytes = None if chunk_rows is None else chunk_rows * 256 * 4
    x = torch.randn(2, 3, 256)
    want = x.double() @ w.T + linear.bias.double()
    got = linear(x)
    assert got.shape == (2, 3, 37) and got.dtype == torch.float32
    stored = linear.decode(0, 37, torch.float32).double()  # the rotated rows U: multiplying by them is far off
    assert float((x.double() @ stored.T + linear.bias.double() - want).abs().max()) > 0.1 * float(want.abs().max())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    close(linear(x.bfloat16()), want, 0.02)


@pytest.mark.parametrize("scheme", [hadamard("affine", 64), hadamard("affine_dq", 256, meta=6), hadamard("int8_row", 16)], ids=lambda s: s.label())
def test_runtime_hadamard_fused_stays_fused(scheme: nanofmt.Scheme) -> None:
    fused, w = packed(M.NanoLinear, scheme, 48, 256, dtype=torch.bfloat16)
    assert fused.use_fused() is None and fused.path in ("int4", "int8")
    assert "weight_signs" in fused.state_dict()  # the signs stay beside the kernel's layout
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    close(fused(x), x.double() @ w.T, 0.02)


def test_runtime_hadamard_embedding_rows_are_exact() -> None:
    scheme = hadamard("affine_dq", 64, meta=6)
    table, w = packed(M.NanoEmbedding, scheme, 160, 128, dtype=torch.float32)
    ids = torch.tensor([[3, 7], [159, 3]])
    assert torch.equal(table(ids).double(), w[ids])  # the reference decode, bit for bit
    fused, _ = packed(M.NanoEmbedding, scheme, 160, 128, dtype=torch.bfloat16)
    assert fused.use_fused(keep_rows=True) is None and fused.path == "int4"
    assert torch.equal(fused(ids), w[ids].bfloat16())  # rows read back from the kernel layout, then unrotated


@pytest.mark.parametrize("fused", [False, True])
def test_runtime_hadamard_tied_head_matches_reference(fused: bool) -> None:
    table, w = packed(M.NanoEmbedding, hadamard("affine", 64), 160, 128, dtype=torch.bfloat16 if fused else torch.float32)
    if fused:
        assert table.use_fused(keep_rows=True) is None
    else:
        table.chunk_bytes = 128 * 4 * 50  # 50 vocabulary rows at a time
    head = M.NanoTiedHead(table)
    h = torch.randn(2, 3, 128, dtype=table.compute_dtype)
    want = h.double() @ w.T
    got = head(h)
    assert got.shape == (2, 3, 160)
    if fused:
        close(got, want, 0.02)
    else:
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_runtime_hadamard_moves_carry_the_signs() -> None:
    linear, w = packed(M.NanoLinear, hadamard("affine", 64), 32, 128, dtype=torch.float32)
    x = torch.randn(2, 128)
    before = linear(x)
    assert linear._sign_factors is not None  # unpacked once, then cached
    linear.half()
    assert linear.compute_dtype == torch.float16 and linear.weight_signs.dtype == torch.uint8 and linear._sign_factors is None
    close(linear(x.half()), x.double() @ w.T, 0.01)
    linear.float()
    assert torch.equal(linear(x), before)
    assert "weight_signs" in linear.state_dict() and "hadamard64" in repr(linear)
    linear.to("meta")
    assert linear.weight_signs.is_meta and linear.weight_codes.is_meta


# --- the reader's checks of the record fields ----------------------------------------------------


def rewrite(tmp_path: Path, change: dict[str, object], version: str | None = None) -> Path:
    """A one-tensor hadamard file whose record gets ``change`` (written past the core writer's checks)."""
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    nanofmt.write_file(path, {"w": quantized(hadamard("affine", 64), 8, 128)})
    with nanofmt.open_file(path) as f:
        meta = json.loads(f.header.metadata["nanofmt"])
        arrays = {name: np.array(f.component(name)) for name in f.entries}
    assert meta["format_version"] == "1.1" and "w_signs" in arrays
    meta["tensors"]["w"].update(change)
    meta["tensors"]["w"] = {k: v for k, v in meta["tensors"]["w"].items() if v is not None}
    if version is not None:
        meta["format_version"] = version
    save_file(arrays, str(path), metadata={"format": "pt", "nanofmt": json.dumps(meta)})
    return path


def test_runtime_hadamard_record_is_read(tmp_path: Path) -> None:
    record = Shard(rewrite(tmp_path, {})).records["w"]
    assert record.scheme == K.Scheme("affine", 4, 32, None, "hadamard", 64)
    assert record.components()["signs"] == ("w_signs", "U8", (16,))


@pytest.mark.parametrize(
    ("change", "version", "reason", "field"),
    [
        ({"transform": "givens"}, None, "transform_unsupported", "'transform'"),
        ({"transform": ["hadamard"]}, None, "transform_unsupported", "'transform'"),
        ({}, "1.0", "transform_unsupported", "1.1 feature"),
        ({"transform_block": 48}, None, "record_invalid", "'transform_block'"),
        ({"transform_block": 64.0}, None, "record_invalid", "'transform_block'"),
        ({"transform_block": 256}, None, "record_invalid", "128 columns"),
        ({"transform_block": None}, None, "record_invalid", "'transform_block'"),
        ({"transform": "none"}, None, "record_invalid", "'transform_block'"),
    ],
)
def test_runtime_hadamard_bad_records_are_named(tmp_path: Path, change: dict, version: str | None, reason: str, field: str) -> None:
    with pytest.raises(NanoLoadError) as caught:
        Shard(rewrite(tmp_path, change, version))
    assert caught.value.reason == reason and caught.value.tensor == "w"
    assert field in str(caught.value) and "m.safetensors" in str(caught.value)
