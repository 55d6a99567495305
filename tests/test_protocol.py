"""The link protocol module on its own: the frame CRC, the frame encoder and the host's decoder."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib.crc import catalog

from tritium.hw import protocol as P
from tritium.hw.device import crc16_next


# -- CRC ---------------------------------------------------------------------------------------------

def test_crc_has_the_catalogue_check_value():
    # the protocol's CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final
    # XOR; CRC-16/IBM-3740 in the RevEng catalogue), whose check value is 0x29B1
    assert P.crc16(b"123456789") == 0x29B1
    # the empty message leaves the initial value (no final XOR)
    assert P.crc16(b"") == 0xFFFF


def test_crc_matches_amaranths_catalogue_entry():
    # an independent implementation of the same catalogue entry agrees on random messages
    reference = catalog.CRC16_CCITT_FALSE(data_width=8)
    rng = np.random.default_rng(16)
    for n in list(range(0, 20)) + [64, 255, 1000]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert P.crc16(data) == reference.compute(data), data.hex()


def test_crc_continues_from_a_given_value():
    # crc16(b, crc16(a)) is the CRC of a + b: what a byte-at-a-time receiver relies on
    data = bytes(range(37))
    for cut in (0, 1, 9, 36, 37):
        assert P.crc16(data[cut:], P.crc16(data[:cut])) == P.crc16(data)


def test_gateware_crc_update_gives_the_check_value(simulate):
    # the gateware's one-byte-per-cycle update, run over "123456789", ends on the check value
    m = Module()
    crc, byte = Signal(16, init=0xFFFF), Signal(8)
    m.d.sync += crc.eq(crc16_next(crc, byte))
    seen = []

    async def tb(ctx):
        for b in b"123456789":
            ctx.set(byte, b)
            await ctx.tick()
        seen.append(ctx.get(crc))

    simulate(m, tb, max_cycles=100)
    assert seen == [0x29B1]


# -- encoder -----------------------------------------------------------------------------------------

def test_frame_layout():
    # SYNC | seq | op | len_lo | len_hi | payload | crc_lo | crc_hi, the CRC over seq .. payload
    # (CRC values from amaranth.lib.crc's CRC16_CCITT_FALSE: 12 06 00 00 -> 0xC0AF,
    # 07 04 03 00 03 80 7f -> 0xCD49)
    assert P.encode_frame(0x12, P.Op.STATUS) == bytes.fromhex("54 12 06 0000 afc0")
    assert P.encode_frame(7, P.Op.MATVEC, bytes([3, 0x80, 0x7F])) == bytes.fromhex("54 07 04 0300 03807f 49cd")


@pytest.mark.parametrize("args, msg", [
    ((256, P.Op.STATUS), r"seq 256 and op 6 must be bytes"),
    ((-1, P.Op.STATUS), r"seq -1 and op 6 must be bytes"),
    ((0, 0x100), r"seq 0 and op 256 must be bytes"),
    ((0, P.Op.WRITE_WEIGHTS, bytes(0x10000)), r"payload of 65536 bytes exceeds the 16-bit length field"),
])
def test_encoder_rejects_what_a_frame_cannot_carry(args, msg):
    # one clear error naming the field
    with pytest.raises(ValueError, match=msg):
        P.encode_frame(*args)


# -- decoder -----------------------------------------------------------------------------------------

def good_frames(n, first_seq=0):
    # STATUS and MATVEC-like frames with payloads that contain the SYNC byte, to tempt the decoder
    return [P.encode_frame((first_seq + i) % 256, P.Op.MATVEC if i % 2 else P.Op.STATUS,
                           bytes([P.SYNC, i, P.SYNC, 0xFF]) if i % 2 else b"") for i in range(n)]


def decoded(frame):
    return frame[1], frame[2], frame[P.HEADER_BYTES:-2]


def drain(dec):
    # feed() raises at each corrupt frame; call it again until it has nothing more to say
    out, errors = [], []
    while True:
        try:
            return out + dec.feed(b""), errors
        except P.ProtocolError as e:
            errors.append(e)


def test_decoder_reassembles_frames_split_anywhere():
    frames = good_frames(9)
    stream = b"".join(frames)
    rng = np.random.default_rng(4)
    for _ in range(20):
        # the same bytes, cut into random pieces (single bytes included), give the same frames
        dec, out = P.FrameDecoder(), []
        cuts = sorted(rng.choice(np.arange(1, len(stream)), size=int(rng.integers(1, 30)), replace=False))
        for a, b in zip([0, *cuts], [*cuts, len(stream)]):
            out += dec.feed(stream[a:b])
        assert out == [decoded(f) for f in frames]
    # nothing is left over once the last frame is out
    assert dec.feed(b"") == []


def test_decoder_skips_noise_between_frames():
    # bytes that contain no SYNC are skipped silently, before, between and after frames
    a, b = good_frames(2)
    noise = bytes([0x00, 0xFF, 0x13, 0x37, 0xAA])
    assert P.FrameDecoder().feed(noise + a + noise + b + noise) == [decoded(a), decoded(b)]


def test_decoder_reports_a_bad_crc_and_resumes_after_it():
    a, b, c = good_frames(3)
    bad = bytearray(b)
    bad[-1] ^= 0x01
    # (a SYNC inside the bad frame's payload starts a false frame; with max_payload at the largest
    # legal frame, its bogus length is refused at once rather than waited for)
    dec = P.FrameDecoder(max_payload=64)
    # a good frame is returned
    assert dec.feed(a) == [decoded(a)]
    # a frame whose CRC does not match is reported ...
    with pytest.raises(P.ProtocolError, match="CRC 0x.... does not match"):
        dec.feed(bytes(bad) + c)
    # ... and decoding resumes after its SYNC byte: past the two false frames that start at the
    # SYNC bytes in its payload (reported too), the frame behind it is found
    out, errors = drain(dec)
    assert out == [decoded(c)]
    assert len(errors) == 2 and all("exceeds 64" in str(e) for e in errors)


def test_decoder_reports_an_oversized_length_and_resumes_after_it():
    (a,) = good_frames(1)
    dec = P.FrameDecoder(max_payload=16)
    # a header claiming 200 payload bytes is refused at once, without waiting for them
    with pytest.raises(P.ProtocolError, match="frame length 200 exceeds 16"):
        dec.feed(bytes([P.SYNC, 1, P.Op.MATVEC, 200, 0]) + a)
    # the frame right behind it is found
    assert drain(dec) == ([decoded(a)], [])
    # a stray SYNC whose "header" runs into the next frame (length 0x54 = 84, from the real SYNC):
    # only the stray byte is dropped, so the real frame inside that header is not lost
    with pytest.raises(P.ProtocolError, match="frame length 84 exceeds 16"):
        dec.feed(bytes([P.SYNC, 1, P.Op.MATVEC]) + a)
    assert drain(dec) == ([decoded(a)], [])


def test_decoder_recovers_from_a_false_sync_in_noise():
    # a stray SYNC whose "header" claims a 10-byte payload swallows the next frame for a while;
    # when the false frame's CRC fails, decoding resumes one byte later and finds the real frames
    frames = good_frames(4)
    dec = P.FrameDecoder()
    out, errors = dec.feed_all(bytes([P.SYNC, 0x01, 0x02, 10, 0]) + b"".join(frames))
    assert out == [decoded(f) for f in frames]
    assert len(errors) == 1 and "does not match" in str(errors[0])


@pytest.mark.parametrize("payload_len", [0, 12])
def test_decoder_never_returns_a_frame_with_a_flipped_bit(payload_len):
    # every single-bit error in a frame, followed by good frames: the damaged frame is never
    # returned (CRC-16 detects every single-bit error), and every good frame behind it is, in order
    victim = P.encode_frame(0x40, P.Op.WRITE_WEIGHTS, bytes(range(0x60, 0x60 + payload_len)))
    assert victim.count(P.SYNC) == 1  # (so that without its SYNC byte the victim is plain noise)
    behind = good_frames(12, first_seq=0x41)  # 72 bytes: more than a false frame's 64 + 7
    want = [decoded(f) for f in behind]
    for bit in range(8 * len(victim)):
        damaged = bytearray(victim)
        damaged[bit // 8] ^= 1 << (bit % 8)
        dec = P.FrameDecoder(max_payload=64)
        out, errors = dec.feed_all(bytes(damaged) + b"".join(behind))
        assert out == want, f"bit {bit} flipped"
        # a damaged SYNC byte is just noise; any other damaged byte is reported
        assert bool(errors) == (bit >= 8), f"bit {bit} flipped: {errors}"
