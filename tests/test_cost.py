"""The one cost model (tritium.sim.cost): hand-worked numbers, one definition shared by the gateware
side, `tritium plan`, `tritium generate` and the benchmark, and a host that does its arithmetic
without importing any gateware (Amaranth) module."""

import ast
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tritium.hw import protocol as P
from tritium.hw.params import CONFIGS, EngineParams
from tritium.sim import cost, golden
from tritium.sim.golden import Packing, TritiumValueError

HOST = pathlib.Path(__file__).resolve().parent.parent / "host"
UP5K = CONFIGS["up5k-spram"]


# -- the model's numbers, worked by hand --------------------------------------------------------------

def test_product_link_and_device_costs_match_a_hand_calculation():
    # up5k-spram: 8 lanes x 4 trits, pipeline depth D = 3, 20-bit accumulators -> 3 bytes per result.
    # A 64 x 256 product: chunks = 256 / 4 = 64, tiles = 64 / 8 = 8.
    #   engine:  64 + (8 - 1) * max(64, D + 2) + D + 3 = 64 + 448 + 6 = 518 cycles (the first tile
    #            computed while the activations load)
    #   device:  518 + 2 cycles x 256 activation bytes + 1 cycle x 64 * 3 result bytes = 1222 cycles
    #   link:    request 7 (frame) + 1 (slot) + 256, reply 7 + 64 * 3 = 264 + 199 = 463 bytes
    assert cost.product_cycles(UP5K, 64, 256) == 518
    assert cost.matvec_device_cycles(UP5K, 64, 256) == 1222
    assert cost.matvec_link_bytes(UP5K, 64, 256) == 463
    # odd (3 lanes x 3 trits): K = 10 pads to 4 chunks = 12 activation bytes; 7 rows -> 3 tiles;
    # engine 4 + 2 * max(4, 5) + 6 = 20 cycles
    assert cost.product_cycles(CONFIGS["odd"], 7, 10) == 20
    assert cost.matvec_link_bytes(CONFIGS["odd"], 7, 10) == 8 + 12 + 7 + 7 * P.acc_bytes(CONFIGS["odd"])


def test_token_cost_adds_link_and_compute_time():
    r = cost.token_cost(UP5K, [(64, 256), (128, 128)], clock_hz=12e6, baud=1_000_000)
    # 128 x 128: chunks 32, tiles 16: engine 32 + 15 * 32 + 6 = 518, device 518 + 256 + 384 = 1158,
    # link 8 + 128 + 7 + 384 = 527 bytes
    assert r["products_per_token"] == 2
    assert r["link_bytes_per_token"] == 463 + 527
    assert r["device_cycles_per_token"] == 1222 + 1158
    # 990 bytes x 10 bits at 1 Mbaud = 9.9 ms; 2380 cycles at 12 MHz = 0.1983 ms; not overlapped
    assert r["link_s_per_token"] == pytest.approx(9.9e-3)
    assert r["compute_s_per_token"] == pytest.approx(2380 / 12e6)
    assert r["tokens_per_s"] == pytest.approx(1 / (9.9e-3 + 2380 / 12e6))
    assert r["compute_only_tokens_per_s"] == pytest.approx(12e6 / 2380)
    assert r["bound"] == "link"
    # a measured byte count replaces the model's; a fast link makes the same token compute-bound
    measured = cost.token_cost(UP5K, [(64, 256)], clock_hz=12e6, baud=1e9, link_bytes=500)
    assert measured["link_bytes_per_token"] == 500 and measured["bound"] == "compute"


@pytest.mark.parametrize("call, message", [
    (lambda: cost.token_cost(UP5K, [], clock_hz=12e6, baud=1e6), "at least one product"),
    (lambda: cost.token_cost(UP5K, [(64,)], clock_hz=12e6, baud=1e6), "must be a pair"),
    (lambda: cost.token_cost(UP5K, [(0, 256)], clock_hz=12e6, baud=1e6), "M \\(rows\\) = 0"),
    (lambda: cost.token_cost(UP5K, [(64, 4096)], clock_hz=12e6, baud=1e6), "exceeds the engine's max_k"),
    (lambda: cost.token_cost(UP5K, [(64, 256)], clock_hz=0, baud=1e6), "clock_hz must be a positive"),
    (lambda: cost.token_cost(UP5K, [(64, 256)], clock_hz=12e6, baud=float("nan")), "baud must be a positive"),
    (lambda: cost.token_cost(UP5K, [(64, 256)], clock_hz=12e6, baud=1e6, link_bytes=-1), "link_bytes must be"),
    (lambda: cost.board_model(UP5K, [(64, 256)], board="de10"), "unknown board 'de10'"),
])
def test_bad_input_is_refused_in_one_line(call, message):
    # each is a TritiumValueError naming the problem, not a ZeroDivisionError or a wrong number
    with pytest.raises(TritiumValueError, match=message) as e:
        call()
    assert "\n" not in str(e.value)


