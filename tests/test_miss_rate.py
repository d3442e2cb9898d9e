"""services.evaluate.miss_rate: the official CityPersons MR^-2, against the official script's numbers
on the real val ground truth, and on small hand-made cases whose answer is known."""
import json
import math
from pathlib import Path

import pytest

from services.evaluate import miss_rate

CITYPERSONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "citypersons"
REFERENCE = CITYPERSONS / "mr_reference"
needs_reference = pytest.mark.skipif(not (REFERENCE / "expected.json").is_file(),
                                     reason=f"miss-rate reference sets not found at {REFERENCE}")
REFERENCE_SETS = sorted(p.stem[len("dets_"):] for p in REFERENCE.glob("dets_*.json"))


@pytest.fixture(scope="module")
def val_gt():
    return json.loads((CITYPERSONS / "val_gt.json").read_text())


# ---- the official numbers ------------------------------------------------------------------------

@needs_reference
@pytest.mark.parametrize("name", REFERENCE_SETS or ["(none)"])
def test_matches_official_script(val_gt, name):
    expected = json.loads((REFERENCE / "expected.json").read_text())[name]
    dets = json.loads((REFERENCE / f"dets_{name}.json").read_text())
    assert len(dets) == expected["detections"]
    result = miss_rate.evaluate(val_gt, dets)
    assert set(result) == set(miss_rate.SETUPS) == set(expected["MR_percent"])
    for setup, percent in expected["MR_percent"].items():
        assert result[setup]["MR"] * 100 == pytest.approx(percent, abs=0.01), setup
        assert len(result[setup]["fppi"]) == len(result[setup]["miss_rate"]) > 0


# Speed (<= 0.7 s for the four setups on 500 images, the official script's 0.72 s) is a bar of
# benchmarks/eval_speed.py (`--miss-rate-only` for that figure alone), not a test.


# ---- hand-made cases -----------------------------------------------------------------------------

def ped(image_id, x, h=100, vis=1.0, ignore=0, y=100, w=None):
    """A ground-truth pedestrian (or, with ignore=1, an ignore region) at (x, y)."""
    w = round(0.41 * h) if w is None else w
    return {"image_id": image_id, "category_id": 1, "bbox": [x, y, w, h], "height": h,
            "vis_ratio": vis, "ignore": ignore}


def gt_of(n_images, *anns):
    anns = [{**a, "id": k + 1} for k, a in enumerate(anns)]
    return {"images": [{"id": i, "height": 1024, "width": 2048} for i in range(1, n_images + 1)],
            "annotations": anns, "categories": [{"id": 1, "name": "pedestrian"}]}


def det_on(a, score, dx=0.0):
    x, y, w, h = a["bbox"]
    return {"image_id": a["image_id"], "category_id": 1, "bbox": [x + dx, y, w, h], "score": score}


def lamr(recalls):
    """exp(mean(log(1 - recall))) over the nine FPPI points."""
    assert len(recalls) == 9
    return math.exp(sum(math.log(1 - r) for r in recalls) / 9)


def one_per_setup(image_id):
    """Pedestrians that every setup counts: 100 px visible (Reasonable, All), 60 px visible
    (Reasonable_small), 100 px 40 % visible (Reasonable_occ=heavy)."""
    return ped(image_id, 100), ped(image_id, 300, h=60), ped(image_id, 450, vis=0.4)


def test_fppi_counts_every_image_also_empty_ones():
    a, b, c = ped(1, 100), ped(1, 300), ped(2, 500)
    gt = gt_of(10, a, b, c)  # images 3..10 have no annotation and no detection
    stray = {"image_id": 7, "category_id": 1, "bbox": [900, 100, 41, 100], "score": 0.8}
    r = miss_rate.evaluate(gt, [det_on(b, 0.7), stray, det_on(a, 0.9)])["Reasonable"]
    assert r["fppi"] == [0.0, 0.1, 0.1]                        # 1 FP / 10 images
    assert r["miss_rate"] == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    # FPPI points 0.01 .. 0.0562 see recall 1/3, points 0.1 .. 1 see recall 2/3.
    assert r["MR"] == pytest.approx(lamr([1 / 3] * 4 + [2 / 3] * 5))


def test_detections_on_ignore_regions_only_are_neither_tp_nor_fp():
    region = ped(1, 600, h=200, w=200, ignore=1)
    rider = ped(2, 100, ignore=1)
    gt = gt_of(2, *one_per_setup(1), region, rider)
    # Inside the large region the IoU is only 0.1, but the official overlap with an ignored ground
    # truth is intersection / detection area (here 1), so the detection is absorbed.
    inside = {"image_id": 1, "category_id": 1, "bbox": [650, 150, 40, 100], "score": 0.9}
    result = miss_rate.evaluate(gt, [inside, det_on(rider, 0.8)])
    for setup in miss_rate.SETUPS:
        assert result[setup]["MR"] == 1.0, setup
        assert result[setup]["fppi"] == [], setup  # nothing counted: no FP
    # The same detection off the region is a false positive.
    outside = {**inside, "bbox": [1500, 150, 40, 100]}
    assert miss_rate.evaluate(gt, [outside])["Reasonable"]["fppi"] == [0.5]


