"""llama.cpp as the oracle for GGUF ``bitnet`` models.

Small ``bitnet`` GGUFs (projections as F32, TQ1_0 or TQ2_0) are written by the tests' own
writer from a fixed seed; llama.cpp's logits for them at every position of a 16-token sequence
are committed in ``fixtures/llamacpp/`` together with ``regenerate.py``, which rebuilds them
(llama.cpp itself is not needed to run these tests). The runtime (integer products on the
golden device) must pick the same next token as llama.cpp at every position and stay within 2%
of the logit range there. llama.cpp quantizes activations per 256-value block (Q8_K) for TQ
weights and not at all for F32, the runtime per token (int8): that alone gives up to 0.9%.
With the tied embedding of a random model the top token is the current one, so the range
check carries most of the weight; ``test_adjacent_pair_rope_is_caught_by_the_oracle`` shows it
fails on the RoPE defect it was brought in for.
"""

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import pytest

from test_models import _permute, random_bitnet, write_gguf
from tritium.host.accelerator import Accelerator
from tritium.host.models import MatrixRunner, load_model
from tritium.host.transport import GoldenTransport
from tritium.hw.params import EngineParams

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "llamacpp"

#: how the GGUFs are made (copied into the manifest; a change needs ``regenerate.py``)
RECIPE = {
    "arch": "bitnet",
    "config": {"vocab_size": 300, "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "intermediate_size": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
               "hidden_act": "silu", "max_position_embeddings": 64},
    "seed": 11,
    "tokens": [17, 250, 3, 3, 99, 0, 299, 42, 128, 7, 250, 61, 200, 13, 88, 150],
    "scale_tensors": {"blk.1.ffn_down.scale": 1.5},
    # q and k weights this much larger than random_bitnet's: attention sharp enough for a RoPE
    # error to show (with random_bitnet's scales it is nearly uniform over the positions)
    "qk_scale_divisor": 4,
}
#: fixture case -> GGUF type of every projection
CASES = {"f32": "F32", "tq1_0": "TQ1_0", "tq2_0": "TQ2_0"}
TOLERANCE = 0.02  # of the logit range at each position


def build_gguf(path, case):
    """The GGUF of ``case``, byte for byte what the fixtures were computed from."""
    f, trits, scales = random_bitnet(RECIPE["config"], seed=RECIPE["seed"])
    for name in scales:
        if name.endswith(("q_proj", "k_proj")):
            scales[name] = np.float32(scales[name] / RECIPE["qk_scale_divisor"])
    extra = {name: np.array([v], np.float32) for name, v in RECIPE["scale_tensors"].items()}
    return write_gguf(path, RECIPE["config"], f, trits, scales, arch=RECIPE["arch"], types=(CASES[case],),
                      extra=extra)


def runner():
    # room for the two layers' 14 matrices (1,179,648 trits in 36,864 words) at K up to 512
    return MatrixRunner(Accelerator(GoldenTransport(EngineParams(lanes=8, trits=4, max_k=512, weight_depth=40960))))


def reference(case, tmp_path):
    """(GGUF path, llama.cpp logits) for ``case``, after checking that the fixtures were made
    from this recipe and from a GGUF identical to the one the writer makes now."""
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    # the recipe in the manifest is this file's: otherwise the fixtures answer another question
    assert manifest["recipe"] == RECIPE, "RECIPE changed since the fixtures were made: run regenerate.py"
    path = build_gguf(tmp_path / f"{case}.gguf", case)
    # the writer still makes the very file llama.cpp was run on
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == manifest["gguf_sha256"][case], \
        f"the GGUF writer's output for {case} changed since the fixtures were made: run regenerate.py"
    with np.load(FIXTURES / "logits.npz") as z:
        ref = z[case]
    assert ref.shape == (len(RECIPE["tokens"]), RECIPE["config"]["vocab_size"])
    return path, ref


def run(model):
    lm = model.bind(runner())
    return np.array([lm.step(t) for t in RECIPE["tokens"]])


def errors(got, ref):
    """Max |runtime - llama.cpp| at each position, as a fraction of llama.cpp's logit range there."""
    return np.abs(got - ref).max(1) / (ref.max(1) - ref.min(1))


@pytest.mark.parametrize("case", CASES)
def test_runtime_matches_llamacpp_at_every_position(case, tmp_path):
    path, ref = reference(case, tmp_path)
    model = load_model(path)
    # the file is read as what llama.cpp runs: every projection ternary, the .scale applied
    assert model.config.act == "silu" and model.config.layers == 2
    got = run(model)
    # 8 or more positions, so a position-dependent (RoPE) error has room to show
    assert len(got) >= 8
    # the same next token as llama.cpp at every position
    assert list(got.argmax(1)) == list(ref.argmax(1))
    # and within 2% of the logit range everywhere
    err = errors(got, ref)
    assert err.max() < TOLERANCE, [f"{e:.2%}" for e in err]


def test_adjacent_pair_rope_is_caught_by_the_oracle(tmp_path):
    """The defect this oracle was brought in for: q/k rows in GGML's adjacent-pair order (what
    the runtime effectively computed before, rotating pairs where llama.cpp rotates halves).
    It cannot show at position 0, where RoPE is the identity, and must show later on."""
    path, ref = reference("tq2_0", tmp_path)
    model = load_model(path)
    cfg = model.config
    for l in range(cfg.layers):
        for proj, heads in (("q", cfg.heads), ("k", cfg.kv_heads)):
            lin = model.linears[f"blk.{l}.{proj}"]
            model.linears[lin.name] = dataclasses.replace(lin, wq=_permute(lin.wq, heads))
    err = errors(run(model), ref)
    # position 0 agrees: a consistent permutation of q and k leaves q.k unchanged
    assert err[0] < TOLERANCE
    # later positions leave the tolerance: the comparison can fail on exactly this defect
    assert err[1:].max() > TOLERANCE, [f"{e:.2%}" for e in err]


def test_a_drifting_writer_is_caught_before_any_comparison(tmp_path, monkeypatch):
    """A GGUF that differs from the one llama.cpp was run on (here: one extra byte) is refused
    with the instruction to regenerate, instead of being compared against stale logits."""
    real = build_gguf

    def drifted(path, case):
        path = real(path, case)
        path.write_bytes(path.read_bytes() + b"\0")
        return path
    monkeypatch.setitem(globals(), "build_gguf", drifted)
    # the hash check fails, naming the case and the fix
    with pytest.raises(AssertionError, match="writer's output for tq2_0 changed .* run regenerate.py"):
        reference("tq2_0", tmp_path)
