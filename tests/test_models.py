"""Language models on the accelerator: file formats, the shipped model, BitNet loaders, generation.

Logits from the runtime (integer products on the device) are checked against an independent
float64 reference written here from the raw tensors (fake-quantized activations, dequantized
weights); golden and simulated gateware must give the identical token sequence.
"""

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from tritium.host.accelerator import Accelerator
from tritium.host.cli import main as cli
from tritium.host.formats import ModelFileError, read_safetensors, write_safetensors
from tritium.host.generate import sample
from tritium.host.models import (DEFAULT_MODEL, MatrixRunner, MMFreeConfig, ModelTooLarge, export_mmfree,
                                 load_model)
from tritium.host.transport import GoldenTransport
from tritium.hw.params import CONFIGS, EngineParams
from tritium.sim import golden
from tritium.sim.golden import TritiumValueError

UP5K = CONFIGS["up5k-spram"]


def runner(params=UP5K):
    return MatrixRunner(Accelerator(GoldenTransport(params)))


# -- independent float reference ------------------------------------------------------------------

def f_rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x) + eps) * w


def f_quant(x):
    s = 127.0 / max(np.max(np.abs(x)), 1e-5)
    return np.clip(np.round(x * s), -128, 127) / s


def f_bitlinear(w_eff, norm, x, eps=1e-6):
    return w_eff @ f_quant(f_rms(x, norm, eps))


def f_sig(x):
    return 1 / (1 + np.exp(-x))


def mmfree_reference(t, cfg, tokens, *, ternarize=True):
    """MatMul-free LM in float64 from raw tensors (``t``: name -> array; projections as latent
    floats, absmean-ternarized here, or with ``ternarize=False`` already effective weights)."""
    def lin(name):
        w = t[name + ".weight"].astype(np.float64)
        if ternarize:
            s = 1 / max(np.mean(np.abs(w)), 1e-5)
            w = np.clip(np.round(w * s), -1, 1) / s
        return w, t[name + ".norm.weight"].astype(np.float64)
    lb = np.exp(t["model.lower_bounds"].astype(np.float64))
    lb = lb / lb.sum(0)
    lb = np.cumsum(lb, 0) - lb[0]
    state = np.zeros((cfg.layers, cfg.hidden))
    out = []
    for tok in tokens:
        h = t["model.embeddings.weight"][tok].astype(np.float64)
        for l in range(cfg.layers):
            p = f"model.layers.{l}."
            x = f_rms(h, t[p + "attn_norm.weight"], cfg.eps)
            fg = lb[l] + (1 - lb[l]) * f_sig(f_bitlinear(*lin(p + "attn.f_proj"), x))
            i = f_bitlinear(*lin(p + "attn.i_proj"), x)
            state[l] = fg * state[l] + i * f_sig(i) * (1 - fg)
            g = f_bitlinear(*lin(p + "attn.g_proj"), x)
            o = f_rms(g, t[p + "attn.g_norm.weight"], cfg.eps) * state[l] * f_sig(state[l])
            h = h + f_bitlinear(*lin(p + "attn.o_proj"), o)
            x = f_rms(h, t[p + "mlp_norm.weight"], cfg.eps)
            gu = f_bitlinear(*lin(p + "mlp.gate_proj"), x)
            g, u = gu[:cfg.intermediate], gu[cfg.intermediate:]
            h = h + f_bitlinear(*lin(p + "mlp.down_proj"), g * f_sig(g) * u)
        out.append(f_bitlinear(*lin("lm_head"), f_rms(h, t["model.norm.weight"], cfg.eps)))
    return np.array(out)


