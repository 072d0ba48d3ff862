"""Stage 2, training: a composed config and a data module in, a run folder out.

In: the ``train.py`` config (``conf/train.yaml`` and its groups) and ``carvana.data``'s data module.
Out: ``<output_root>/<name>/fold<k>/`` with ``checkpoints/{best,last}.ckpt``, ``folds.csv``,
``fold_score.json``, the W&B run, and (through the ``oof`` config node, which names the prediction stage)
the fold's out-of-fold maps. ``fit`` is the task; ``segmentation_module`` the LightningModule; ``losses``,
``schedules``, ``callbacks``, ``loggers`` and ``distributed`` what it is built from.
"""
