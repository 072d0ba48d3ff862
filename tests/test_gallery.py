"""``carvana gallery``: the K lowest-Dice images of a constructed OOF folder, drawn, listed and logged."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from wandb_records import records

from carvana import runs
from carvana.errors import CarvanaError
from carvana.evaluate.gallery import FALSE_NEGATIVE, FALSE_POSITIVE, SHEET_GAP, gallery, main

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 64, 96
TOP, BOTTOM, LEFT, RIGHT = 36, 60, 20, 76  # the car: clear of the labels in the top-left corner
# image id -> (columns of false positives right of the car, columns of false negatives at its left)
ERRORS = {
    "aaaaaaaaaaaa_01": (5, 0),
    "aaaaaaaaaaaa_02": (0, 0),
    "aaaaaaaaaaaa_03": (0, 9),
    "bbbbbbbbbbbb_01": (2, 1),
    "bbbbbbbbbbbb_07": (8, 3),
    "bbbbbbbbbbbb_16": (1, 0),
    "cccccccccccc_05": (0, 4),
    "cccccccccccc_12": (3, 6),
}
METADATA = [
    '"id","year","make","model","trim1","trim2"',
    '"aaaaaaaaaaaa","2014","Acura","TL","TL","w/SE"',
    '"bbbbbbbbbbbb","2016","Ford","Transit","Transit","250 Van"',
    '"cccccccccccc","2011","Mini","Cooper","Cooper","S"',
]


def truth_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[TOP:BOTTOM, LEFT:RIGHT] = 1
    return mask


def expected_dice(fp_cols: int, fn_cols: int) -> float:
    """Dice by hand: the car is (BOTTOM - TOP) rows high; each error column is one such column of pixels."""
    rows, car = BOTTOM - TOP, (RIGHT - LEFT) * (BOTTOM - TOP)
    hit = car - rows * fn_cols
    return 2 * hit / (car + car + rows * (fp_cols - fn_cols))


def write_gif(path: Path, mask: np.ndarray) -> None:
    """A one-frame palette GIF in {0, 1}, as Kaggle's masks."""
    gif = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    gif.putpalette([0, 0, 0] * 255 + [255, 255, 255])
    gif.save(path, format="GIF", optimize=False)


@pytest.fixture
def case(tmp_path) -> tuple[Path, Path]:
    """A Kaggle-layout folder of 8 photos with masks and metadata, and a run's ``oof/`` of 8 maps whose
    errors (``ERRORS``) give known Dice; returns (oof folder, masks folder)."""
    root, oof = tmp_path / "kaggle", tmp_path / "outputs" / "unet" / "fold0" / runs.OOF
    for sub in ("train", "train_masks"):
        (root / sub).mkdir(parents=True)
    (root / "metadata.csv").write_text("\n".join(METADATA) + "\n")
    rng = np.random.default_rng(0)
    for image_id, (fp_cols, fn_cols) in ERRORS.items():
        truth = truth_mask()
        write_gif(root / "train_masks" / f"{image_id}_mask.gif", truth)
        photo = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        assert cv2.imwrite(str(root / "train" / f"{image_id}.jpg"), photo)
        prob = np.full((HEIGHT, WIDTH), 127, np.uint8)  # just under the 0.5 cutoff: background
        prob[TOP:BOTTOM, LEFT + fn_cols : RIGHT + fp_cols] = 200
        runs.write_map(oof, image_id, prob)
    return oof, root / "train_masks"


