"""Stage 3, prediction: run folders in, prediction folders of probability maps out.

In: checkpoints inside their run folders (each network is rebuilt from the run's ``.hydra/config.yaml``,
``checkpoints``) and a folder of images. Out: one 8-bit probability map per image at its original
resolution and a ``manifest.json`` (``carvana.runs``), written by ``map_writer`` from the averaged,
hflip-TTA'd networks of ``prediction_module``. ``inference`` is the ``predict.py`` task (test images),
``oof`` the out-of-fold pass of a run's validation cars and its scores.
"""
