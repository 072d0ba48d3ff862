"""Stage 4, submission: prediction folders in, what Kaggle and the next round of training take out.

In: prediction folders (``carvana.runs``). Out: combined folders (``ensemble``), cleaned masks
(``postprocess``), Kaggle's run-length encoding (``rle``), ``submission.csv`` written and checked
(``submission``), and pseudo-labelled training folders in the Kaggle layout (``pseudo``).
"""