def test_a_broken_bitstream_report_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITIUM_BUILD_DIR", str(tmp_path))
    report = tmp_path / "icebreaker" / "report.json"
    report.parent.mkdir()
    report.write_text('{"clock_mhz": 12.0}')
    # a report without fmax_mhz is an error naming the file, not a KeyError
    with pytest.raises(TritiumValueError, match="report.json: not a bitstream report"):
        cost.board_model(UP5K, [(64, 256)])


# -- one definition, used everywhere -------------------------------------------------------------------

def test_gateware_modules_re_export_the_same_functions():
    from tritium.hw import device, engine
    # the RTL-vs-model tests import these names from the gateware modules: they are the cost model itself
    assert engine.product_cycles is cost.product_cycles
    assert device.matvec_device_cycles is cost.matvec_device_cycles
    # the protocol's name for the link bytes gives the cost model's numbers
    for p in CONFIGS.values():
        assert P.matvec_link_bytes(p, 5, 7) == cost.matvec_link_bytes(p, 5, 7)


def test_board_facts_agree_with_the_gateware_boards():
    from tritium.hw.boards import BOARDS, ecp5_pll, ice40_pll
    # the same boards, the same baud the bitstream's UART is built for, the PLL's system clock
    # (one the board's PLL makes exactly, a whole multiple of the baud)
    assert set(cost.BOARD_LINKS) == set(BOARDS)
    for name, link in cost.BOARD_LINKS.items():
        assert link.baud == BOARDS[name][2]
        assert link.clock_hz == BOARDS[name][4] and link.clock_hz % link.baud == 0
    assert ice40_pll(12e6, cost.BOARD_LINKS["icebreaker"].clock_hz)
    assert ecp5_pll(25e6, cost.BOARD_LINKS["ulx3s-85f"].clock_hz)