def ranked() -> list[str]:
    return sorted(ERRORS, key=lambda image_id: (expected_dice(*ERRORS[image_id]), image_id))


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_k_lowest_dice_are_drawn_listed_and_sheeted(case):
    oof, masks = case
    worst, sheet_path, source = gallery(oof, masks, k=3, workers=1)

    assert (
        [w.image_id for w in worst]
        == ranked()[:3]
        == ["bbbbbbbbbbbb_07", "aaaaaaaaaaaa_03", "cccccccccccc_12"]
    )
    assert [w.rank for w in worst] == [1, 2, 3]
    assert source.startswith("of 8 maps scored")
    out = oof.parent / runs.OOF_WORST
    assert sheet_path == oof.parent / "oof_worst.png" and out == oof.parent / "oof_worst"
    assert sorted(path.name for path in out.iterdir()) == [
        "1_bbbbbbbbbbbb_07.png",
        "2_aaaaaaaaaaaa_03.png",
        "3_cccccccccccc_12.png",
        "worst.csv",
    ]
    rows_per_col = BOTTOM - TOP
    for w in worst:
        fp_cols, fn_cols = ERRORS[w.image_id]
        assert w.dice == pytest.approx(expected_dice(fp_cols, fn_cols), abs=1e-12)
        assert (w.fp, w.fn) == (rows_per_col * fp_cols, rows_per_col * fn_cols)
        overlay = cv2.imread(str(w.overlay), cv2.IMREAD_COLOR_RGB)
        assert overlay.shape == (HEIGHT, WIDTH, 3)  # a small photo is never enlarged
        assert np.count_nonzero((overlay == FALSE_POSITIVE).all(axis=-1)) == w.fp
        assert np.count_nonzero((overlay == FALSE_NEGATIVE).all(axis=-1)) == w.fn

    sheet = cv2.imread(str(sheet_path), cv2.IMREAD_COLOR_RGB)
    assert sheet.shape == (HEIGHT, 3 * WIDTH + 2 * SHEET_GAP, 3)  # 3 tiles in one row
    first_tile = sheet[:, :WIDTH]
    assert np.count_nonzero((first_tile == FALSE_NEGATIVE).all(axis=-1)) == worst[0].fn  # exact colours

    listed = rows(out / runs.WORST_LIST)
    assert [row["image_id"] for row in listed] == ranked()[:3]
    van = listed[0]  # the worst, as its row says
    assert van == {
        "rank": "1",
        "image_id": "bbbbbbbbbbbb_07",
        "car": "bbbbbbbbbbbb",
        "angle": "07",
        "dice": f"{expected_dice(8, 3):.6f}",
        "fp_pixels": str(8 * rows_per_col),
        "fn_pixels": str(3 * rows_per_col),
        "make": "Ford",
        "model": "Transit",
        "year": "2016",
        "overlay": "1_bbbbbbbbbbbb_07.png",
    }


def test_a_smaller_gallery_replaces_the_last_one_and_keeps_other_files(case):
    oof, masks = case
    gallery(oof, masks, k=8, workers=1)
    out = oof.parent / runs.OOF_WORST
    (out / "notes.png").write_bytes(b"mine")
    worst, _, _ = gallery(oof, masks, k=2, workers=1, out_dir=out)
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [w.overlay.name for w in worst] + ["notes.png", runs.WORST_LIST]
    )
    assert [row["image_id"] for row in rows(out / runs.WORST_LIST)] == ranked()[:2]


def test_any_prediction_folder_gets_a_gallery_beside_it(case, tmp_path):
    oof, masks = case
    blend = tmp_path / "predictions" / "blend"
    blend.mkdir(parents=True)
    for path in oof.glob("*.zst"):
        (blend / path.name).write_bytes(path.read_bytes())
    (masks.parent / "metadata.csv").unlink()  # optional: the car columns stay empty
    worst, sheet_path, _ = gallery(blend, masks, k=20, images_dir=masks.parent / "train", workers=1)
    assert [w.image_id for w in worst] == ranked()  # k beyond the folder: all of it
    assert sheet_path == tmp_path / "predictions" / "blend_worst.png"
    assert cv2.imread(str(sheet_path)).shape == (2 * HEIGHT + SHEET_GAP, 4 * WIDTH + 3 * SHEET_GAP, 3)
    listed = rows(tmp_path / "predictions" / "blend_worst" / runs.WORST_LIST)
    assert len(listed) == 8 and {(row["make"], row["model"], row["year"]) for row in listed} == {("", "", "")}


def test_the_run_scores_are_used_and_checked(case):
    oof, masks = case
    score_path = oof.parent / runs.OOF_SCORE
    per_image = {image_id: expected_dice(*errors) for image_id, errors in ERRORS.items()}
    record = {"fold": 0, "dice": float(np.mean(list(per_image.values()))), "threshold": 0.5}
    runs.write_json(score_path, {**record, "per_image": per_image})
    worst, _, source = gallery(oof, masks, k=2, workers=1)
    assert [w.image_id for w in worst] == ranked()[:2] and str(score_path) in source

    # scored at another threshold: the maps are scored instead
    runs.write_json(score_path, {**record, "threshold": 0.3, "per_image": {**per_image, ranked()[-1]: 0.0}})
    assert [w.image_id for w in gallery(oof, masks, k=1, workers=1)[0]] == ranked()[:1]

    # stale: an image it calls the worst scores otherwise now
    runs.write_json(score_path, {**record, "per_image": {**per_image, ranked()[-1]: 0.0}})
    with pytest.raises(CarvanaError, match=rf"{score_path}: {ranked()[-1]} has Dice 0\.000000 there"):
        gallery(oof, masks, k=1, workers=1)
    runs.write_json(score_path, {**record, "per_image": {**per_image, ranked()[-1]: "n/a"}})
    with pytest.raises(CarvanaError, match=f"{score_path}: a per_image entry is not a Dice"):
        gallery(oof, masks, k=1, workers=1)


