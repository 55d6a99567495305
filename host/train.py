"""Train the shipped MatMul-free LM with quantization-aware training (``make train``; PyTorch).

The model is exactly the one :class:`tritium.host.models.MMFreeLM` runs: every projection a
BitLinear with its own RMSNorm, ternary absmean weights and per-token int8 absmax activations,
both through a straight-through estimator (the BitNet b1.58 recipe: the forward pass sees the
quantized values, the gradient flows to the latent float weights). Parameter names are those
of the released MatMul-free checkpoints, so the latent checkpoint written here is in their
format, and the shipped file is the same model ternarized and packed
(:func:`tritium.host.models.export_mmfree`).

Outputs: ``train/latent.safetensors`` in the build folder (full precision), the shipped model
file, ``docs/model/training.json`` (curve, final validation loss / perplexity, corpus hash,
command) and ``docs/model/training.png``. From an installed package (no source checkout) the
model and the record go to ``train/`` in the build folder instead (see :mod:`tritium.paths`).
Not part of the test run; CPU by default (``--device cuda`` if there is a GPU).
"""

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

from ..paths import build_dir, source_checkout
from .corpus import build_corpus, load_corpus, split
from .models import DEFAULT_MODEL, MMFreeConfig, export_mmfree

__all__ = ["main"]


def _torch_model(cfg):
    import torch
    import torch.nn.functional as F
    from torch import nn

    def rmsnorm(x, w, eps):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def ste(x, q):
        return x + (q - x).detach()

    class RMSNorm(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))

        def forward(self, x):
            return rmsnorm(x, self.weight, cfg.eps)

    class BitLinear(nn.Module):
        """Fake-quant BitLinear: forward values equal the integer datapath's, up to float rounding."""

        def __init__(self, k, m):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(m, k).normal_(0, k ** -0.5))
            self.norm = RMSNorm(k)

        def forward(self, x):
            x = self.norm(x)
            s_x = 127.0 / x.abs().amax(-1, keepdim=True).clamp_min(1e-5)
            xq = ste(x, torch.clamp(torch.round(x * s_x), -128, 127) / s_x)
            s_w = 1.0 / self.weight.abs().mean().clamp_min(1e-5)
            wq = ste(self.weight, torch.clamp(torch.round(self.weight * s_w), -1, 1) / s_w)
            return F.linear(xq, wq)

    def scan(f, c, chunk=32):
        """``h_t = f_t * h_{t-1} + c_t`` from ``h_{-1} = 0``, chunked (stable: only products of
        ``f <= 1`` are formed)."""
        b, t, n = f.shape
        logf = torch.log(f.clamp_min(1e-30))
        h = f.new_zeros(b, n)
        out = []
        for t0 in range(0, t, chunk):
            lf, cc = logf[:, t0:t0 + chunk], c[:, t0:t0 + chunk]
            a = lf.cumsum(1)
            L = a.shape[1]
            mask = torch.ones(L, L, dtype=torch.bool, device=f.device).tril()
            d = (a[:, :, None, :] - a[:, None, :, :]).masked_fill(~mask[None, :, :, None], float("-inf"))
            hc = (torch.exp(d) * cc[:, None, :, :]).sum(2) + torch.exp(a) * h[:, None, :]
            out.append(hc)
            h = hc[:, -1]
        return torch.cat(out, 1)

    class MLGRU(nn.Module):
        def __init__(self):
            super().__init__()
            h = cfg.hidden
            self.i_proj, self.f_proj, self.g_proj, self.o_proj = (BitLinear(h, h) for _ in range(4))
            self.g_norm = RMSNorm(h)

        def forward(self, x, lb):
            f = torch.sigmoid(self.f_proj(x))
            f = lb + (1 - lb) * f
            c = F.silu(self.i_proj(x)) * (1 - f)
            hs = scan(f, c)
            return self.o_proj(self.g_norm(self.g_proj(x)) * F.silu(hs))

    class GLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = BitLinear(cfg.hidden, 2 * cfg.intermediate)
            self.down_proj = BitLinear(cfg.intermediate, cfg.hidden)

        def forward(self, x):
            g, u = self.gate_proj(x).chunk(2, -1)
            return self.down_proj(F.silu(g) * u)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_norm, self.attn = RMSNorm(cfg.hidden), MLGRU()
            self.mlp_norm, self.mlp = RMSNorm(cfg.hidden), GLU()

        def forward(self, h, lb):
            h = h + self.attn(self.attn_norm(h), lb)
            return h + self.mlp(self.mlp_norm(h))

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = nn.Embedding(cfg.vocab, cfg.hidden)
            nn.init.normal_(self.embeddings.weight, 0, 1.0)
            self.layers = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.norm = RMSNorm(cfg.hidden)
            self.lower_bounds = nn.Parameter(torch.zeros(cfg.layers, cfg.hidden))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Body()
            self.lm_head = BitLinear(cfg.hidden, cfg.vocab)

        def forward(self, ids):
            lb = torch.softmax(self.model.lower_bounds, 0)
            lb = lb.cumsum(0) - lb[0]
            h = self.model.embeddings(ids)
            for i, layer in enumerate(self.model.layers):
                h = layer(h, lb[i])
            return self.lm_head(self.model.norm(h))

    return LM()