def random_mmfree(cfg, seed=0):
    rng = np.random.default_rng(seed)
    t = {"model.embeddings.weight": rng.normal(0, 1, (cfg.vocab, cfg.hidden)),
         "model.norm.weight": rng.uniform(0.5, 1.5, cfg.hidden),
         "model.lower_bounds": rng.normal(0, 1, (cfg.layers, cfg.hidden))}
    for l in range(cfg.layers):
        p = f"model.layers.{l}."
        for n in ("attn_norm", "mlp_norm", "attn.g_norm"):
            t[p + n + ".weight"] = rng.uniform(0.5, 1.5, cfg.hidden)
    for name, m, k in cfg.projections():
        t[name + ".weight"] = rng.normal(0, k ** -0.5, (m, k))
        t[name + ".norm.weight"] = rng.uniform(0.5, 1.5, k)
    return {k: v.astype(np.float32) for k, v in t.items()}


def close_logits(got, ref):
    """Runtime vs float reference: the int8 activation rounding may land one step apart where the
    two float orders differ, so agreement is to within a small fraction of the logit range."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() < 0.03 * scale, (np.abs(got - ref).max(), scale)
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.9


# -- file formats ------------------------------------------------------------------------------------

def test_safetensors_round_trip_and_the_reference_reader_agrees(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(1)
    t = {"a": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.integers(0, 255, (7,), dtype=np.uint8),
         "c": rng.normal(size=4).astype(np.float16), "d": np.array([-3, 4], np.int8)}
    path = write_safetensors(tmp_path / "x.safetensors", t, {"k": "v"})
    back, meta = read_safetensors(path)
    assert meta == {"k": "v"} and set(back) == set(t)
    ref = st.load_file(str(path))
    for k in t:
        assert back[k].dtype == t[k].dtype and np.array_equal(back[k], t[k]) and np.array_equal(ref[k], t[k])
    st.save_file({"bf": np.zeros(2, np.float32)}, str(tmp_path / "y.safetensors"))
    assert np.array_equal(read_safetensors(tmp_path / "y.safetensors")[0]["bf"], np.zeros(2))


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:6], "too short"),
    (lambda raw: struct.pack("<Q", 10 ** 9) + raw[8:], "runs past the end"),
    (lambda raw: raw[:8] + b"{nope" + raw[13:], "not valid JSON"),
    (lambda raw: raw[:-3], "do not fit"),
])
def test_corrupt_safetensors_is_one_clear_error(tmp_path, damage, message):
    path = write_safetensors(tmp_path / "x.safetensors", {"a": np.zeros((4, 4), np.float32)})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ModelFileError, match=message):
        read_safetensors(path)


def test_hf_bitnet_packing_is_blocked_along_rows():
    rng = np.random.default_rng(2)
    w = rng.integers(-1, 2, (8, 5)).astype(np.int8)
    packed = golden.pack_bitnet_hf(w)
    assert packed.shape == (2, 5)
    for r in range(2):
        for c in range(5):
            for i in range(4):
                assert (packed[r, c] >> (2 * i)) & 3 == w[i * 2 + r, c] + 1
    assert np.array_equal(golden.unpack_bitnet_hf(packed), w)
    with pytest.raises(TritiumValueError, match=r"\[0, 0\] = 3 is not a valid trit code"):
        golden.unpack_bitnet_hf(np.full((1, 1), 0xFF, np.uint8))
    with pytest.raises(TritiumValueError, match="multiple of 4"):
        golden.pack_bitnet_hf(np.zeros((3, 2)))


# -- the shipped model ---------------------------------------------------------------------------------

def test_shipped_model_fills_the_icebreaker_exactly_and_records_its_training():
    m = load_model(DEFAULT_MODEL)
    assert m.arch == "mmfreelm" and m.config == MMFreeConfig()
    assert m.ternary_params == 524_288 == UP5K.capacity_trits
    r = runner()
    layout = r.plan({n: l.wq.shape for n, l in m.linears.items()})
    assert sum(UP5K.words_for(mm, kk) for _, mm, kk in layout.values()) == UP5K.weight_depth
    assert m.info["corpus"]["sha256"] and m.info["best_val_perplexity"] < 5
    assert DEFAULT_MODEL.stat().st_size < 400_000


def test_shipped_model_matches_the_float_reference():
    """Runtime logits (integer products through the golden device) against float64 math on the
    same ternary weights, over a stretch of text."""
    tensors, _ = read_safetensors(DEFAULT_MODEL)
    cfg = MMFreeConfig()
    for name, m, k in cfg.projections():  # effective float weights = trits / s_w, as latent floats
        wq = golden.unpack_bitnet_hf(tensors[name + ".weight"]).astype(np.float32)
        tensors[name + ".weight"] = wq / tensors[name + ".weight_scale"][0]
    text = b"The value of the expression is returned."
    lm = load_model(DEFAULT_MODEL).bind(runner())
    got = np.array([lm.step(t) for t in text])
    close_logits(got, mmfree_reference(tensors, cfg, text, ternarize=False))
    # it has learned something: most next bytes of real text get a high rank
    ranks = [(got[i] > got[i, text[i + 1]]).sum() for i in range(len(text) - 1)]
    assert np.median(ranks) <= 2


def test_released_matmulfree_latent_checkpoint_is_ternarized_at_load(tmp_path):
    cfg = MMFreeConfig(vocab=64, hidden=32, layers=2, intermediate=48)
    t = random_mmfree(cfg)
    path = write_safetensors(tmp_path / "model.safetensors", t)  # released layout: no metadata
    m = load_model(path)
    assert m.config == MMFreeConfig(vocab=64, hidden=32, layers=2, intermediate=48)
    lm = m.bind(runner())
    toks = [3, 17, 60, 0, 9, 9, 41]
    close_logits([lm.step(x) for x in toks], mmfree_reference(t, cfg, toks))
    # the packed export of the same latent weights runs identically
    packed = load_model(export_mmfree(t, cfg, tmp_path / "packed.safetensors")).bind(runner())
    lm.reset()
    for x in toks:
        assert np.array_equal(lm.step(x), packed.step(x))


def test_sampling_rule():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 3.0, 1.0, 3.0], np.float32)
    assert sample(logits, rng, temperature=0, top_k=0) == 1
    draws = [sample(logits, np.random.default_rng(s), temperature=1.0, top_k=2) for s in range(200)]
    assert set(draws) == {1, 3}
    assert [sample(logits, np.random.default_rng(7), temperature=0.7, top_k=40) for _ in range(3)] == \
           [sample(logits, np.random.default_rng(7), temperature=0.7, top_k=40)] * 3


def _generate(capsys, *extra):
    assert cli(["generate", "--prompt", "The result", "--max-tokens", "12", "--seed", "5", "--json", "--quiet",
                "--timeout", "60", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_golden_reports_stats(capsys):
    out = _generate(capsys, "--mode", "host")
    assert len(out["tokens"]) == 12 and out["text"] == bytes(out["tokens"]).decode("utf-8", "replace")
    assert out["products_per_token"] == 19
    board = out["modeled_board"]
    assert board["bound"] == "link" and 5 < board["tokens_per_s_at_clock"] < 10
    assert out["link_bytes_per_token"] > 10_000 and out["device_cycles_per_token"] > out["engine_cycles_per_token"]


@pytest.mark.cocotb
@pytest.mark.parametrize("mode", ["host", "device"])
def test_generate_sim_gives_the_same_tokens_as_golden(capsys, mode):
    # host: the float runtime, every product on the device; device: the whole LM step on it
    golden_out = _generate(capsys, "--backend", "golden", "--mode", mode)
    sim_out = _generate(capsys, "--backend", "sim", "--mode", mode)
    assert sim_out["mode"] == golden_out["mode"] == mode
    assert sim_out["tokens"] == golden_out["tokens"] and sim_out["text"] == golden_out["text"]
    assert sim_out["link_bytes_per_token"] == golden_out["link_bytes_per_token"]


def test_generate_streams_text_and_ends_with_a_stats_line():
    proc = subprocess.run([sys.executable, "-m", "tritium.host.cli", "generate", "--prompt", "Lists",
                           "--max-tokens", "5", "--temperature", "0", "--mode", "host"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Lists") and len(proc.stdout) > len("Lists")
    assert "tok/s on golden" in proc.stderr and "modeled iCEBreaker" in proc.stderr and "link-bound" in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "ok", "--model", "nowhere.safetensors"], "no such model file"),
    (["--prompt", "ok", "--model", "README.md"], "unknown model format"),
    (["--prompt", "ok", "--max-tokens", "0"], "--max-tokens must be at least 1"),
    (["--prompt-ids", "1,x"], "comma-separated integers"),
    (["--prompt-ids", "1,300"], "outside the vocabulary"),
    (["--prompt", "bad \udcff byte"], "not valid UTF-8"),
])
def test_generate_bad_input_is_one_line(capsys, argv, message):
    assert cli(["generate", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_too_large_model_is_refused_with_numbers_and_keeps_what_is_loaded():
    r = runner(EngineParams(lanes=8, trits=4, max_k=2048, weight_depth=4096))
    small = {"a": np.ones((8, 8), np.int8)}
    r.load(small)
    before = r.matvec("a", np.arange(8))
    big = load_model(DEFAULT_MODEL)
    with pytest.raises(ModelTooLarge, match=r"524,288 trits\) need 16,384 weight words, but .* has 4,096 .* 4\.0x"):
        big.bind(r)
    assert np.array_equal(r.matvec("a", np.arange(8)), before)
    wide = EngineParams(lanes=8, trits=4, max_k=64, weight_depth=65535)
    with pytest.raises(ModelTooLarge, match="K = 64"):
        big.bind(runner(wide))


def test_more_matrices_than_slots_rebind_slots():
    from tritium.hw import protocol as P
    r = runner(CONFIGS["default"])
    rng = np.random.default_rng(3)
    mats = {f"m{i}": rng.integers(-1, 2, (3, 5)).astype(np.int8) for i in range(P.SLOTS + 5)}
    r.load(mats)
    for _ in range(2):
        for name, w in mats.items():
            x = rng.integers(-128, 128, 5)
            assert np.array_equal(r.matvec(name, x), golden.matvec(w, x))


# -- BitNet b1.58: Hugging Face packed and GGUF ---------------------------------------------------

def bitnet_reference(t, c, tokens):
    """BitNet forward in float64 from effective weights ``t`` (HF key names, projections as floats);
    RoPE rotates halves (Hugging Face ``rotate_half``, llama.cpp's NEOX mode)."""
    h_, nh, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    d, eps = h_ // nh, c["rms_norm_eps"]
    inv = 1 / (c["rope_theta"] ** (np.arange(0, d, 2) / d))
    K, V, out = [[] for _ in range(c["num_hidden_layers"])], [[] for _ in range(c["num_hidden_layers"])], []

    def rot(x, pos):
        cos, sin = np.cos(pos * inv), np.sin(pos * inv)
        a, b = x[..., :d // 2], x[..., d // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)
    for pos, tok in enumerate(tokens):
        h = t["model.embed_tokens.weight"][tok].astype(np.float64)
        for l in range(c["num_hidden_layers"]):
            p = f"model.layers.{l}."
            x = f_rms(h, t[p + "input_layernorm.weight"], eps)
            q = rot((t[p + "self_attn.q_proj"] @ f_quant(x)).reshape(nh, d), pos)
            K[l].append(rot((t[p + "self_attn.k_proj"] @ f_quant(x)).reshape(nkv, d), pos))
            V[l].append((t[p + "self_attn.v_proj"] @ f_quant(x)).reshape(nkv, d))
            att = np.zeros((nh, d))
            for head in range(nh):
                kv = head // (nh // nkv)
                s = np.array([q[head] @ k[kv] for k in K[l]]) / np.sqrt(d)
                s = np.exp(s - s.max())
                att[head] = (s / s.sum()) @ np.array([v[kv] for v in V[l]])
            h = h + t[p + "self_attn.o_proj"] @ f_quant(f_rms(att.ravel(), t[p + "self_attn.attn_sub_norm.weight"], eps))
            x = f_quant(f_rms(h, t[p + "post_attention_layernorm.weight"], eps))
            g, u = t[p + "mlp.gate_proj"] @ x, t[p + "mlp.up_proj"] @ x
            a = np.maximum(g, 0) ** 2 if c["hidden_act"] == "relu2" else g / (1 + np.exp(-g))
            h = h + t[p + "mlp.down_proj"] @ f_quant(f_rms(a * u, t[p + "mlp.ffn_sub_norm.weight"], eps))
        out.append(t["model.embed_tokens.weight"] @ f_rms(h, t["model.norm.weight"], eps))
    return np.array(out)


def random_bitnet(c, seed=0):
    """Ternary weights with per-tensor scales (``effective``) plus float norms and embedding."""
    rng = np.random.default_rng(seed)
    h, i = c["hidden_size"], c["intermediate_size"]
    kv = c["num_key_value_heads"] * (h // c["num_attention_heads"])
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}
    trits, scales = {}, {}
    f = {"model.embed_tokens.weight": rng.normal(0, 1, (c["vocab_size"], h)).astype(np.float32),
         "model.norm.weight": rng.uniform(0.5, 1.5, h).astype(np.float32)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        for n, size in (("input_layernorm", h), ("post_attention_layernorm", h), ("self_attn.attn_sub_norm", h),
                        ("mlp.ffn_sub_norm", i)):
            f[p + n + ".weight"] = rng.uniform(0.5, 1.5, size).astype(np.float32)
        for n, shape in shapes.items():
            trits[p + n] = rng.integers(-1, 2, shape).astype(np.int8)
            scales[p + n] = np.float32(rng.uniform(20, 40))  # s_w: effective weight = trit / s_w
    return f, trits, scales


BITNET_CFG = {"vocab_size": 300, "hidden_size": 256, "num_hidden_layers": 1, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "hidden_act": "relu2", "max_position_embeddings": 64}


def write_hf(tmp_path, c, f, trits, scales):
    t = dict(f)
    for n, w in trits.items():
        t[n + ".weight"] = golden.pack_bitnet_hf(w)
        t[n + ".weight_scale"] = np.array([scales[n]], np.float32)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BitNetForCausalLM"], **c}))
    return write_safetensors(tmp_path / "model.safetensors", t)


def effective(f, trits, scales):
    return {**f, **{n: w / np.float64(scales[n]) for n, w in trits.items()}}


@pytest.mark.parametrize("act", ["relu2", "silu"])
def test_hf_bitnet_checkpoint_runs_on_the_device(tmp_path, act):
    c = {**BITNET_CFG, "hidden_act": act, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2}
    f, trits, scales = random_bitnet(c)
    m = load_model(write_hf(tmp_path, c, f, trits, scales))
    assert m.arch == "bitnet" and m.ternary_params == sum(w.size for w in trits.values())
    lm = m.bind(runner())
    toks = [5, 299, 0, 17, 17, 120]
    close_logits([lm.step(x) for x in toks], bitnet_reference(effective(f, trits, scales), c, toks))


def _permute(w, heads):  # q/k rows reordered for adjacent-pair RoPE (llama.cpp's LLaMA converter, not BitNet's)
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, c, f, trits, scales, *, arch="bitnet-25", types=("TQ2_0", "TQ1_0"), extra=None):
    """A GGUF as llama.cpp's BitNet converter writes it: effective weights ``trit / s_w`` stored as
    ``types`` in turn (TQ1_0, TQ2_0 or F32), q/k rows in Hugging Face order (not permuted), and
    ``{arch}.vocab_size`` for llama.cpp's tokenizer-less vocabulary. Byte for byte a function of
    its arguments (``tests/test_llamacpp.py`` checks a hash of it)."""
    gguf = pytest.importorskip("gguf")
    T = gguf.GGMLQuantizationType
    wr = gguf.GGUFWriter(str(path), arch)
    wr.add_uint32(f"{arch}.embedding_length", c["hidden_size"])
    wr.add_uint32(f"{arch}.block_count", c["num_hidden_layers"])
    wr.add_uint32(f"{arch}.feed_forward_length", c["intermediate_size"])
    wr.add_uint32(f"{arch}.attention.head_count", c["num_attention_heads"])
    wr.add_uint32(f"{arch}.attention.head_count_kv", c["num_key_value_heads"])
    wr.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c["rms_norm_eps"])
    wr.add_float32(f"{arch}.rope.freq_base", c["rope_theta"])
    wr.add_uint32(f"{arch}.context_length", c["max_position_embeddings"])
    wr.add_uint32(f"{arch}.vocab_size", c["vocab_size"])
    wr.add_string("tokenizer.ggml.model", "none")
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}

    def gname(n):
        if n == "model.embed_tokens.weight":
            return "token_embd.weight"
        if n == "model.norm.weight":
            return "output_norm.weight"
        l, rest = n.split(".")[2], ".".join(n.split(".")[3:])
        return f"blk.{l}.{names[rest.removesuffix('.weight')]}.weight"
    for n, a in f.items():
        wr.add_tensor(gname(n), a.astype(np.float32))
    for j, (n, w) in enumerate(trits.items()):
        w = w.astype(np.float32)
        kind = T[types[j % len(types)]]
        q = gguf.quants.quantize(w / scales[n], kind)
        wr.add_tensor(gname(n + ".weight"), q, raw_shape=q.shape, raw_dtype=kind)
    for name, arr in (extra or {}).items():
        wr.add_tensor(name, arr)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def test_gguf_bitnet_matches_the_hf_checkpoint_of_the_same_model(tmp_path):
    c = dict(BITNET_CFG)
    f, trits, scales = random_bitnet(c, seed=4)
    gm = load_model(write_gguf(tmp_path / "m.gguf", c, f, trits, scales, types=("TQ2_0", "TQ1_0", "F32")))
    hm = load_model(write_hf(tmp_path, c, f, trits, scales))
    for name, lin in hm.linears.items():
        g = gm.linears[name]
        # the same trits in the same row order (q/k included: GGUF keeps Hugging Face's order)
        assert np.array_equal(g.wq, lin.wq), name
        # the same scale: TQ to its fp16 block scale, F32 effective weights exactly (not re-ternarized)
        assert abs(g.s_w / lin.s_w - 1) < 1e-3, name
    toks = [1, 250, 7, 7, 99, 3, 42, 180, 0, 64]
    g_lm, h_lm = gm.bind(runner()), hm.bind(runner())
    got_g = np.array([g_lm.step(x) for x in toks])
    got_h = np.array([h_lm.step(x) for x in toks])
    # both files run as the same model at every position, and as the float reference
    close_logits(got_g, got_h)
    close_logits(got_g, bitnet_reference(effective(f, trits, scales), c, toks))


