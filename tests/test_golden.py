"""Golden-model self-tests: the arithmetic spec checked against independent computations."""

import itertools

import numpy as np
import pytest

from tritium.sim import golden
from tritium.sim.golden import Packing, TritiumValueError


def test_trit_codes_are_offset_by_one():
    # the code of w is w + 1, as in BitNet packed checkpoints and TQ2_0
    assert list(golden.trit_codes([-1, 0, 1])) == [0, 1, 2]
    assert list(golden.trits_from_codes([0, 1, 2])) == [-1, 0, 1]
    with pytest.raises(TritiumValueError, match=r"\[0\] = 3 is not a valid trit code"):
        golden.trits_from_codes([3])


@pytest.mark.parametrize("n", [1, 3, 4, 5, 17, 256])
@pytest.mark.parametrize("packing", list(Packing))
def test_pack_roundtrip(n, packing):
    rng = np.random.default_rng(n)
    w = rng.integers(-1, 2, n)
    packed = golden.pack(w, packing)
    per_byte = 4 if packing is Packing.TRIT2 else 5
    assert packed.size == -(-n // per_byte)
    assert np.array_equal(golden.unpack(packed, n, packing), w)


def test_trit2_bit_positions():
    # trit i of a byte sits at bits 2i..2i+1
    assert golden.pack_trit2([1, 0, -1, 1]).tolist() == [2 | 1 << 2 | 0 << 4 | 2 << 6]


def test_base3_every_byte_value():
    # all 243 five-trit groups encode to distinct bytes and decode back (TQ1_0 code)
    groups = np.array(list(itertools.product((-1, 0, 1), repeat=5)), np.int8)
    packed = np.array([golden.pack_base3(g)[0] for g in groups])
    assert len(set(packed.tolist())) == 243
    for g, b in zip(groups, packed):
        assert golden.unpack_base3([b], 5).tolist() == g.tolist()
    # the first trit is the most significant base-3 digit: q = 81*c0 + ... ; byte = ceil(q*256/243)
    assert golden.pack_base3([1, -1, -1, -1, -1])[0] == -(-(2 * 81) * 256 // 243)


def test_base3_any_byte_decodes_to_valid_codes():
    # the x3 carry chain can only carry out 0, 1 or 2, so no byte yields the invalid code 3
    codes = golden.base3_decode_byte(np.arange(256))
    assert codes.shape == (256, 5) and codes.max() <= 2


def test_acc_width_is_tight():
    # +128K must fit, and one bit fewer must not hold it
    for k in [1, 2, 3, 7, 8, 1000, 1024, 4096, 6912]:
        w = golden.acc_width(k)
        assert 128 * k <= 2 ** (w - 1) - 1
        assert 128 * k > 2 ** (w - 2) - 1
    assert golden.acc_width(1) == 9 and golden.acc_width(1024) == 19


def test_matvec_worst_case_reaches_the_bound():
    # all activations -128 with all-(-1) rows: +128K; with all-(+1) rows: -128K
    k = 333
    x = np.full(k, -128)
    w = np.stack([np.full(k, -1), np.full(k, 1), np.zeros(k, int)])
    assert golden.matvec(w, x).tolist() == [128 * k, -128 * k, 0]


def test_matvec_matches_float_reference():
    rng = np.random.default_rng(7)
    for _ in range(50):
        m, k = rng.integers(1, 40, 2)
        w = rng.integers(-1, 2, (m, k))
        x = rng.integers(-128, 128, k)
        assert np.array_equal(golden.matvec(w, x), (w.astype(float) @ x.astype(float)).astype(np.int64))


@pytest.mark.parametrize("bad, msg", [
    (np.array([[0, 2]]), r"weights\[0, 1\] = 2 is not ternary"),
    (np.array([[0.5, 1.0]]), r"weights\[0, 0\] = 0.5 is not ternary"),
])
def test_matvec_rejects_non_ternary(bad, msg):
    with pytest.raises(TritiumValueError, match=msg):
        golden.matvec(bad, np.zeros(2, int))


def test_matvec_rejects_out_of_range_activations_and_shapes():
    with pytest.raises(TritiumValueError, match=r"activations\[2\] = 128 is out of int8 range"):
        golden.matvec(np.zeros((2, 3), int), np.array([0, 0, 128]))
    with pytest.raises(TritiumValueError, match=r"activations\[0\] = -129"):
        golden.matvec(np.zeros((2, 1), int), np.array([-129]))
    with pytest.raises(TritiumValueError, match=r"do not match weights of shape \(2, 3\)"):
        golden.matvec(np.zeros((2, 3), int), np.zeros(4, int))


@pytest.mark.parametrize("lanes, trits, packing", [(1, 1, "trit2"), (3, 3, "trit2"), (8, 4, "trit2"),
                                                   (4, 10, "base3"), (2, 5, "base3")])
def test_weight_and_activation_words_roundtrip(lanes, trits, packing):
    rng = np.random.default_rng(lanes * 100 + trits)
    m, k = 11, 23
    w = rng.integers(-1, 2, (m, k))
    words = golden.weight_words(w, lanes=lanes, trits=trits, packing=packing)
    assert len(words) == -(-m // lanes) * -(-k // trits)
    lb = golden.lane_bits(trits, packing)
    assert max(words) < 1 << (lanes * lb)
    assert np.array_equal(golden.weights_from_words(words, m, k, lanes=lanes, trits=trits, packing=packing), w)
    x = rng.integers(-128, 128, k)
    xw = golden.activation_words(x, trits=trits)
    assert len(xw) == -(-k // trits)
    assert np.array_equal(golden.activations_from_words(xw, k, trits=trits), x)


def test_weight_word_layout_by_hand():
    # 2 lanes x 2 trits, TRIT2: lane 0 in bits 0..3 (trit 0 at bits 0..1), lane 1 in bits 4..7
    w = np.array([[1, -1], [0, 1]])
    (word,) = golden.weight_words(w, lanes=2, trits=2, packing="trit2")
    assert word == (2 | 0 << 2) | (1 | 2 << 2) << 4


def test_lane_bits_rejects_bad_group():
    with pytest.raises(TritiumValueError, match="must be a multiple of 5 for base3"):
        golden.lane_bits(4, "base3")


def test_weight_quantizer_absmean():
    w = np.array([[0.5, -0.25, 0.0, 2.0]], np.float32)
    wq, s_w = golden.quantize_weights(w)
    # mean|W| = 0.6875, s_w = 1/0.6875; W*s_w = [0.727, -0.364, 0, 2.9] -> [1, 0, 0, 1]
    assert wq.tolist() == [[1, 0, 0, 1]]
    assert s_w == np.float32(1) / np.float32(0.6875)


def test_rounding_is_half_to_even():
    # x * s_x lands exactly on .5 ties: 127/127 * [0.5, 1.5, 2.5, -0.5] -> [0, 2, 2, -0]
    xq, s_x = golden.quantize_activations(np.array([0.5, 1.5, 2.5, -0.5, 127.0], np.float32))
    assert xq.tolist() == [0, 2, 2, 0, 127]
    assert golden.ROUNDING == "half-to-even"


def test_activation_quantizer_per_token_and_zero_row():
    x = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    xq, s_x = golden.quantize_activations(x)
    assert xq[0].tolist() == [64, -127, 32]  # 63.5 -> 64 (tie to even), 31.75 -> 32
    assert xq[1].tolist() == [0, 0, 0] and s_x.shape == (2, 1)


def test_bitlinear_equals_float_fake_quant():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(16, 64)).astype(np.float32)
    x = rng.normal(size=64).astype(np.float32)
    wq, s_w = golden.quantize_weights(w)
    xq, s_x = golden.quantize_activations(x)
    y = golden.bitlinear(x, wq, s_w)
    ref = (wq.astype(np.float64) / s_w) @ (xq.astype(np.float64) / s_x[0])
    assert np.allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_quantizers_reject_non_finite():
    with pytest.raises(TritiumValueError, match="finite"):
        golden.quantize_activations(np.array([1.0, np.nan]))
    with pytest.raises(TritiumValueError, match="non-empty"):
        golden.quantize_weights(np.zeros((0, 3)))
