"""Items and splits: hash-derived seeds (``seeding``), deterministic disjoint fingerprinted splits
(``splits``) and the data spec that names them (``spec``)."""
