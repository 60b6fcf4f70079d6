"""Item vectors composed from knowledge: an item's own embedding plus the mean embedding of its
attribute values (brand, shop, category, launch month...), shared by MKM-SR+ / MKM-SR-RN and
CORE-KG. A rare or never-trained item then shares what the items of the same brand or category
learned.
"""
from __future__ import annotations

import torch


class AttributeMean:
    """Mixin for a model with ``item_embedding`` (n_items + 1, d) and ``attr_embedding``
    (n_attribute_rows, d): call :meth:`_init_attribute_buffers` in ``__init__`` and
    :meth:`_fit_attributes` in ``fit_statistics``; :meth:`_attribute_matrix` is then the sparse
    (n_items + 1, n_attribute_rows) mean-of-attributes matrix (row 0, padding, and items without
    knowledge are empty)."""

    spec: object

    def _init_attribute_buffers(self) -> None:
        # (item_idx, attribute row, 1/#attributes of the item) for every knowledge triplet;
        # filled by _fit_attributes, sized by the checkpoint on load
        self.register_buffer("attr_item", torch.zeros(0, dtype=torch.long))
        self.register_buffer("attr_value", torch.zeros(0, dtype=torch.long))
        self.register_buffer("attr_weight", torch.zeros(0))

    def _fit_attributes(self, data) -> None:
        """The triplets (item, relation, value) of the prepared knowledge graph (``data.kg``,
        entity indices: values follow the items) as the three buffers."""
        kg = torch.from_numpy(data.kg.astype("int64"))
        heads = kg[:, 0]
        per_item = torch.bincount(heads, minlength=self.spec.n_items + 1).clamp(min=1)
        self.attr_item = heads.to(self.attr_item.device)
        self.attr_value = (kg[:, 2] - (self.spec.n_items + 1)).to(self.attr_item.device)
        self.attr_weight = (1.0 / per_item[heads].float()).to(self.attr_item.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the attribute buffers are data-sized: take the checkpoint's sizes before copying
        for name in ("attr_item", "attr_value", "attr_weight"):
            if prefix + name in state_dict and hasattr(self, name):
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _attribute_matrix(self) -> torch.Tensor:
        """The (n_items + 1, n_attribute_rows) sparse mean-of-attributes matrix, built from the
        buffers once per buffer instance (so a load or a device move rebuilds it)."""
        key = (self.attr_item.data_ptr(), self.attr_item.device, self.attr_item.numel())
        cache = getattr(self, "_attr_cache", None)
        if cache is None or cache[0] != key:
            idx = torch.stack([self.attr_item, self.attr_value])
            S = torch.sparse_coo_tensor(idx, self.attr_weight, (self.spec.n_items + 1, self.attr_embedding.num_embeddings),
                                        check_invariants=False).coalesce()
            self._attr_cache = cache = (key, S)
        return cache[1]
