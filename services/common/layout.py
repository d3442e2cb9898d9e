"""Every file an experiment's stages write, named once. A stage, the report, predict, the sweep and
the tests ask this module where a thing is; no artifact's file name is spelled anywhere else.

artifacts/<exp>/
  weights/best.pt, last.pt                   the training stage's chosen and last checkpoints
  train/manifest.json                        the training stage's manifest
  models/<exp>.onnx                          the standard-head ONNX (export)
  models/<exp>.rknn-head.onnx                the ONNX the RKNN model is built from (export)
  models/manifest.json                       the export stage's manifest
  models/<exp>_<dtype>_<platform>.rknn       the RKNN model, and <stem>.manifest.json beside it
  metrics/<format>.json, <format>.<set>.detections.json, summary.md, export.json, quantization.json
  rknn/                                      the toolkit's log, calibration and analysis inputs
  board/                                     the bundle for the board (board/bundle.json: what it holds)
  board-reports/*.json                       detect.py's board_report.json, copied back from the board
                                             (one per --cores setting); the report reads them
  predict/<format>/                          drawn detections
  report/                                    the report of this experiment (or sweep)
runs/<exp>/train/                            ultralytics' run folder (TensorBoard reads runs/)
"""
from dataclasses import dataclass
from pathlib import Path

from . import paths


@dataclass(frozen=True)
class Experiment:
    name: str
    root: Path = paths.ROOT

    @classmethod
    def of(cls, cfg: dict, root: Path = paths.ROOT) -> "Experiment":
        return cls(cfg["experiment"], Path(root))

    @property
    def artifacts(self) -> Path:
        return paths.artifacts_dir(self.name, self.root)

    @property
    def weights(self) -> Path:
        return self.artifacts / "weights"

    @property
    def best(self) -> Path:
        return self.weights / "best.pt"

    @property
    def train_manifest(self) -> Path:
        return self.artifacts / "train" / "manifest.json"

    @property
    def models(self) -> Path:
        return self.artifacts / "models"

    @property
    def onnx(self) -> Path:
        return self.models / f"{self.name}.onnx"

    @property
    def rknn_head_onnx(self) -> Path:
        return self.models / f"{self.name}.rknn-head.onnx"

    @property
    def export_manifest(self) -> Path:
        return self.models / "manifest.json"

    def rknn(self, convert: dict) -> Path:
        """The RKNN model the convert section `convert` builds."""
        return self.models / f"{self.name}_{convert['dtype']}_{convert['platform']}.rknn"

    @staticmethod
    def manifest_of(model: Path) -> Path:
        return model.with_name(f"{model.stem}.manifest.json")

    @property
    def metrics(self) -> Path:
        return self.artifacts / "metrics"

    def metrics_of(self, fmt: str) -> Path:
        return self.metrics / f"{fmt}.json"

    def detections(self, fmt: str, set_name: str) -> Path:
        return self.metrics / f"{fmt}.{set_name}.detections.json"

    @property
    def summary(self) -> Path:
        return self.metrics / "summary.md"

    @property
    def export_parity(self) -> Path:
        return self.metrics / "export.json"

    @property
    def quantization(self) -> Path:
        return self.metrics / "quantization.json"

    @property
    def toolkit_work(self) -> Path:
        return self.artifacts / "rknn"

    def calibration_copies(self, size: tuple[int, int], tiles: int = 1, overlap: float = 0.0) -> Path:
        """The calibration images letterboxed to one input size (and tiling), cached for the next build;
        <this>.txt beside it is the list the toolkit reads."""
        name = f"calib-{size[0]}x{size[1]}" + (f"-tiles{tiles}-overlap{overlap:g}" if tiles > 1 else "")
        return self.toolkit_work / name

    @property
    def board(self) -> Path:
        return self.artifacts / "board"

    @property
    def bundle_manifest(self) -> Path:
        return self.board / "bundle.json"

    @property
    def board_reports(self) -> Path:
        # beside the bundle, not inside it: the next conversion moves a bundle folder holding files
        # it did not write aside, and the measurements would go with it
        return self.artifacts / "board-reports"

    def predict(self, fmt: str) -> Path:
        return self.artifacts / "predict" / fmt

    @property
    def report(self) -> Path:
        return self.artifacts / "report"

    @property
    def run_dir(self) -> Path:
        return paths.runs_dir(self.name, self.root) / "train"