def test_gguf_projection_scale_tensor_multiplies_the_output(tmp_path):
    c = dict(BITNET_CFG)
    f, trits, scales = random_bitnet(c, seed=5)
    base = load_model(write_gguf(tmp_path / "a.gguf", c, f, trits, scales))
    scaled = load_model(write_gguf(tmp_path / "b.gguf", c, f, trits, scales,
                                   extra={"blk.0.ffn_down.scale": np.array([2.0], np.float32)}))
    assert scaled.linears["blk.0.down"].s_w == pytest.approx(base.linears["blk.0.down"].s_w / 2)


def test_bitnet_2b4t_shape_is_reported_too_large_for_the_icebreaker(tmp_path):
    from tritium.host.bitnet import BitNetConfig
    cfg = BitNetConfig(vocab=128256, hidden=2560, layers=30, heads=20, kv_heads=5, intermediate=6912)
    shapes = {n: (m, k) for n, m, k in cfg.projections()}
    with pytest.raises(ModelTooLarge, match=r"K = 2048"):
        runner().plan(shapes)
    huge = EngineParams(lanes=8, trits=4, max_k=8192, weight_depth=65535)
    with pytest.raises(ModelTooLarge, match=r"2,?08\d,\d{3},\d{3} trits.*x too large"):
        runner(huge).plan(shapes)


