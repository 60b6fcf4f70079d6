"""RIB (Zhou, Ding, Tang, Yin; WSDM 2018, "Micro behaviors: a new perspective in e-commerce
recommender systems"), as the MKM-SR paper uses it as a baseline (§2.1, §4.1.2).

* embedding layer: a micro-behaviour (item, operation) is [item embedding; operation
  embedding], the operation embeddings learned by word2vec (skip-gram) over the train split's
  operation sequences (``fit_statistics``) and kept fixed, as RIB pre-trains them;
* RNN layer: a GRU over the micro-behaviour sequence;
* attention layer: e_t = u^T tanh(W_a h_t + b_a), alpha = softmax over the real positions,
  s = sum_t alpha_t h_t;
* output layer: softmax over items, score(j) = s^T W_j + b_j.

(RIB also feeds dwell times; the JDATA Demo data has none.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.batching import Batch
from .base import OutputLayerModel
from .word2vec import train_skipgram


@dataclass
class RIBConfig:
    dim: int = 100              # item embedding and GRU hidden size
    op_dim: int = 100           # operation (word2vec) embedding size
    w2v_window: int = 5
    w2v_epochs: int = 5
    init_std: float = 0.1


class RIB(OutputLayerModel):
    Config = RIBConfig
    softmax_loss = True  # sr_loss: the full softmax over session_vectors . candidate_vectors

    def __init__(self, config: RIBConfig, spec):
        super().__init__(config, spec)
        d = config.dim
        self.embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.register_buffer("op_vectors", torch.zeros(spec.n_ops, config.op_dim))  # word2vec, fixed
        self.gru = nn.GRU(d + config.op_dim, d, batch_first=True)
        self.W_a = nn.Linear(d, d)
        self.u = nn.Linear(d, 1, bias=False)
        self.out = nn.Embedding(spec.n_items + 1, d)
        self.out_bias = nn.Parameter(torch.zeros(spec.n_items + 1))
        nn.init.normal_(self.embedding.weight, 0.0, config.init_std)
        nn.init.normal_(self.out.weight, 0.0, config.init_std)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def fit_statistics(self, data) -> None:
        tr = data.split("train")
        seed = int(torch.initial_seed()) % (2 ** 31)
        vec = train_skipgram(tr.ops.astype("int64"), tr.offsets, self.spec.n_ops, self.config.op_dim,
                             window=self.config.w2v_window, epochs=self.config.w2v_epochs, seed=seed)
        self.op_vectors = vec.to(self.op_vectors.device)

    def encode(self, batch: Batch) -> torch.Tensor:
        x = torch.cat([self.embedding(batch.items), self.op_vectors[batch.ops]], dim=-1)   # (B, L, d + op_dim)
        H, _ = self.gru(x)
        e = self.u(torch.tanh(self.W_a(H))).squeeze(-1).masked_fill(~batch.mask, float("-inf"))
        alpha = torch.softmax(e, dim=1)
        return torch.bmm(alpha[:, None, :], H).squeeze(1)

