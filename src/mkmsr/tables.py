"""Plain aligned text tables, as the command line and the demo print them."""
from __future__ import annotations

METRIC_COLUMNS = [("hit@5", "Hit@5"), ("hit@10", "Hit@10"), ("hit@20", "Hit@20"), ("mrr@5", "MRR@5"),
                  ("mrr@10", "MRR@10"), ("mrr@20", "MRR@20"), ("ndcg@20", "NDCG@20"), ("samples", "samples")]


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain aligned text table; ``columns`` = [(key, header)]. Floats get 2 decimals."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.2f}"
        return "" if v is None else str(v)
    body = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(b) for b in body])
