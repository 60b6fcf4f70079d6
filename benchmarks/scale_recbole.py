"""RecBole 1.2.1's SRGNN under a wall-clock training budget, the peer of benchmarks/scale_train.py.
Runs in its own venv (.venv-recbole, see /work/shared/notes/recbole-peer.md), never imports mkmsr.

    .venv-recbole/bin/python benchmarks/scale_recbole.py --data DIR --threads 2 --budget-s 600

``DIR`` holds the atomic files scale_train.py writes from our prepared artifact (the same files as
benchmarks/speed_recbole.py reads: ``bench.{train,valid,test}.inter``, ``bench.item``). Training is
RecBole's own step (``model.calculate_loss``, its Adam, as ``Trainer._train_epoch`` does it, with
the same hyper-parameters as ours: d = 100, batch 128, lr 1e-3, L2 1e-5, one GNN step), batch after
batch, epoch after epoch, until ``--budget-s`` seconds of training have passed (checked after each
step, as our Trainer does; batching counts as training time, as in ours); then its full-sort ``evaluate`` on the validation file. Prints one JSON
line: samples/s, seconds per epoch (measured when an epoch finished, else extrapolated), validation
MRR@20 and Hit@20 in percent, peak resident memory.
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
    p.add_argument("--budget-s", type=float, required=True)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SRGNN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    torch.set_num_threads(a.threads)
    gpu = a.device.startswith("cuda")
    cfg = {
        "data_path": os.path.dirname(os.path.abspath(a.data)), "dataset": os.path.basename(os.path.abspath(a.data)),
        "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["session_id", "item_id_list", "item_id"], "item": ["item_id"]},
        "USER_ID_FIELD": "session_id", "ITEM_ID_FIELD": "item_id", "MAX_ITEM_LIST_LENGTH": a.max_len,
        "alias_of_item_id": ["item_id_list"],
        "embedding_size": a.dim, "step": 1, "loss_type": "CE", "train_neg_sample_args": None,
        "learning_rate": 1e-3, "weight_decay": 1e-5, "train_batch_size": a.batch_size,
        "eval_batch_size": a.eval_batch_size, "epochs": a.max_epochs,
        "eval_args": {"mode": "full", "order": "TO", "split": None, "group_by": None},
        "metrics": ["Hit", "MRR"], "topk": [20], "valid_metric": "MRR@20", "device": a.device, "use_gpu": gpu,
        "show_progress": False, "state": "ERROR", "seed": 0, "reproducibility": True, "worker": 0,
        "checkpoint_dir": os.path.join(os.path.abspath(a.data), "saved"),
    }
    config = Config(model="SRGNN", dataset=cfg["dataset"], config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    logging.getLogger().setLevel(logging.ERROR)
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    torch.set_num_threads(a.threads)  # RecBole's init_seed may reset it
    model = SRGNN(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    n_train = len(train_data.dataset)
    seen, epochs_done, epoch_seconds = 0, 0, []
    t_train = 0.0  # wall time of the training loop, batching included (as our Trainer counts it)
    out_of_time = False
    while epochs_done < a.max_epochs and not out_of_time:
        model.train()
        t_epoch = time.perf_counter()
        for interaction in train_data:  # Trainer._train_epoch's step, without its logging
            interaction = interaction.to(config["device"])
            trainer.optimizer.zero_grad()
            loss = model.calculate_loss(interaction)
            loss.backward()
            trainer.optimizer.step()
            seen += len(interaction)
            if t_train + time.perf_counter() - t_epoch >= a.budget_s:
                out_of_time = True
                break
        else:
            epochs_done += 1
            epoch_seconds.append(time.perf_counter() - t_epoch)
        t_train += time.perf_counter() - t_epoch
    sps = seen / t_train
    t0 = time.perf_counter()
    res = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    t_eval = time.perf_counter() - t0
    print(json.dumps({
        "config": "recbole-srgnn", "train_samples": n_train, "samples_seen": seen, "epochs": round(seen / n_train, 3),
        "train_seconds": round(t_train, 2), "train_samples_per_s": round(sps, 1),
        "epoch_seconds": round(epoch_seconds[0], 1) if epoch_seconds else round(n_train / sps, 1),
        "epoch_seconds_measured": bool(epoch_seconds),
        "valid": {"mrr@20": 100 * float(res["mrr@20"]), "hit@20": 100 * float(res["hit@20"])},
        "valid_samples": len(valid_data.dataset), "eval_seconds": round(t_eval, 2),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "n_items": int(dataset.item_num) - 1, "threads": torch.get_num_threads(), "device": a.device,
    }))


if __name__ == "__main__":
    main()
