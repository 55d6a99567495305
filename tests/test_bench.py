"""The benchmark machinery: sweep on a standard executor, summaries, Pareto front, models."""

import concurrent.futures

import pytest

from tritium.hw.engine import product_cycles
from tritium.hw.params import CONFIGS, EngineParams
from tritium.sim import bench


def fake(config, device, seed, logic, fmax, macs=32):
    return {"config": config, "device": device, "seed": seed, "params": {}, "logic_used": logic,
            "logic_available": 5280, "ff_used": None, "bram_used": 8, "spram_used": 0, "dsp_used": 0,
            "fmax_mhz": fmax, "macs_per_cycle": macs}


def test_summary_takes_median_over_seeds_and_compares_with_reference():
    rows = bench.summarize([fake("a", "up5k", s, 1000, f) for s, f in ((1, 40.0), (2, 50.0), (3, 45.0))])
    (r,) = rows
    assert (r["fmax_mhz_min"], r["fmax_mhz_median"], r["fmax_mhz_max"]) == (40.0, 45.0, 50.0)
    assert r["mac_per_cycle_per_klc"] == 32.0
    # the naive reference: 16 MAC/cycle on 833 LC -> 19.2 per kLC; 32.0 / 19.2 = 1.67
    assert r["mac_per_cycle_per_klc_vs_reference"] == 1.67
    assert r["fmax_target_met"] is False


def test_pareto_front_drops_dominated_points():
    rows = bench.summarize([fake("small", "up5k", 1, 800, 40.0), fake("big", "up5k", 1, 1600, 60.0, macs=64),
                            fake("worse", "up5k", 1, 1700, 30.0)])
    assert [r["config"] for r in bench.pareto_front(rows, "up5k")] == ["small", "big"]


@pytest.mark.synth
def test_sweep_runs_on_any_executor():
    # a thread pool stands in for any concurrent.futures.Executor (a Dask client's executor works the same)
    p = EngineParams(lanes=1, trits=2, max_k=16, weight_depth=16)
    points = [bench.SweepPoint(params=p.as_dict(), device="up5k", seed=s, freq_mhz=48, name="t-1x2")
              for s in (1, 2)]
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        results = bench.sweep(points, executor=ex)
    assert [r["seed"] for r in results] == [1, 2]
    assert all(r["logic_used"] > 0 and r["dsp_used"] == 0 for r in results)


def test_roofline_rtl_matches_model_on_a_small_shape():
    (r,) = bench.roofline(CONFIGS["odd"], [("t", 7, 30)])
    assert r["cycles_rtl"] == r["cycles_model"] == product_cycles(CONFIGS["odd"], 7, 30)
    assert 0 < r["roofline_fraction"] <= 1


def test_link_model_splits_link_and_compute():
    r = bench.link_model(CONFIGS["up5k-spram"], [("x", 64, 256)], clock_hz=12e6, baud=1_000_000)
    # 64x256: request 8 + 256 bytes, reply 7 + 64 * 3 bytes, 10 bits each at 1 Mbaud
    assert r["link_s_per_token"] == pytest.approx((264 + 199) * 10 / 1e6)
    assert r["bound"] == "link"


def test_projection_is_labelled_and_matches_a_hand_calculation():
    pr = bench.projections()
    # it says it is a projection
    assert "projection" in pr["assumptions"].lower()
    # Worked by hand from the architectures (docs: MODELS.md), at 2 bits per trit:
    #   MatMul-free 370M: 24 x (4 x 1024x1024 + 2 x 2816x1024 + 2816x1024) + 32000x1024
    #     = 341,049,344 trits = 85.26 MB
    #   BitNet b1.58 2B-4T: 30 x (2 x 2560x2560 + 2 x 640x2560 + 3 x 6912x2560) + 128256x2560
    #     = 2,412,380,160 trits = 603.10 MB
    # ULX3S: 2 B x 166 MHz x 0.8 = 265.6 MB/s, 32 MAC x 100 MHz; 32 MiB.
    # HBM: 460 GB/s x 0.8 = 368 GB/s, 6144 MAC x 300 MHz; 8 GiB.
    # tokens/s = bandwidth / weight bytes, or MAC rate / trits; the smaller one is the projection.
    expected = {
        ("MatMul-free 370M", "ULX3S"): (85.3, False, 3.1, 9.4, 3.1),
        ("MatMul-free 370M", "HBM"): (85.3, True, 4316.1, 5404.5, 4316.1),
        ("BitNet b1.58 2B-4T", "ULX3S"): (603.1, False, 0.4, 1.3, 0.4),
        ("BitNet b1.58 2B-4T", "HBM"): (603.1, True, 610.2, 764.1, 610.2),
    }
    got = {(r["model"], r["part"].split()[0]): (r["weight_mbytes"], r["fits"], r["bandwidth_bound_tok_s"],
                                                r["compute_bound_tok_s"], r["projected_tok_s"])
           for r in pr["rows"]}
    assert got == expected
