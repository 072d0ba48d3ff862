"""The ``carvana`` console command: the tools users run by hand, one subcommand each.

    carvana report outputs
    carvana ensemble predictions/blend predictions/a predictions/b --weights 2 1
    carvana submission check submission.csv --sample data/carvana/sample_submission.csv

Each subcommand is its stage module's own ``main`` (``python -m carvana.submit.ensemble`` runs the same),
imported only when called, so ``carvana --help`` starts at once. Training and prediction have their Hydra
entry points, ``train.py`` and ``predict.py``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from carvana import __version__

# subcommand -> (module with a main(argv) -> int, one line of help)
COMMANDS = {
    "synthetic": ("carvana.data.synthetic", "write the embedded synthetic dataset in Kaggle's layout"),
    "data": ("carvana.data.check", "check ROOT: the problems of a Kaggle-layout folder, one line each"),
    "oof": ("carvana.predict.oof", "predict and score the out-of-fold maps of run folders"),
    "export-png": ("carvana.predict.export", "PNG copies of a prediction folder's maps, to look at"),
    "ensemble": ("carvana.submit.ensemble", "combine prediction folders (weighted mean or vote)"),
    "postprocess": ("carvana.submit.postprocess", "measure post-processing steps on out-of-fold maps"),
    "submission": ("carvana.submit.submission", "write or check a Kaggle submission file"),
    "pseudo": ("carvana.submit.pseudo", "turn confident test maps into pseudo-labelled training pairs"),
    "report": ("carvana.evaluate.cv_report", "the cross-validation table of a folder of runs"),
    "lb": ("carvana.evaluate.leaderboard", "record a submission's Kaggle score beside its experiment's CV"),
    "select": ("carvana.evaluate.selection", "ensemble weights, threshold, post-processing chosen on OOF"),
    "refine": ("carvana.evaluate.second_level", "the second level's OOF Dice against its sources' mean"),
    "status": ("carvana.evaluate.status", "every fold, prediction folder and submission: done, running..."),
    "gallery": ("carvana.evaluate.gallery", "the K lowest-Dice images of a prediction folder, drawn"),
}


def main(argv: list[str] | None = None) -> int:
    """``carvana COMMAND [ARGS...]``; ``carvana COMMAND --help`` for a command's own options."""
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="carvana",
        description="Tools of the Carvana pipeline; train.py and predict.py train and predict.",
        epilog=f"commands:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"carvana {__version__}")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's arguments")
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return module.main(args.args)


if __name__ == "__main__":
    sys.exit(main())
