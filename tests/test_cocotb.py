"""The engine's generated Verilog under Verilator with cocotb, against the golden model.

Across the configurations below, at least 10,000 random products are checked per run: each
configuration's run must report at least its share, counted by the testbench's scoreboard.
"""

import collections
import json
import pathlib

import pytest

from tritium.hw.layouts import EngineLayouts
from tritium.hw.params import CONFIGS, EngineParams
from tritium.sim.tb_engine import EngineBench
from tritium.sim.runner import run_engine_tb

pytestmark = pytest.mark.cocotb

PRODUCTS_PER_CONFIG = 2000
COCOTB_CONFIGS = ["tiny", "odd", "default", "wide", "base3", "default-reg"]
#: random products each configuration's run must have checked, so the whole suite checks 10,000
PRODUCTS_SHARE = -(-10_000 // len(COCOTB_CONFIGS))


def scoreboard_counts(result):
    """Products and result tiles each cocotb test scored, as its testbench recorded them."""
    return json.loads((pathlib.Path(result["build_dir"]) / "stats.json").read_text())


@pytest.mark.parametrize("name", COCOTB_CONFIGS)
def test_engine_verilator(name):
    seed = 1 + COCOTB_CONFIGS.index(name)
    print(f"replay: python -m tritium.sim.runner --configs {name} --seed {seed} --products {PRODUCTS_PER_CONFIG}")
    r = run_engine_tb(CONFIGS[name], name=name, products=PRODUCTS_PER_CONFIG, seed=seed)
    # all three cocotb tests pass
    assert r["tests"] == 3, r
    assert r["failed"] == 0, f"see {r['log']}"
    counts = scoreboard_counts(r)
    # every test reached its end and recorded what its scoreboard checked
    assert set(counts) == {"random_products", "extremes", "reset_mid_product"}
    # the random test checked at least this configuration's share of the suite's 10,000 products
    assert counts["random_products"]["products"] >= PRODUCTS_SHARE
    # the extremes: four matrices, three vectors each
    assert counts["extremes"]["products"] == 12
    # every product gave at least one result tile, and every tile was compared
    for test in ("random_products", "extremes"):
        assert counts[test]["results"] >= counts[test]["products"], counts
    # after each reset, the fresh product's tiles were compared
    assert counts["reset_mid_product"]["results"] >= 3
    assert r["products"] == sum(c["products"] for c in counts.values())


def test_scoreboard_reports_a_wrong_result():
    # the scoreboard is what makes the suite able to fail: a wrong value is reported with both sides
    bench = EngineBench.__new__(EngineBench)
    bench.lay = EngineLayouts(CONFIGS["tiny"])
    bench.expected = collections.deque([([5], True), ([7], True)])
    bench.results, bench.errors = 0, []
    bench.scored(bench.lay.result.const({"values": [6], "count": 1, "last": 1}).as_bits())
    assert bench.errors == ["result tile 1: got ([6], True), expected ([5], True)"]
    # a wrong `last` flag is a mismatch too
    bench.scored(bench.lay.result.const({"values": [7], "count": 1, "last": 0}).as_bits())
    assert bench.errors[1] == "result tile 2: got ([7], False), expected ([7], True)"
    # and a result nobody asked for is an error as well
    bench.scored(bench.lay.result.const({"values": [1], "count": 1, "last": 1}).as_bits())
    assert bench.errors[2] == "unexpected result ([1], True)"


#: SPRAM weights, small enough that the "largest product that fits" case stays quick
SPRAM_SMALL = EngineParams(lanes=4, trits=4, packing="trit2", max_k=256, weight_depth=1024, memory="spram")


def test_engine_verilator_real_spram_primitive():
    # the engine as a UP5K bitstream has it: SB_SPRAM256KA instances, simulated with Yosys' own model
    r = run_engine_tb(SPRAM_SMALL, name="spram-primitive", products=500, seed=7, primitives=True)
    assert r["tests"] == 3 and r["failed"] == 0, f"see {r['log']}"
    # the random test checked what it was asked for
    assert scoreboard_counts(r)["random_products"]["products"] >= 500
    # and the simulation really used Yosys' primitive model, not Tritium's behavioural one
    build = pathlib.Path(r["build_dir"])
    assert "module SB_SPRAM256KA" in (build / "sb_spram256ka.v").read_text()
    assert "SB_SPRAM256KA" in (build / "tmv.v").read_text()
