"""Helpers shared by the simulation tests: running an Amaranth simulation, and random problems.

They are fixtures (each returns a function), so a test asks for the ones it uses by name.
"""

import gc
import sys

import pytest
from amaranth.sim import Simulator

CLOCK_PERIOD = 1e-6


def simulate_design(dut, *testbenches, processes=(), watch=None, until=None, max_cycles=200_000):
    """Simulate ``dut`` with one clock; return what ``watch`` saw.

    ``testbenches`` are async Amaranth testbenches; the simulation ends when they all return,
    or at ``until`` seconds when that is given. ``processes`` are added with ``add_process``.
    ``watch`` maps names to signals: each is sampled at every clock edge, and the result is a
    dict of the same names to lists of those samples, one per cycle.

    A simulation whose testbenches are still running after ``max_cycles`` clock cycles fails
    the test (a design that never answers is reported, not waited for).
    """
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    for tb in testbenches:
        sim.add_testbench(tb)
    for process in processes:
        sim.add_process(process)
    cycles = [0]
    traces = {name: [] for name in (watch or {})}
    names, signals = list(traces), list((watch or {}).values())

    async def watcher(ctx):
        async for _clk, _rst, *values in ctx.tick().sample(*signals):
            cycles[0] += 1
            for name, value in zip(names, values):
                traces[name].append(int(value))

    sim.add_testbench(watcher, background=True)
    if until is not None:
        sim.run_until(until)
        return traces
    while sim.advance():
        if cycles[0] > max_cycles:
            sim = None
            _collect_stopped_testbenches()
            pytest.fail(f"simulation still running after {max_cycles} cycles", pytrace=False)
    return traces


def _collect_stopped_testbenches():
    """Free a simulation stopped part-way (the caller has dropped it). Amaranth 0.5 cannot close a
    testbench suspended in ``ctx.tick().until(...)``: closing it reports ``RuntimeError: aclose():
    asynchronous generator is already running`` as an unraisable exception, which the
    warnings-as-errors setting would turn into a second, misleading failure. Only that error is
    silenced, and only while collecting."""
    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and "aclose()" in str(unraisable.exc_value)):
            previous(unraisable)

    previous, sys.unraisablehook = sys.unraisablehook, hook
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous


def random_shape_for(rng, params, max_m=24, max_k=48):
    """A random ``(m, k)`` with ``1 <= m <= max_m`` and ``1 <= k <= min(max_k, params.max_k)``,
    halved until the matrix fits ``params.weight_depth``."""
    m, k = int(rng.integers(1, max_m + 1)), int(rng.integers(1, min(max_k, params.max_k) + 1))
    while params.words_for(m, k) > params.weight_depth:
        m, k = max(1, m // 2), max(1, k // 2)
    return m, k


def random_job_for(rng, m, k, vectors=3):
    """``(W, [x, ...])``: a random ternary ``m x k`` matrix and ``vectors`` random int8 vectors."""
    return rng.integers(-1, 2, (m, k)), [rng.integers(-128, 128, k) for _ in range(vectors)]


@pytest.fixture
def simulate():
    """:func:`simulate_design`."""
    return simulate_design


@pytest.fixture
def random_shape():
    """:func:`random_shape_for`."""
    return random_shape_for


@pytest.fixture
def random_job():
    """:func:`random_job_for`."""
    return random_job_for