def plot_curve(record, path):
    """The training curve PNG from a training record (``docs/model/training.json``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no training curve PNG", file=sys.stderr)
        return
    curve, c = record["curve"], record["config"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot([p["step"] for p in curve], [p["train_loss"] for p in curve], label="train (batch)")
    ax.plot([p["step"] for p in curve], [p["val_loss"] for p in curve], label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/byte)")
    ax.set_title(f"MatMul-free LM {c['layers']}x{c['hidden']}, GLU {c['intermediate']}: best validation "
                 f"ppl {record['best_val_perplexity']:.2f}/byte", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tritium.host.train", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=0,
                    help="wall-time budget: after 20 steps, cap --steps to what fits (0: no cap)")
    ap.add_argument("--corpus", help="a corpus file from python -m tritium.host.corpus (default: build it here)")
    checkout = source_checkout()  # an installed package is never written into
    ap.add_argument("--out", default=str(DEFAULT_MODEL if checkout else build_dir("train", DEFAULT_MODEL.name)))
    ap.add_argument("--docs", default=str(checkout / "docs" / "model" if checkout else build_dir("train")))
    args = ap.parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("training needs PyTorch: make train installs it (pip install torch)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = MMFreeConfig()
    data, corpus = load_corpus(args.corpus) if args.corpus else build_corpus()
    train, val = split(data)
    print(f"corpus: {corpus['bytes']} bytes ({len(train)} train, {len(val)} validation), sha256 {corpus['sha256'][:16]}, "
          f"Python {corpus['python']}", flush=True)
    dev = torch.device(args.device)
    train_t = torch.tensor(np.frombuffer(train, np.uint8).astype(np.int64), device=dev)
    val_t = torch.tensor(np.frombuffer(val, np.uint8).astype(np.int64), device=dev)
    model = _torch_model(cfg).to(dev)
    decay = [p for n, p in model.named_parameters() if n.endswith("proj.weight") or n == "lm_head.weight"]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("proj.weight") or n == "lm_head.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warm = max(1, min(200, args.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    gen = torch.Generator(device="cpu").manual_seed(args.seed)

    def batch():
        idx = torch.randint(0, len(train_t) - args.seq - 1, (args.batch,), generator=gen).to(dev)
        win = train_t[idx[:, None] + torch.arange(args.seq + 1, device=dev)]
        return win[:, :-1], win[:, 1:]

    @torch.no_grad()
    def evaluate():
        model.eval()
        n = (len(val_t) - 1) // args.seq
        x = val_t[:n * args.seq].view(n, args.seq)
        y = val_t[1:n * args.seq + 1].view(n, args.seq)
        total = 0.0
        for i in range(0, n, 64):
            total += F.cross_entropy(model(x[i:i + 64]).flatten(0, 1), y[i:i + 64].flatten(), reduction="sum").item()
        model.train()
        return total / (n * args.seq)

    curve, best, best_state = [], float("inf"), None
    t0 = time.monotonic()
    for step in range(1, 10 ** 9):
        if step > args.steps:
            break
        x, y = batch()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step == 20 and args.minutes:
            per_step = (time.monotonic() - t0) / 20
            args.steps = max(40, min(args.steps, int(args.minutes * 60 / (per_step * 1.08))))
            print(f"{per_step * 1000:.0f} ms/step: training {args.steps} steps", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            v = evaluate()
            curve.append({"step": step, "train_loss": round(loss.item(), 4), "val_loss": round(v, 4),
                          "seconds": round(time.monotonic() - t0, 1)})
            print(f"step {step}: train {loss.item():.3f}, validation {v:.3f} nats/byte "
                  f"(ppl {math.exp(v):.2f}), {time.monotonic() - t0:.0f} s", flush=True)
            if v < best:
                best, best_state = v, {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
    latent = {k: t.float().numpy() for k, t in best_state.items()}
    from .formats import write_safetensors
    write_safetensors(build_dir("train", "latent.safetensors"), latent,
                      {"format": "mmfreelm-latent", **cfg.metadata()})
    record = {"corpus": corpus, "config": cfg.as_dict(), "steps": args.steps, "batch": args.batch, "seq": args.seq,
              "lr": args.lr, "seed": args.seed, "device": str(dev), "torch": torch.__version__,
              "command": "python -m tritium.host.train " + " ".join(argv if argv is not None else sys.argv[1:]),
              "best_val_loss_nats_per_byte": round(best, 4), "best_val_perplexity": round(math.exp(best), 3),
              "best_val_bits_per_byte": round(best / math.log(2), 4),
              "wall_seconds": round(time.monotonic() - t0, 1), "curve": curve}
    path = export_mmfree(latent, cfg, args.out, training=record)
    docs = pathlib.Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    plot_curve(record, docs / "training.png")
    print(f"wrote {path} and {docs / 'training.json'}; best validation {best:.4f} nats/byte, ppl {math.exp(best):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
