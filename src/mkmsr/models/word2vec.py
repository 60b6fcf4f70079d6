"""Skip-gram word2vec with negative sampling (Mikolov et al. 2013), in torch, for the embeddings
the benchmark needs: RIB's operation embeddings (over operation sequences) and the co-occurrence
item embeddings of the embedding map (over item sequences). No per-token Python loop: the
(centre, context) pairs of a whole corpus are built with array operations.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def skipgram_pairs(tokens: np.ndarray, offsets: np.ndarray, window: int) -> np.ndarray:
    """(n_pairs, 2) int64 (centre, context) of every pair at most ``window`` apart inside a session.

    ``tokens`` (n,) flat sessions back to back, ``offsets`` (n_sessions + 1,) their boundaries.
    """
    sess = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    out = []
    for o in range(1, window + 1):  # a handful of offsets, not a per-token loop
        same = sess[o:] == sess[:-o]
        a, b = tokens[:-o][same], tokens[o:][same]
        out += [np.stack([a, b], 1), np.stack([b, a], 1)]
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


def train_skipgram(tokens: np.ndarray, offsets: np.ndarray, vocab: int, dim: int = 100, window: int = 5,
                   negatives: int = 5, epochs: int = 5, batch_size: int = 1024, lr: float = 0.01,
                   seed: int = 0, ignore: int | None = 0) -> torch.Tensor:
    """Train SGNS and return the (vocab, dim) input ("centre") vectors.

    Negatives are drawn from the unigram distribution to the power 0.75. Tokens equal to
    ``ignore`` (padding) never form pairs and keep a zero vector.
    """
    g = torch.Generator().manual_seed(seed)
    pairs = skipgram_pairs(tokens, offsets, window)
    if ignore is not None:
        pairs = pairs[(pairs != ignore).all(axis=1)]
    freq = np.bincount(tokens, minlength=vocab).astype(np.float64)
    if ignore is not None:
        freq[ignore] = 0.0
    noise = torch.from_numpy(freq ** 0.75 / max((freq ** 0.75).sum(), 1e-12)).to(torch.float32)
    w_in = torch.nn.Parameter((torch.rand(vocab, dim, generator=g) - 0.5) / dim)
    w_out = torch.nn.Parameter(torch.zeros(vocab, dim))
    opt = torch.optim.Adam([w_in, w_out], lr=lr)
    P = torch.from_numpy(pairs)
    for ep in range(epochs):
        perm = torch.randperm(P.shape[0], generator=g)
        total = 0.0
        for lo in range(0, P.shape[0], batch_size):
            c, o = P[perm[lo:lo + batch_size]].unbind(1)
            neg = torch.multinomial(noise, c.numel() * negatives, replacement=True, generator=g).view(-1, negatives)
            vc = w_in[c]                                                    # (b, d)
            pos = (vc * w_out[o]).sum(-1)
            ng = torch.bmm(w_out[neg], vc[:, :, None]).squeeze(-1)          # (b, negatives)
            loss = -(F.logsigmoid(pos) + F.logsigmoid(-ng).sum(-1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * c.numel()
        log.debug("skip-gram epoch %d: loss %.4f over %d pairs", ep + 1, total / max(1, P.shape[0]), P.shape[0])
    out = w_in.detach().clone()
    if ignore is not None:
        out[ignore] = 0.0
    return out
