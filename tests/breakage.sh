#!/usr/bin/env bash
# Deliberate breakages (tests/PROMISES.md): each applied alone to a scratch worktree of a commit, the
# test named beside it must FAIL, and PASS once the code is restored. A weak test shows as PASSES.
# Needs the environments `make test` builds (.venv/). About 15 minutes; not part of `make test`.
#   bash tests/breakage.sh [commit]      # default HEAD; the table goes to stdout
#   ONLY="6 14" bash tests/breakage.sh   # only those rows
set -u
root=$(git rev-parse --show-toplevel)
commit=${1:-HEAD}
scratch=$(mktemp -d /tmp/breakage-XXXX)
wt=$scratch/main
[ -d "$root/../shared" ] && ln -s "$(cd "$root/.." && pwd)/shared" "$scratch/shared"  # ../shared, as in CI
git -C "$root" worktree add -q --detach "$wt" "$commit"
trap 'git -C "$root" worktree remove --force "$wt"' EXIT
cd "$wt"
export PIPELINE_VENV=$root/.venv CI=1
py=$root/.venv/train/bin/python
out=$scratch/table.md
logs=$scratch/logs; mkdir -p "$logs"
echo "| # | breakage | test | with breakage | restored |" > $out
echo "|---|---|---|---|---|" >> $out
n=0
check() {  # file, python-replace-old, new, test, label
  n=$((n+1))
  local f=$1 old=$2 new=$3 test=$4 label=$5
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $n "* ]] && return
  $py - "$f" "$old" "$new" <<'PY'
import sys; from pathlib import Path
p, old, new = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
s = p.read_text(); assert old in s, (p, old); p.write_text(s.replace(old, new, 1))
PY
  timeout 900 $py -m pytest -q -x -p no:cacheprovider -p no:xdist "$test" > $logs/$n-broken.log 2>&1; broken=$?
  git checkout -q -- "$f"
  timeout 900 $py -m pytest -q -x -p no:cacheprovider -p no:xdist "$test" > $logs/$n-restored.log 2>&1; ok=$?
  # a skip proves nothing either way: it is reported as such
  b=$(grep -q " skipped" "$logs/$n-broken.log" && echo "**skipped**" || { [ $broken -ne 0 ] && echo "fails" || echo "**PASSES (weak)**"; })
  o=$(grep -q " skipped" "$logs/$n-restored.log" && echo "**skipped**" || { [ $ok -eq 0 ] && echo "passes" || echo "**fails**"; })
  echo "| $n | $label | \`$test\` | $b | $o |" >> $out
}
check services/run/runner.py "h.update((ROOT / f).read_bytes())" "h.update(f.encode())" \
  "tests/test_run.py::test_image_tags_follow_the_code" "image tag hashes the file names only, not their bytes"
check services/run/runner.py 'print(f"runner: error: {e}", file=sys.stderr)
        return 2' 'print(f"runner: error: {e}", file=sys.stderr)
        raise' "tests/test_run.py::test_make_passes_unknown_words_to_the_runner" "runner: its error line, then a traceback (exit 1)"
check services/common/log.py '        print(f"{stage}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)' '        print(f"{stage}: error: {e}", file=sys.stderr, flush=True)
        import traceback; traceback.print_exc()
        raise SystemExit(2)' "tests/test_make.py::test_make_dataset_offline_lists_what_to_fetch_and_touches_no_network" "a stage's error line followed by a traceback (exit still 2)"
check services/board/detect.py 'frame.ms["end_to_end"] = (time.perf_counter() - frame.started) * 1000' 'frame.ms["end_to_end"] = (time.perf_counter() - frame.started)' \
  "tests/test_board_runtime.py::test_three_contexts_give_the_detections_of_one_in_frame_order" "board: end-to-end latency in seconds labelled ms"
check services/fit/fit.py "need > have:" "need > 100 * have:" \
  "tests/test_faults.py::test_a_ram_cache_that_will_not_fit_is_refused_with_the_estimate" "RAM cache check 100x too lenient"
check benchmarks/input_pipeline.py "return 0 if ok else 1" "return 1 if ok else 0" \
  "tests/test_gpu_benchmarks.py::test_input_pipeline_benchmark_measures_every_cache_mode" "benchmark exit code inverted"
check tests/netguard/sitecustomize.py "import os
" "raise ImportError(name='sitecustomize')  # as if the guard were not on the path
import os
" \
  "tests/test_download.py::test_no_network_attempt_when_the_files_are_present" "the network guard never loads"
check services/board/bundle.py "    model = given" "    model = None" \
  "tests/test_board_runtime.py::test_model_runs_another_model_than_the_bundles_and_the_report_names_it" "board --model ignored"
check services/board/detect.py "    check_tile_settings(args)
" "" "tests/test_tiles.py::test_board_tiles_the_input_cannot_carry_is_one_line_before_any_context" "board --tiles range checked only when tiling"
check services/common/toolkit.py 'if layout == "standard":' 'if layout == "never":' \
  "tests/test_convert.py::test_an_onnx_the_toolkit_cannot_quantize_is_refused_before_any_work" "convert takes a standard-head ONNX"
check services/common/config.py 'if d["generate_proxy"] and not' 'if False and not' \
  "tests/test_config.py::test_a_proxy_without_its_annotation_folder_is_refused_at_load" "proxy without annotations not refused"
check services/common/backends.py 'self.device = f"onnxruntime CPU' 'self.device = "cpu"; _ = f"onnxruntime CPU' \
  "tests/test_evaluate.py::test_empty_detection_set_gives_zero_ap_and_a_warning" "ONNX backend's device string lost"
check services/fit/fit.py '        model.add_callback("on_pretrain_routine_start", _atomic_checkpoints)
' '' "tests/test_train.py::test_best_pt_is_written_before_last_pt" "fit: ultralytics' checkpoints written without the atomic wrapper"
check services/doctor/__main__.py 'if probe["shm_gb"] < MIN_SHM_GB:' 'if probe["shm_gb"] < 0.01:' \
  "tests/test_doctor.py::test_the_failures_troubleshooting_shows_are_what_the_doctor_prints" "doctor: a 64 MB /dev/shm passes"
cat $out
echo "(logs: $logs)"
