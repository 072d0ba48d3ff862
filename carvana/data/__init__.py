"""Stage 1, data: a Kaggle-layout folder in, batches out.

In: ``train/`` (or ``train_hq/``) JPEGs, ``train_masks/`` GIFs, ``test/``, ``metadata.csv`` and
``sample_submission.csv`` (``kaggle``), or the embedded synthetic set in the same layout (``synthetic``).
Out: car-grouped folds (``folds``, written as the run's ``folds.csv``), uint8 image and mask tensors
(``datasets``) on the network's grid (``geometry``), and the ``CarvanaDataModule`` training uses. The second
level's inputs, images stacked with first-level out-of-fold maps, are made here too. ``check`` reports a
folder's problems one line per file (``carvana data check``); training runs its names-only half first.
"""
