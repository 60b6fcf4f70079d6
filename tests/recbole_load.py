"""Load atomic files with RecBole 1.2.1 and print what it read as one JSON line.

Run with the RecBole peer's interpreter (.venv-recbole, scripts/setup_recbole.sh); never imports
mkmsr. Used by tests/test_recbole_files.py:

    .venv-recbole/bin/python tests/recbole_load.py --path DIR --dataset NAME

Two loads: ``NAME.inter`` + ``NAME.item`` as a general dataset (every event, its fields and
item features), and the per-split files ``NAME.{train,valid,test}.inter`` as the session-based
benchmark setting of SRGNN (``benchmark_filename``), through ``data_preparation``: every
sample (session, prefix, target) of every split as RecBole holds it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def values(col):
    """A field's values as a numpy array (a pandas column before ``build()``, a tensor after)."""
    return col.numpy() if hasattr(col, "numpy") else col.to_numpy()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--path", required=True, help="folder holding NAME.inter, NAME.item, ...")
    p.add_argument("--dataset", required=True)
    p.add_argument("--item-fields", default="", help="comma-separated fields of NAME.item to load")
    a = p.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config parses the command line itself

    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    logging.getLogger().setLevel(logging.ERROR)
    item_fields = [f for f in a.item_fields.split(",") if f]
    # RecBole reads data_path/NAME/NAME.inter: the folder must be named after the dataset
    if os.path.basename(os.path.abspath(a.path)) != a.dataset:
        sys.exit(f"{a.path}: RecBole needs the folder to be named {a.dataset}")
    base = {"data_path": os.path.dirname(os.path.abspath(a.path)), "dataset": a.dataset, "USER_ID_FIELD": "session_id",
            "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp", "device": "cpu", "use_gpu": False,
            "show_progress": False, "state": "ERROR", "seed": 0, "worker": 0,
            "checkpoint_dir": os.path.join(os.path.abspath(a.path), "saved"), "save_dataset": False,
            "save_dataloaders": False}
    # 1. the events file as a general (non-sequential) dataset: every row, every field
    cfg = {**base, "load_col": {"inter": ["session_id", "item_id", "timestamp", "operation"],
                                "item": ["item_id", *item_fields]},
           "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "mode": "full", "group_by": "user"}}
    ds = create_dataset(Config(model="Pop", dataset=a.dataset, config_dict=cfg))
    inter = ds.inter_feat
    sid, iid, op = (ds.id2token(f, values(inter[f])) for f in ("session_id", "item_id", "operation"))
    sessions: dict[str, list] = {}
    for s, i, o, t in zip(sid, iid, op, values(inter["timestamp"])):
        sessions.setdefault(str(s), []).append((str(i), str(o), float(t)))
    for evs in sessions.values():  # RecBole's rows sorted by time within each session
        evs.sort(key=lambda e: e[2])
    item_feat = ds.item_feat
    features = {}
    items = ds.id2token("item_id", values(item_feat["item_id"]).astype("int64"))
    for f in item_fields:
        if ds.field2type[f].value != "token":  # token_seq: not compared here
            continue
        tokens = ds.id2token(f, values(item_feat[f]).astype("int64"))  # 0 (float after fillna) = [PAD]
        features[f] = {str(i): str(v) for i, v in zip(items, tokens) if str(v) != "[PAD]"}
    general = {"inter_num": int(ds.inter_num), "session_num": int(ds.user_num) - 1,
               "item_num": int(ds.item_num) - 1, "fields": sorted(ds.field2type),
               "sessions": {s: [[i, o] for i, o, _ in evs] for s, evs in sessions.items()},
               "item_features": features}

    # 2. the per-split sample files: RecBole's session-based benchmark setting (SRGNN)
    cfg = {**base, "benchmark_filename": ["train", "valid", "test"],
           "load_col": {"inter": ["session_id", "item_id_list", "item_id"], "item": ["item_id"]},
           "alias_of_item_id": ["item_id_list"],  # one id space for prefixes and targets
           "MAX_ITEM_LIST_LENGTH": 1000, "train_neg_sample_args": None, "loss_type": "CE",
           "eval_args": {"mode": "full", "order": "TO", "split": None, "group_by": None}}
    config = Config(model="SRGNN", dataset=a.dataset, config_dict=cfg)
    ds2 = create_dataset(config)
    train, valid, test = data_preparation(config, ds2)
    splits = {"train": len(train.dataset), "valid": len(valid.dataset), "test": len(test.dataset),
              "item_num": int(ds2.item_num) - 1}
    for name, loader in (("train", train), ("valid", valid), ("test", test)):
        feat = loader.dataset.inter_feat
        sess = ds2.id2token("session_id", feat["session_id"].numpy())
        target = ds2.id2token("item_id", feat["item_id"].numpy())
        lists, lens = feat["item_id_list"].numpy(), feat["item_length"].numpy()
        splits[f"{name}_samples"] = sorted(
            [str(s), [str(x) for x in ds2.id2token("item_id", lst[:n])], str(t)]
            for s, lst, n, t in zip(sess, lists, lens, target))
    print(json.dumps({"general": general, "benchmark": splits}))


if __name__ == "__main__":
    main()