def _plan(capsys, *argv):
    from tritium.host.cli import main as cli
    assert cli(["plan", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("with_report", [False, True])
def test_plan_generate_and_bench_print_the_same_board_model(capsys, tmp_path, monkeypatch, with_report):
    from tritium.host.cli import main as cli
    from tritium.sim import bench
    monkeypatch.setenv("TRITIUM_BUILD_DIR", str(tmp_path))
    if with_report:  # a built bitstream adds the Fmax figures, read by all three alike
        (tmp_path / "icebreaker").mkdir()
        (tmp_path / "icebreaker" / "report.json").write_text(json.dumps({"clock_mhz": 12.0, "fmax_mhz": 31.5}))
    plan = _plan(capsys)["modeled_icebreaker"]
    # the benchmark's row for the iCEBreaker is the plan's board model, number for number
    assert bench.modeled_tokens("icebreaker") == plan
    # a generation on the golden device measures the link bytes the plan predicted, so its modeled
    # board is the plan's as well (the plan models the host path: the model on the host, every
    # product over the link; --mode device runs the whole step on the device instead)
    assert cli(["generate", "--prompt", "The", "--max-tokens", "2", "--seed", "1", "--json", "--quiet",
                "--mode", "host"]) == 0
    run = json.loads(capsys.readouterr().out)["modeled_board"]
    assert run == plan
    # and the numbers are the model's: at the board's clock (a built bitstream's, else the PLL's
    # 30 MHz) and 1 Mbaud, from the model's own shapes
    from tritium.host.models import DEFAULT_MODEL, load_model
    shapes = [l.wq.shape for l in load_model(DEFAULT_MODEL).linears.values()]
    assert cost.BOARD_LINKS["icebreaker"].clock_hz == 30_000_000
    assert plan["clock_mhz"] == (12.0 if with_report else 30.0)
    direct = cost.token_cost(UP5K, shapes, clock_hz=plan["clock_mhz"] * 1e6, baud=1_000_000)
    assert plan["tokens_per_s_at_clock"] == direct["tokens_per_s"]
    assert plan["device_cycles_per_token"] == direct["device_cycles_per_token"]
    assert (plan["fmax_mhz"] == 31.5) is with_report
    if with_report:
        fmax = cost.token_cost(UP5K, shapes, clock_hz=31.5e6, baud=1_000_000)
        assert plan["tokens_per_s_at_fmax"] == fmax["tokens_per_s"]


# -- the host imports no gateware ----------------------------------------------------------------------

_IMPORT_PROBE = """
import contextlib, io, json, sys
{extra}
import tritium.host.bitnet, tritium.host.generate, tritium.host.models
from tritium.host.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["plan", "--json"]) == 0
    assert main(["generate", "--prompt", "Hi", "--max-tokens", "1", "--json", "--quiet", "--mode", "host"]) == 0
    assert main(["generate", "--prompt", "Hi", "--max-tokens", "1", "--json", "--quiet", "--arith", "integer"]) == 0
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "amaranth")))
"""


def _amaranth_modules_after(extra=""):
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE.format(extra=extra)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_host_plan_and_generation_import_no_amaranth():
    # the probe sees a gateware import: it finds Amaranth once a gateware module is imported
    assert "amaranth.hdl" in _amaranth_modules_after("import tritium.hw.engine")
    # the host's models, generation (float and integer arithmetic), plan and the golden device do
    # all their arithmetic without it. (--mode device, the whole step on the device, packs the
    # program with the gateware's own instruction layout, tritium.hw.vector: it imports Amaranth.)
    assert _amaranth_modules_after() == []


def _imports(path):
    """The modules ``path`` imports, anywhere in it, as written (``.models``, ``..sim.cost``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_bitnet_and_models_do_not_import_each_other_both_ways():
    # models dispatches to bitnet; bitnet and the shared base import neither models nor (base) bitnet
    assert ".bitnet" in _imports(HOST / "models.py")
    assert ".models" not in _imports(HOST / "bitnet.py")
    assert not {".models", ".bitnet"} & _imports(HOST / "model_base.py")
    # so importing bitnet alone does not load models, and a BitNet model still binds to its runtime
    proc = subprocess.run([sys.executable, "-c", "import sys, tritium.host.bitnet as b; "
                           "print('tritium.host.models' in sys.modules, b.RUNTIMES['bitnet'] is b.BitNetLM)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False", "True"], proc.stderr


def test_bind_refuses_an_architecture_without_a_runtime():
    from tritium.host.model_base import TernaryLinear, TernaryModel
    from tritium.host.models import MMFreeConfig
    m = TernaryModel("rwkv", MMFreeConfig(), {}, {"w": TernaryLinear("w", np.zeros((4, 4), np.int8), 1.0)},
                     source="x")

    class NoDevice:
        def load(self, mats):
            raise AssertionError("nothing may be written for an architecture that cannot run")

    # a clear error naming the architecture, before any weight is written
    with pytest.raises(TritiumValueError, match="no runtime for architecture 'rwkv'"):
        m.bind(NoDevice())


# -- one Packing -----------------------------------------------------------------------------------

def test_one_packing_enum_with_its_link_codes():
    # the protocol's Packing is the spec's
    assert P.Packing is golden.Packing
    # the codes are the documented ones, and distinct
    assert {p: p.code for p in Packing} == {Packing.TRIT2: 0, Packing.BASE3: 1}
    assert all(Packing.from_code(p.code) is p for p in Packing)
    with pytest.raises(TritiumValueError, match="packing code 7 is not one of \\[0, 1\\]"):
        Packing.from_code(7)
    # IDENTIFY carries the code in byte 7 (after magic, version, lanes, trits) and reads it back
    for name in ("default", "base3"):
        params = CONFIGS[name]
        payload = P.identify_payload(params, 12_000_000)
        assert payload[7] == params.packing.code
        assert EngineParams(**{k: P.parse_identify(payload)[k] for k in ("lanes", "trits", "packing", "max_k",
                               "weight_depth", "memory", "read_register")}) == params
