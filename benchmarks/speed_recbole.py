"""RecBole 1.2.1's SRGNN as a peer in benchmarks/speed.py. Runs in its own venv (.venv-recbole,
see /work/shared/notes/recbole-peer.md), never imports mkmsr.

    .venv-recbole/bin/python benchmarks/speed_recbole.py --data DIR --threads 2 --epochs 1

``DIR`` holds RecBole atomic files written by speed.py from one of our prepared artifacts:
``bench.{train,valid,test}.inter`` (session_id:token, item_id_list:token_seq, item_id:token; one
prefix -> next-item sample per line, the same samples our trainer sees) and ``bench.item``
(every catalogue item, so that RecBole ranks the same catalogue). Prints one JSON line:
training samples/s over ``--epochs`` epochs (RecBole's own ``_train_epoch``), evaluation samples/s
(its full-sort ``evaluate`` on the test file) and the peak resident memory of this process.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole pickles whole dicts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--max-len", type=int, default=50)
    a = p.parse_args()

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SRGNN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    torch.set_num_threads(a.threads)
    cfg = {
        "data_path": os.path.dirname(os.path.abspath(a.data)), "dataset": os.path.basename(os.path.abspath(a.data)),
        "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["session_id", "item_id_list", "item_id"], "item": ["item_id"]},
        "USER_ID_FIELD": "session_id", "ITEM_ID_FIELD": "item_id", "MAX_ITEM_LIST_LENGTH": a.max_len,
        # without it RecBole maps item_id_list tokens to ids of their own, unrelated to item_id's
        "alias_of_item_id": ["item_id_list"],
        "embedding_size": a.dim, "step": 1, "loss_type": "CE", "train_neg_sample_args": None,
        "learning_rate": 1e-3, "weight_decay": 1e-5, "train_batch_size": a.batch_size,
        "eval_batch_size": a.eval_batch_size, "epochs": a.epochs, "eval_args": {"mode": "full", "order": "TO",
                                                                                "split": None, "group_by": None},
        "metrics": ["Hit", "MRR"], "topk": [20], "valid_metric": "MRR@20", "device": "cpu", "use_gpu": False,
        "show_progress": False, "state": "ERROR", "seed": 0, "reproducibility": True, "worker": 0,
        "checkpoint_dir": os.path.join(os.path.abspath(a.data), "saved"),
    }
    config = Config(model="SRGNN", dataset=cfg["dataset"], config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    logging.getLogger().setLevel(logging.ERROR)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    torch.set_num_threads(a.threads)  # RecBole's init_seed may reset it
    model = SRGNN(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    n_train = len(train_data.dataset)
    t0 = time.perf_counter()
    losses = [trainer._train_epoch(train_data, e, show_progress=False) for e in range(a.epochs)]
    t_train = time.perf_counter() - t0
    n_test = len(test_data.dataset)
    t0 = time.perf_counter()
    res = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    t_eval = time.perf_counter() - t0
    print(json.dumps({
        "model": "recbole-srgnn", "train_samples": n_train, "train_seconds": round(t_train, 2),
        "train_samples_per_s": round(a.epochs * n_train / t_train, 1),
        "eval_samples": n_test, "eval_seconds": round(t_eval, 2), "eval_samples_per_s": round(n_test / t_eval, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "n_items": int(dataset.item_num), "threads": torch.get_num_threads(),
        "loss": [float(x) for x in losses], "test": {k: float(v) for k, v in res.items()},
    }))


if __name__ == "__main__":
    main()
