"""Full-scale CityPersons conversion: the real .mat files, 3475 valid 2048x1024 placeholder PNGs.

    python benchmarks/dataset_convert.py [--shared ../shared/data/citypersons] [--repeat 3] [--check]

Times `python -m services.dataset --config configs/citypersons.yaml` end to end (interpreter start,
imports, conversion, writing) as a user runs it, and reports the bytes of image data copied and the
images converted. Bars: wall time <= 5 s, 0 bytes copied, every placeholder converted (the same
counts on every run). Exit code 1 if a bar is missed. `--check` (the tests' use) judges everything
but the time: the wall time is still printed, with its bar, but a busy machine cannot fail it, and its
placeholders are 1-bit (the stage decodes about 900 images in full: 15 ms each in RGB, 1 ms in 1-bit),
so that time is not the RGB figure either.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from the checkout (the project is not installed)
from tests.helpers import make_real_root  # noqa: E402  (the tests' own builder of a real-scale root)

BAR_SECONDS, BAR_BYTES = 5.0, 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data" / "citypersons"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--check", action="store_true", help="judge the outputs only, not the wall time")
    a = p.parse_args()
    if not (Path(a.shared) / "anno_train.mat").is_file():
        print(f"benchmark: no CityPersons annotations in {a.shared}; pass --shared DIR")
        return 2

    import io
    from PIL import Image
    buf = io.BytesIO()
    mode = "1" if a.check else "RGB"
    Image.new(mode, (2048, 1024)).save(buf, format="PNG")
    times, copied, stage_times, counts = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_real_root(Path(tmp), buf.getvalue(), Path(a.shared))
        n_png = sum(1 for _ in (root / "datasets/citypersons/raw/leftImg8bit").rglob("*.png"))
        for i in range(a.repeat):
            t0 = time.perf_counter()
            # CityPersons only: the experiment's COCO person set is another dataset, not benchmarked here
            proc = subprocess.run([sys.executable, "-m", "services.dataset", "--config",
                                   "configs/citypersons.yaml", "--force", "evaluate.sets=[val]"], cwd=ROOT,
                                  capture_output=True, text=True, env={**os.environ, "PIPELINE_ROOT": str(root)})
            times.append(time.perf_counter() - t0)
            if proc.returncode:
                print(proc.stdout + proc.stderr)
                return 1
            m = json.loads((root / "datasets/citypersons/yolo/manifest.json").read_text())
            copied.append(m["bytes_copied"])
            stage_times.append(m["wall_s"])
            counts.append({split: (c["images"], c["boxes"]) for split, c in m["counts"].items()})

    wall = statistics.median(times)
    fast, lean = wall <= BAR_SECONDS, max(copied) <= BAR_BYTES
    converted = sum(images for images, _ in counts[0].values())
    complete = converted == n_png and all(c == counts[0] for c in counts)
    print(f"placeholder PNGs: {n_png} (2048x1024, {mode}), cpus: {os.cpu_count()}, runs: {a.repeat}")
    print(f"wall time (median, whole command): {wall:.2f} s  [runs: {', '.join(f'{t:.2f}' for t in times)}]"
          f"  bar <= {BAR_SECONDS:.0f} s: {'ok' if fast else 'MISSED'}"
          + ("  (--check: not judged)" if a.check else ""))
    print(f"conversion inside the stage (median): {statistics.median(stage_times):.2f} s")
    print(f"bytes of image data copied: {max(copied)}  bar {BAR_BYTES}: {'ok' if lean else 'MISSED'}")
    print(f"images converted: {converted} of {n_png} "
          f"({', '.join(f'{split} {i} images {b} boxes' for split, (i, b) in counts[0].items())}), "
          f"the same on every run: {all(c == counts[0] for c in counts)}  bar: all, always: "
          f"{'ok' if complete else 'MISSED'}")
    return 0 if lean and complete and (fast or a.check) else 1


if __name__ == "__main__":
    sys.exit(main())