def test_height_boundary_50px():
    short, tall = ped(1, 100, h=49), ped(1, 400, h=50)
    gt = gt_of(1, short, tall)
    # Only the 49 px one found: out of Reasonable's range, so its ground truth is ignored and the
    # detection falls on it (neither TP nor FP); the 50 px pedestrian is missed.
    r = miss_rate.evaluate(gt, [det_on(short, 0.9)])
    assert r["Reasonable"]["MR"] == 1.0 and r["Reasonable"]["fppi"] == []
    assert r["All"]["miss_rate"] == [0.5]                     # All counts from 20 px: 1 of 2
    # Only the 50 px one found: Reasonable has recall 1 at every FPPI point, MR 0 (the official
    # script takes log(1 - recall) with no floor).
    r = miss_rate.evaluate(gt, [det_on(tall, 0.9)])
    assert r["Reasonable"]["MR"] == 0.0 and r["Reasonable"]["miss_rate"] == [0.0]
    assert r["Reasonable_small"]["MR"] == 0.0                 # [50, 75] includes 50


def test_detection_height_filter():
    """Reasonable drops detections shorter than 50 / 1.25 = 40 px before matching."""
    gt = gt_of(1, ped(1, 100, h=100))
    low = {"image_id": 1, "category_id": 1, "bbox": [800, 100, 16, 39.9], "score": 0.9}
    r = miss_rate.evaluate(gt, [low])
    assert r["Reasonable"]["fppi"] == []                      # dropped, not a FP
    assert r["All"]["fppi"] == [1.0]                          # All keeps >= 16 px: a FP
    r = miss_rate.evaluate(gt, [{**low, "bbox": [800, 100, 16, 40]}])
    assert r["Reasonable"]["fppi"] == [1.0]


def test_duplicate_detection_is_a_false_positive():
    a, b = ped(1, 100), ped(2, 100)
    gt = gt_of(4, a, b)
    r = miss_rate.evaluate(gt, [det_on(a, 0.9), det_on(a, 0.8, dx=2), det_on(b, 0.7)])["Reasonable"]
    assert r["fppi"] == [0.0, 0.25, 0.25]
    assert r["miss_rate"] == [0.5, 0.5, 0.0]


def test_greedy_by_score_second_detection_takes_the_free_pedestrian():
    a, b = ped(1, 100), ped(1, 110)  # two overlapping pedestrians
    gt = gt_of(1, a, b)
    # Both detections lie best on `a`; the higher-scored one takes it, the other falls back to `b`.
    r = miss_rate.evaluate(gt, [det_on(a, 0.8, dx=1), det_on(a, 0.9)])["Reasonable"]
    assert r["miss_rate"] == [0.5, 0.0] and r["fppi"] == [0.0, 0.0]


def test_no_fppi_point_reached_takes_the_final_recall():
    """With one image the first FP already has FPPI 1: the official code then indexes recall[-1],
    the final recall, for the points below it; replicated."""
    a, b = ped(1, 100), ped(1, 400)
    gt = gt_of(1, a, b)
    stray = {"image_id": 1, "category_id": 1, "bbox": [900, 100, 41, 100], "score": 0.9}
    r = miss_rate.evaluate(gt, [stray, det_on(a, 0.5)])["Reasonable"]
    assert r["fppi"] == [1.0, 1.0]
    assert r["MR"] == pytest.approx(0.5)


def test_empty_detection_list_gives_mr_one():
    result = miss_rate.evaluate(gt_of(3, *one_per_setup(2)), [])
    assert {s: r["MR"] for s, r in result.items()} == {s: 1.0 for s in miss_rate.SETUPS}
    assert all(r["fppi"] == [] and r["miss_rate"] == [] for r in result.values())


def test_setup_without_pedestrians_gives_nan():
    result = miss_rate.evaluate(gt_of(1, ped(1, 100, vis=1.0)), [det_on(ped(1, 100), 0.9)])
    assert math.isnan(result["Reasonable_occ=heavy"]["MR"])  # no ground truth with vis in [0.2, 0.65]
    assert result["Reasonable"]["MR"] == 0.0


def test_unknown_image_id_is_refused():
    gt = gt_of(2, ped(1, 100))
    dets = [det_on(ped(1, 100), 0.9), det_on(ped(100, 100), 0.5), det_on(ped(17, 100), 0.4)]
    with pytest.raises(ValueError, match=r"2 image id\(s\) not in the ground truth: 17, 100"):
        miss_rate.evaluate(gt, dets)


def test_other_category_is_refused():
    gt = gt_of(1, ped(1, 100))
    with pytest.raises(ValueError, match="category id 2"):
        miss_rate.evaluate(gt, [{**det_on(ped(1, 100), 0.9), "category_id": 2}])
