"""UART PHY at pin level, and the whole board device (UART + link + engine) driven through its pins."""

import struct

import numpy as np
import pytest
from amaranth.hdl import Module

from tritium.hw import protocol as P
from tritium.hw.params import CONFIGS
from tritium.hw.uart import UartLink, UartRx, UartTx
from tritium.sim import golden
from tritium.sim.amaranth_tb import stream_get, stream_put
from tritium.sim.device_model import DeviceModel


async def send_pin(ctx, pin, byte, divisor):
    # 8N1, least significant bit first
    for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
        ctx.set(pin, bit)
        await ctx.tick().repeat(divisor)


async def recv_pin(ctx, pin, divisor, max_cycles=100_000):
    # wait for a start bit, then sample mid-bit
    for _ in range(max_cycles):
        if not ctx.get(pin):
            break
        await ctx.tick()
    else:
        return None
    await ctx.tick().repeat(divisor + divisor // 2)
    value = 0
    for i in range(8):
        value |= ctx.get(pin) << i
        await ctx.tick().repeat(divisor)
    assert ctx.get(pin) == 1, "stop bit low"
    return value


@pytest.mark.parametrize("divisor", [4, 12, 25])
def test_uart_tx_to_rx_loopback(divisor, simulate):
    tx, rx = UartTx(divisor=divisor), UartRx(divisor=divisor)
    data = list(np.random.default_rng(divisor).integers(0, 256, 40))
    got = []

    async def sender(ctx):
        for b in data:
            await stream_put(ctx, tx.data, int(b))

    async def receiver(ctx):
        for _ in data:
            got.append(await stream_get(ctx, rx.data))

    async def wire(ctx):
        async for (value,) in ctx.changed(tx.tx):
            ctx.set(rx.rx, value)

    m = Module()
    m.submodules.tx, m.submodules.rx = tx, rx
    simulate(m, sender, receiver, processes=[wire], until=1e-6 * divisor * 10 * (len(data) + 5))
    assert got == [int(b) for b in data]


def test_uart_rx_reports_framing_error(simulate):
    d = 8
    rx = UartRx(divisor=d)
    got = []

    async def tb(ctx):
        await ctx.tick().repeat(3)
        # a byte whose stop bit is low is dropped with frame_error (the line goes low at cycle 3)
        for bit in [0] + [1] * 8 + [0]:
            ctx.set(rx.rx, bit)
            await ctx.tick().repeat(d)
        ctx.set(rx.rx, 1)
        await ctx.tick().repeat(30)
        # the receiver then takes the next, well-formed byte
        await send_pin(ctx, rx.rx, 0xA5, d)
        got.append(await stream_get(ctx, rx.data))
        await ctx.tick().repeat(d)

    trace = simulate(rx, tb, watch={"frame_error": rx.frame_error, "valid": rx.data.valid,
                                    "overrun": rx.overrun}, max_cycles=2000)
    bad_byte_end = 3 + 10 * d + 30
    # exactly one frame_error pulse, one cycle long, while the low stop bit is on the line
    # (its middle, after the two-flop synchroniser: cycle 3 + 9.5 * d + 2)
    pulses = [i for i, v in enumerate(trace["frame_error"]) if v]
    assert len(pulses) == 1
    assert 3 + 9 * d <= pulses[0] <= 3 + 10 * d + 2
    # the bad byte never appeared on the data stream, and nothing was counted as an overrun
    assert not any(trace["valid"][:bad_byte_end])
    assert not any(trace["overrun"])
    # the next byte arrived intact: the framing error did not desynchronise the receiver
    assert got == [0xA5]


def test_uart_rx_overrun_keeps_the_waiting_byte(simulate):
    d = 6
    rx = UartRx(divisor=d)
    got = []

    async def tb(ctx):
        await ctx.tick().repeat(3)
        # two bytes arrive while nobody takes the first: the first waits, the second is dropped
        await send_pin(ctx, rx.rx, 0x3C, d)
        await send_pin(ctx, rx.rx, 0xC3, d)
        await ctx.tick().repeat(2 * d)
        got.append(await stream_get(ctx, rx.data))
        await ctx.tick().repeat(4 * d)

    trace = simulate(rx, tb, watch={"overrun": rx.overrun, "valid": rx.data.valid,
                                    "frame_error": rx.frame_error}, max_cycles=2000)
    # one overrun pulse, during the second byte's stop bit; no framing error
    pulses = [i for i, v in enumerate(trace["overrun"]) if v]
    assert len(pulses) == 1
    assert 3 + 19 * d <= pulses[0] <= 3 + 20 * d + 2
    assert not any(trace["frame_error"])
    # the byte taken is the first one, and nothing is offered after it
    assert got == [0x3C]
    taken = len(trace["valid"]) - 1 - trace["valid"][::-1].index(1)
    assert not any(trace["valid"][taken + 1:])


def test_board_device_through_its_pins(simulate):
    # IDENTIFY, SET/WRITE/MATVEC bytes serialised onto the rx pin; the tx pin's bytes equal the model's
    p = CONFIGS["tiny"]
    link = UartLink(params=p, clock_hz=1_000_000, baud=250_000)
    model = DeviceModel(p, clock_hz=1_000_000)
    w = np.array([[1], [-1], [0]])
    words = golden.weight_words(w, lanes=1, trits=1, packing="trit2")
    frames = [P.encode_frame(0, P.Op.IDENTIFY),
              P.encode_frame(1, P.Op.WRITE_WEIGHTS, struct.pack("<H", 0) + bytes(words)),
              P.encode_frame(2, P.Op.SET_SLOT, struct.pack("<BHHH", 0, 0, 3, 1)),
              P.encode_frame(3, P.Op.MATVEC, bytes([0, 0x85]))]
    replies = [model.feed(fr) for fr in frames]
    want = b"".join(replies)
    got = bytearray()

    async def host_tx(ctx):
        # one request at a time, as the host runtime does (a 36-byte IDENTIFY reply outlasts
        # the 32-byte FIFO's worth of requests sent behind it: docs/protocol.md)
        ctx.set(link.rx, 1)
        await ctx.tick().repeat(10)
        for i, frame in enumerate(frames):
            for b in frame:
                await send_pin(ctx, link.rx, b, link.divisor)
            while len(got) < sum(len(r) for r in replies[:i + 1]):
                await ctx.tick()

    async def host_rx(ctx):
        while len(got) < len(want):
            b = await recv_pin(ctx, link.tx, link.divisor)
            assert b is not None, f"device went quiet after {len(got)} of {len(want)} bytes"
            got.append(b)

    simulate(link, host_tx, host_rx)
    assert bytes(got) == want
    assert P.FrameDecoder().feed(bytes(got))[-1][2] == struct.pack("<3h", -123, 123, 0)


def test_uart_parameters_validated():
    with pytest.raises(ValueError, match="UART divisor = 3 must be an integer >= 4"):
        UartTx(divisor=3)
    with pytest.raises(ValueError, match="baud 115200 does not divide the 12000000 Hz clock"):
        UartLink(params=CONFIGS["tiny"], clock_hz=12_000_000, baud=115_200)
