"""Formal proofs (SymbiYosys + z3 from PyPI): accumulator never overflows; result stream rules."""

import pytest

from tritium.hw.params import EngineParams
from tritium.sim.formal import PROOFS, run_proof

pytestmark = pytest.mark.formal


@pytest.mark.parametrize("name", list(PROOFS))
def test_proof(name):
    harness, params, mode, depth = PROOFS[name]
    ok, log = run_proof(name, harness=harness, params=params, mode=mode, depth=depth)
    assert ok, log[-3000:]


def test_one_bit_short_accumulator_is_refuted():
    # the proof is not vacuous: with one accumulator bit fewer than golden.acc_width the solver
    # finds a real trace (base case, from reset) in which the accumulator wraps
    params = EngineParams(lanes=1, trits=4, max_k=8, weight_depth=16)
    ok, log = run_proof("acc-too-narrow", harness="AccumulatorNoOverflow", params=params, mode="prove",
                        depth=8, acc_width=params.acc_width - 1)
    assert not ok
    assert "DONE (FAIL" in log and "returned FAIL for basecase" in log