def test_cli_in_a_subprocess_with_workers_and_wandb(case, tmp_path):
    oof, masks = case
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "carvana", "gallery", str(oof), str(masks), "-k", "4", "--workers", "2"]
    done = subprocess.run([*command, "--wandb"], cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "the 4 lowest-Dice images (of 8 maps scored):"
    assert lines[1] == (
        "rank  image_id         car           angle  dice      fp_pixels  fn_pixels  make   model    year"
    )
    assert [line.split()[1] for line in lines[2:6]] == ranked()[:4]
    assert lines[2].split()[-3:] == ["Ford", "Transit", "2016"] and lines[3].split()[-2:] == ["TL", "2014"]
    assert f"  sheet    {oof.parent / 'oof_worst.png'}" in lines

    (log,) = (oof.parent / runs.OOF_WORST).glob("wandb/offline-run-*/run-*.wandb")
    logged = records(log)
    (table,) = [r.artifact for r in logged if r.WhichOneof("record_type") == "artifact"]
    assert table.type == "run_table"
    images = sorted(Path(entry.path).name for entry in table.manifest.contents if entry.path.endswith(".png"))
    assert images == sorted(f"{rank}_{image_id}.png" for rank, image_id in enumerate(ranked()[:4], 1))
    history = {
        "/".join(item.nested_key): json.loads(item.value_json)
        for r in logged
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
    }
    assert history["gallery/worst/nrows"] == 4 and history["gallery/sheet/_type"] == "image-file"


def test_bad_input_is_one_line_naming_the_file(case, tmp_path, capsys):
    oof, masks = case
    assert main([str(oof), str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"error: masks folder {tmp_path / 'missing'} does not exist\n"

    with pytest.raises(CarvanaError, match="-k must be >= 1"):
        gallery(oof, masks, k=0)
    bad = tmp_path / "bad.csv"
    bad.write_text('"car","make"\n"aaaaaaaaaaaa","Acura"\n')
    with pytest.raises(CarvanaError, match=f"{bad}: no id column"):
        gallery(oof, masks, metadata=bad)

    (masks.parent / "train" / f"{ranked()[1]}.jpg").unlink()
    assert main([str(oof), str(masks), "-k", "2", "--workers", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("scoring ")]
    assert errors == [f"error: {masks.parent / 'train' / ranked()[1]}.jpg: no image; 1 missing"]

    runs.write_map(oof, ranked()[0], np.zeros((HEIGHT, WIDTH + 1), np.uint8))  # scored first: from the maps
    assert main([str(oof), str(masks), "--workers", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("scoring ")]
    assert len(errors) == 1 and str(runs.map_path(oof, ranked()[0])) in errors[0]
    assert "expected 96x64" in errors[0]


def test_the_sheet_of_16_real_photos_fits_a_readme(shared_small512, tmp_path):
    """16 real 512x512 photos whose maps miss by a few pixels: a README can embed their sheet (< 500 kB)."""
    masks = sorted((shared_small512 / "train_masks").glob("*_mask.gif"))[:16]
    oof = tmp_path / "fold0" / runs.OOF
    for shift, gif in enumerate(masks, 1):
        truth = np.asarray(Image.open(gif), np.uint8) * 255
        runs.write_map(oof, gif.name.removesuffix("_mask.gif"), np.roll(truth, shift, axis=1))
    worst, sheet_path, _ = gallery(oof, shared_small512 / "train_masks", k=16, workers=1)
    assert len(worst) == 16 and worst[0].dice < worst[-1].dice
    assert cv2.imread(str(sheet_path)).shape == (4 * 256 + 3 * SHEET_GAP, 4 * 256 + 3 * SHEET_GAP, 3)
    assert sheet_path.stat().st_size < 500_000
    assert cv2.imread(str(worst[0].overlay)).shape == (512, 512, 3)
