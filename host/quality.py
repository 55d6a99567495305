"""Validation loss of a MatMul-free model: the float runtime against the on-chip integer step.

Both run over the held-out split of the training corpus (:func:`tritium.host.corpus.split`:
every 20th 16 KiB block), cut into ``seq``-byte sequences that each start from a zero state,
exactly as ``tritium.host.train`` evaluates; the loss is the mean next-byte cross-entropy in nats.
The ternary products are exact numpy here (the device computes the same integers), so the two
numbers differ only by the arithmetic around the products: float32 on the host
(:class:`~tritium.host.models.MMFreeLM`) against the fixed-point program of
:mod:`tritium.sim.lmstep`.
"""

import numpy as np

from ..sim import lmstep
from ..sim.lmstep import NumpyRunner

__all__ = ["NumpyRunner", "validation_sequences", "validation_loss"]


def validation_sequences(seq=256, sequences=None):
    """``(inputs, targets)``: uint8 arrays ``sequences x seq`` from the corpus's validation split."""
    from .corpus import build_corpus, split
    data, _ = build_corpus()
    val = np.frombuffer(split(data)[1], np.uint8)
    n = (len(val) - 1) // seq
    n = n if sequences is None else min(n, sequences)
    return val[:n * seq].reshape(n, seq), val[1:n * seq + 1].reshape(n, seq)


def _nll(logits, targets):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(lp, targets[:, None].astype(np.int64), -1).sum()


def validation_loss(model, *, seq=256, sequences=None, which=("float", "integer")):
    """``{"float": nats/byte, "integer": nats/byte, "bytes": N}`` for a MatMul-free ``model``."""
    from .models import MMFreeLM
    x, y = validation_sequences(seq, sequences)
    out = {"bytes": int(x.size), "sequences": int(x.shape[0]), "seq": seq}
    if "float" in which:
        lm = MMFreeLM(model, NumpyRunner({n: l.wq for n, l in model.linears.items()}))
        lm.reset(batch=(x.shape[0],))
        out["float"] = sum(_nll(lm.step(x[:, t]), y[:, t]) for t in range(seq)) / x.size
    if "integer" in which:
        lm = lmstep.IntegerLM(lmstep.compile_mmfree(model), batch=(x.shape[0],))
        out["integer"] = sum(_nll(lm.step(x[:, t]) / 2.0 ** 16, y[:, t]) for t in range(seq)) / x.size
    return out


def main(argv=None):
    """``python -m tritium.host.quality [--model F] [--sequences N] [--seq L]``: prints JSON."""
    import argparse
    import json
    from .models import DEFAULT_MODEL, load_model
    ap = argparse.ArgumentParser(prog="python -m tritium.host.quality", description=main.__doc__)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--sequences", type=int, default=None, help="validation sequences (default: all)")
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args(argv)
    r = validation_loss(load_model(args.model), seq=args.seq, sequences=args.sequences)
    r["difference"] = r["integer"] - r["float"]
    print(json.dumps({k: round(float(v), 5) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