@pytest.mark.parametrize("case, message", [
    ("arch", "GGUF architecture 'llama' is not supported"),
    ("type", "has GGUF type Q4_0, which the runtime does not read"),
    ("shape", "has shape"),
    ("missing", "tensor blk.0.ffn_norm.weight is missing"),
    ("garbage", "not a GGUF file"),
])
def test_bad_gguf_is_one_clear_error(tmp_path, case, message):
    gguf = pytest.importorskip("gguf")
    c = dict(BITNET_CFG)
    f, trits, scales = random_bitnet(c, seed=6)
    path = tmp_path / "bad.gguf"
    if case == "arch":
        write_gguf(path, c, f, trits, scales, arch="llama")
    elif case == "type":
        extra = {"x": gguf.quants.quantize(np.ones((2, 256), np.float32), gguf.GGMLQuantizationType.Q4_0)}
        wr_extra = {k: v for k, v in extra.items()}
        g = gguf.GGUFWriter(str(path), "bitnet")
        g.add_tensor("x", wr_extra["x"], raw_shape=wr_extra["x"].shape, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        g.write_header_to_file(), g.write_kv_data_to_file(), g.write_tensors_to_file(), g.close()
    elif case == "shape":
        f["model.norm.weight"] = np.ones(7, np.float32)
        write_gguf(path, c, f, trits, scales)
    elif case == "missing":
        del f["model.layers.0.post_attention_layernorm.weight"]
        write_gguf(path, c, f, trits, scales)
    else:
        path.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_hf_checkpoint_without_config_or_scale_is_a_clear_error(tmp_path):
    c = {**BITNET_CFG, "hidden_size": 64, "intermediate_size": 96}
    f, trits, scales = random_bitnet(c)
    path = write_hf(tmp_path, c, f, trits, scales)
    t, _ = read_safetensors(path)
    del t["model.layers.0.mlp.up_proj.weight_scale"]
    write_safetensors(path, t)
    with pytest.raises(ModelFileError, match="has no model.layers.0.mlp.up_proj.weight_scale"):
        load_model(path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelFileError, match="needs its config.json"):
        load_model(path)


def test_all_zero_projection_warns(tmp_path):
    c = {**BITNET_CFG, "hidden_size": 64, "intermediate_size": 96}
    f, trits, scales = random_bitnet(c)
    trits["model.layers.0.mlp.down_proj"][:] = 0
    with pytest.warns(RuntimeWarning, match="blk.0.down is all zeros"):
        load_model(write_hf(tmp_path, c, f, trits, scales))


def test_plan_matches_what_generation_measures(capsys):
    """`tritium plan` predicts the link bytes per token that a real run moves, and refuses a
    configuration the model does not fit with the numbers."""
    assert cli(["plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["weight_words_used"] == plan["weight_words"] == 16384 and len(plan["matrices"]) == 19
    assert plan["matrices"][-1] == {"name": "lm_head", "rows": 256, "cols": 128, "first_word": 15360, "words": 1024}
    run = _generate(capsys, "--mode", "host")
    assert plan["link_bytes_per_token"] == run["link_bytes_per_token"]
    assert plan["modeled_icebreaker"]["device_cycles_per_token"] == run["device_cycles_per_token"]
    assert cli(["plan", "--config", "default"]) == 2
    assert "32.0x too large" in capsys.readouterr().err
