"""cocotb testbench: the vector unit's generated Verilog runs the shipped model's LM-step program.

The testbench plays the unit's neighbours as :mod:`tritium.sim.vector_tb` does in the Amaranth
simulator: it loads the constants, feeds embedding rows and exact ternary products on ``ext``
(each product computed from the activations the RTL offered on ``xq``), with random idle cycles on
every stream, and reads the logits and the layer states back through ``peek``. Everything is
compared exactly with :class:`tritium.sim.lmstep.IntegerLM`. Environment: ``TRITIUM_TOKENS``
(prompt bytes), ``TRITIUM_STATS`` (a JSON file the scoreboard writes).
"""

import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from tritium.hw.vector import LANES, encode, ext_layout, instruction_layout, xq_layout
from tritium.host.models import DEFAULT_MODEL, load_model
from tritium.sim import lmstep


class Port:
    """One stream of the DUT, by its Amaranth port names (``<name>__valid`` ...)."""

    def __init__(self, dut, name, rng, stall_prob):
        self.dut, self.rng, self.stall_prob = dut, rng, stall_prob
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")

    async def _stall(self):
        while self.rng.random() < self.stall_prob:
            await RisingEdge(self.dut.clk)

    async def put(self, value):
        await self._stall()
        self.payload.value = value
        self.valid.value = 1
        while True:
            await ReadOnly()
            done = bool(self.ready.value)
            await RisingEdge(self.dut.clk)
            if done:
                break
        self.valid.value = 0

    async def get(self):
        await self._stall()
        self.ready.value = 1
        while True:
            await ReadOnly()
            value = int(self.payload.value) if self.valid.value else None
            await RisingEdge(self.dut.clk)
            if value is not None:
                break
        self.ready.value = 0
        return value


async def put_ext(port, values, lanes):
    """``values`` into the unit's ``ext``, ``lanes`` a transfer (ext_layout; the last perhaps fewer)."""
    values = [int(v) for v in values]
    for i in range(0, len(values), lanes):
        group = values[i:i + lanes]
        t = ext_layout(lanes).const({"values": group + [0] * (lanes - len(group)), "count": len(group)})
        await port.put(t.as_bits())


def _signed(v, bits):
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


@cocotb.test()
async def shipped_model_step(dut):
    """Every token's logits and layer states equal the spec's integers."""
    tokens = list(os.environ.get("TRITIUM_TOKENS", "Th").encode())
    rng = random.Random(int(os.environ.get("COCOTB_RANDOM_SEED", "1")))
    img = lmstep.compile_mmfree(load_model(DEFAULT_MODEL))
    vbits, cbits = len(dut.peek__payload), max(1, (len(img.cmem) - 1).bit_length())
    layout = instruction_layout(addr_bits=vbits, caddr_bits=cbits)
    instr, ext, xq = (Port(dut, n, rng, 0.0) for n in ("instr", "ext", "xq"))
    lanes = next(k for k in LANES if xq_layout(k).size == len(dut.xq__payload))     # the unit's width
    ext.stall_prob = xq.stall_prob = 0.2
    cload, peek, word = (Port(dut, n, rng, 0.0) for n in ("cload", "peek", "word"))
    for p in (instr, ext, cload, peek):
        p.valid.value = 0
    for p in (xq, word):
        p.ready.value = 0
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    for addr, value in enumerate(img.cmem):
        await cload.put(addr | ((int(value) & 0xFF) << cbits))
    spec = lmstep.IntegerLM(img)       # the same program, one instruction at a time beside the RTL
    cmem = img.cmem.astype(np.int64)
    regs = {"M": np.zeros(1, np.int64), "SS": np.zeros(1, np.int64)}
    stats = {"tokens": 0, "words_checked": 0, "activations_checked": 0}
    for tok in tokens:
        row = img.embed_row(tok)
        for op in img.program:
            lmstep.execute(op, spec.vmem, regs, cmem, embed_row=lambda: row,
                           matvec=lambda c, q: img.matrices[c].astype(np.int64) @ q.astype(np.int64))
            await instr.put(encode(op, layout))
            if op.code == "embed":
                await put_ext(ext, row, lanes)
            elif op.code == "quant":
                got = []
                while len(got) < op.n:       # `count` activations a transfer (xq_layout)
                    t = xq_layout(lanes).from_bits(await xq.get())
                    got += [t.values[k] for k in range(t.count)]
                assert got == regs["XQ"].tolist(), f"token {tok}: activations differ from the spec"
                stats["activations_checked"] += op.n
            elif op.code == "matvec":
                await put_ext(ext, img.matrices[op.c].astype(np.int64) @ np.array(got, np.int64), lanes)
            while True:
                await ReadOnly()
                busy = bool(dut.busy.value)
                await RisingEdge(dut.clk)
                if not busy:
                    break
        for name in ["logits"] + [f"s{l}" for l in range(img.config.layers)]:
            addr, n = img.vectors[name]
            words = []
            for i in range(n):
                await peek.put(addr + i)
                words.append(_signed(await word.get() & 0xFFFFFFFF, 32))     # the payload's `value`
            assert words == spec.vmem[addr:addr + n].tolist(), f"token {tok}: {name} differs from the spec"
            stats["words_checked"] += n
        stats["tokens"] += 1
    path = os.environ.get("TRITIUM_STATS")
    if path:
        with open(path, "w") as f:
            json.dump(stats, f)
